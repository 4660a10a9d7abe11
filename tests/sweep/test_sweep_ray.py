"""``icecache sweep --backend ray`` on a local Ray instance (skipped without Ray; slow: Ray takes ~10 s
to start on 2 cores): the same shards as the local backend, the same answers."""

import json

import pytest
from sweep_specs import TINY

from icecache.cli.main import main

pytest.importorskip("ray")
pytestmark = [pytest.mark.model, pytest.mark.slow]


def test_a_tiny_sweep_on_ray_gives_the_local_backends_results(tiny, tmp_path, capsys):
    spec = tmp_path / "tiny.toml"
    spec.write_text(TINY)
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--backend", "ray", "--out", str(out), "--no-progress"]) == 0
    err = capsys.readouterr().err
    assert err.count(" on ray |") == 2 and "2/2 shards done" in err
    ray_groups = json.loads((out / "sweep.json").read_text())["groups"]
    local_groups = tiny[2]["groups"]
    cells = lambda groups: [(g["model"], g["context"]) for g in groups]
    answers = lambda g: [(d["sample_id"], d["policy"], d["output"], d["correct"])
                         for d in g["samples_detail"]]
    assert cells(ray_groups) == cells(local_groups)
    for r, lo in zip(ray_groups, local_groups, strict=True):
        assert answers(r) == answers(lo)
        assert [x["accuracy"] for x in r["overview"]] == [x["accuracy"] for x in lo["overview"]]
    import ray

    assert not ray.is_initialized()  # the local instance it started is shut down
    assert main(["sweep", str(spec), "--backend", "ray", "--out", str(out), "--no-progress"]) == 0
    assert "2 kept from earlier runs, 0 to run" in capsys.readouterr().err  # resumes without starting Ray
