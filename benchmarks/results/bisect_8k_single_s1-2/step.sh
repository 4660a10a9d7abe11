#!/bin/bash
# one bisect step: exit 0 if icecache@256 answers 8k niah_single s1-2 (1034164), 1 if not, 125 if it cannot run
rev=$(git -C /tmp/wt-bis rev-parse --short HEAD)
cd /tmp && PYTHONPATH=/tmp/wt-bis OMP_NUM_THREADS=1 timeout 900 /work/main/.venv/bin/python -m icecache eval --policy icecache --budget 256 --context 8000 --tasks niah_single --samples 3 --seed 1 --batch-size 3 --threads 1 --json /tmp/bis/step_$rev.json > /tmp/bis/step_$rev.log 2>&1 || exit 125
out=$(/work/main/.venv/bin/python -c "
import json;d=json.load(open('/tmp/bis/step_$rev.json'))
print([s['output'] for s in d['samples_detail'] if s['sample_id'].endswith('s1-2')][0])")
echo "$rev $out" >> /tmp/bis/steps.txt
case "$out" in *1034164*) exit 0;; *) exit 1;; esac
