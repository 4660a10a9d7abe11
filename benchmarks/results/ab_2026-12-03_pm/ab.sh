# alternated A/B on the saved 8k x 4 snapshot, 1 thread: base (cf0da6d) vs new (main), 3 rounds
cd /tmp
for i in 1 2 3; do
  for tree in /tmp/wt-base /work/main; do
    PYTHONPATH=$tree TAG=$(basename $tree)-$i POLS=full,icecache,quest,streamingllm ROUNDS=1 OMP_NUM_THREADS=1 /work/main/.venv/bin/python /tmp/prof/e2e_quick.py 2>&1 | grep -v Loading
  done
done
# the new code with candidates 8 (the old default), to separate the code from the option
PYTHONPATH=/work/main TAG=main-cand8 POLS=full,icecache:c8 OPTS='{"icecache:c8": {"index_options": {"candidates": 8}}}' ROUNDS=2 OMP_NUM_THREADS=1 /work/main/.venv/bin/python /tmp/prof/e2e_quick.py 2>&1 | grep -v Loading
