"""``icecache sweep`` on the local backend with the embedded model and real worker processes: a tiny
sweep merges into what ``icecache merge`` gives, resumes without rerunning, and survives a worker
killed mid-shard (that shard fails, the others land, a rerun finishes it)."""

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from sweep_specs import TINY, tasks_file

from icecache.cli.main import main

pytestmark = pytest.mark.model


def test_a_tiny_sweep_runs_every_cell_and_merges_them(tiny):
    _, out, sweep = tiny
    assert [(g["model"], g["context"]) for g in sweep["groups"]] == [("embedded", 256), ("embedded", 320)]
    for g in sweep["groups"]:
        assert [r["policy"] for r in g["overview"]] == ["full", "icecache@128"]
        assert all(r["n"] == 1 for r in g["overview"])
        assert all(0.8 * g["context"] < d["prompt_tokens"] <= g["context"] for d in g["samples_detail"])
    assert {s["state"] for s in sweep["shards"]} == {"done"}
    assert {r["model"] for r in sweep["overview"]} == {"embedded"} and len(sweep["overview"]) == 4
    status = json.loads((out / "status.json").read_text())["shards"]
    assert {s["state"] for s in status.values()} == {"done"}
    pytest.importorskip("matplotlib")
    assert (out / "sweep.png").stat().st_size > 0


def test_the_merged_tables_equal_icecache_merge_over_the_same_shards(tiny, tmp_path):
    _, _, sweep = tiny
    for i, g in enumerate(sweep["groups"]):
        merged = tmp_path / f"merged{i}.json"
        assert main(["merge", *g["shards"], "--json", str(merged)]) == 0
        by_hand = json.loads(merged.read_text())
        for key in ("results", "overview", "samples_detail"):
            assert g[key] == by_hand[key], key
        shard = json.loads(Path(g["shards"][0]).read_text())
        assert shard["results"] == by_hand["results"]  # one shard per group: eval's own tables


def test_a_second_run_keeps_every_shard_and_merges_again(tiny, capsys):
    spec, out, sweep = tiny
    stamps = {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.json")}
    t0 = time.perf_counter()
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    assert time.perf_counter() - t0 < 30  # no worker started, no model loaded
    assert "2 kept from earlier runs, 0 to run" in capsys.readouterr().err
    assert {p: p.stat().st_mtime_ns for p in (out / "shards").glob("*.json")} == stamps
    again = json.loads((out / "sweep.json").read_text())
    assert again["groups"] == sweep["groups"]
    assert {s["state"] for s in again["shards"]} == {"kept"}


def _status(out: Path) -> dict:
    try:
        return json.loads((out / "status.json").read_text())["shards"]
    except (OSError, ValueError):
        return {}


def _kill_second_shard(out: Path, killed: list, timeout: float = 300) -> None:
    """Once one shard is done and the next runs, SIGKILL the worker process running it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = _status(out)
        done = [n for n, s in st.items() if s["state"] == "done"]
        running = [(n, s["pid"]) for n, s in st.items() if s["state"] == "running"]
        if len(done) == 1 and running:
            os.kill(running[0][1], signal.SIGKILL)
            killed.append(running[0][0])
            return
        time.sleep(0.02)


def test_a_killed_worker_fails_its_shard_only_and_a_rerun_finishes_it(tmp_path, capsys):
    for name in "abc":
        tasks_file(tmp_path / f"{name}.jsonl", name)
    spec = tmp_path / "files.toml"
    spec.write_text('tasks_files = ["a.jsonl", "b.jsonl", "c.jsonl"]\npolicies = ["full", "icecache"]\n'
                    "budgets = [128]\n")
    out = tmp_path / "out"
    argv = ["sweep", str(spec), "--out", str(out), "--workers", "1", "--no-progress"]
    killed: list[str] = []
    killer = threading.Thread(target=_kill_second_shard, args=(out, killed), daemon=True)
    killer.start()
    assert main(argv) == 1
    killer.join()
    (victim,) = killed
    assert f"FAILED {victim}: worker process died: killed by SIGKILL" in capsys.readouterr().err
    sweep = json.loads((out / "sweep.json").read_text())
    states = {s["name"]: s["state"] for s in sweep["shards"]}
    assert states.pop(victim) == "failed" and set(states.values()) == {"done"}
    (group,) = sweep["groups"]
    assert len(group["shards"]) == 2 and all(r["n"] == 2 for r in group["overview"])  # the partial merge
    assert "worker process died" in (out / "shards" / f"{victim}.error.txt").read_text()

    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "2 kept from earlier runs, 1 to run" in err and f"done   {victim}" in err
    (group,) = json.loads((out / "sweep.json").read_text())["groups"]
    assert len(group["shards"]) == 3 and all(r["n"] == 3 for r in group["overview"])
    assert not (out / "shards" / f"{victim}.error.txt").exists()


def test_a_changed_spec_reruns_its_shards_and_never_merges_their_old_results(tiny, tmp_path, capsys):
    from icecache.sweep.merge import merge_groups
    from icecache.sweep.plan import plan
    from icecache.sweep.spec import load_spec

    _, out, _ = tiny
    changed = tmp_path / "tiny.toml"
    changed.write_text(TINY.replace('"icecache"]', '"icecache", "quest"]'))
    assert main(["sweep", str(changed), "--out", str(out), "--dry-run"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:4]
    assert all(r.split()[-2:] == ["changed", "yes"] for r in rows)
    assert merge_groups(out, plan(load_spec(str(changed)))) == []
