"""A sweep with ``snapshot_dir``: a rerun shard reads its prefills back instead of prefilling, decodes
the same, and says so in its JSON."""

import pytest
from sweep_specs import tasks_file

from icecache.sweep.plan import plan
from icecache.sweep.spec import load_spec
from icecache.sweep.work import run_shard

pytestmark = pytest.mark.model


def test_a_rerun_shard_reuses_its_prefills_and_decodes_the_same(tmp_path):
    tasks_file(tmp_path / "a.jsonl", "a", n=2)
    spec = tmp_path / "s.toml"
    spec.write_text('tasks_files = ["a.jsonl"]\npolicies = ["full", "icecache"]\nbudgets = [64]\n'
                    'batch_size = 1\nsnapshot_dir = "snaps"\n')
    (shard,) = plan(load_spec(str(spec)))
    first, second = run_shard(shard), run_shard(shard)
    assert first["sweep"]["snapshots"]["computed"] == 2 and first["sweep"]["snapshots"]["saved"] == 2
    assert second["sweep"]["snapshots"]["reused"] == 2 and second["sweep"]["snapshots"]["computed"] == 0
    assert len(list((tmp_path / "snaps").iterdir())) == 2

    def decoded(payload):
        return [(d["sample_id"], d["policy"], d["output"], d["score"]) for d in payload["samples_detail"]]

    assert decoded(first) == decoded(second)
