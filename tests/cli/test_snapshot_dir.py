"""``--snapshot-dir``: a second run reads every batch's prefill from disk instead of prefilling, and
decodes exactly what a run without it decodes; a bad directory is refused before any work."""

import json
import os
import subprocess
import sys

import pytest

from icecache.cli.main import main

pytestmark = pytest.mark.model

# NOTE: icecache keeps prompt queries in its snapshots, so both snapshot paths (with and without) run
POLICIES = ["--policy", "full,icecache", "--budget", "64", "--batch-size", "1", "--no-progress"]


@pytest.fixture
def two_samples(tasks_file):
    """The first two samples of ``tasks_file``: two batches at ``--batch-size 1``."""
    tasks_file.write_text("".join(tasks_file.read_text().splitlines(keepends=True)[:2]))
    return tasks_file


def _decoded(path):
    return [(d["sample_id"], d["policy"], d["output"], d["score"], d["correct"])
            for d in json.loads(path.read_text())["samples_detail"]]


def test_a_second_run_reuses_every_prefill_and_decodes_the_same(tmp_path, two_samples, capsys, monkeypatch):
    import icecache.eval.runner as runner

    snaps = tmp_path / "snaps" / "new"  # NOTE: made at the first save
    first = tmp_path / "first.json"
    assert main(["eval", "--tasks-file", str(two_samples), "--json", str(first), "--snapshot-dir", str(snaps),
                 *POLICIES]) == 0
    assert "snapshots: 0 of 2 batch prefills reused" in capsys.readouterr().err
    assert len([p for p in snaps.iterdir() if not p.name.startswith(".")]) == 2

    prefills = []
    monkeypatch.setattr("icecache.integrations.hf.snapshot_store.store.prefill_snapshot",
                        lambda *a, **k: prefills.append(1) or runner.prefill_snapshot(*a, **k))
    second = tmp_path / "second.json"
    assert main(["eval", "--tasks-file", str(two_samples), "--json", str(second), "--snapshot-dir",
                 str(snaps), *POLICIES]) == 0
    assert "snapshots: 2 of 2 batch prefills reused" in capsys.readouterr().err
    assert prefills == []  # every batch read back from disk, none prefilled
    # NOTE: the first run prefills as a run without the flag does (the slow test below compares that too)
    assert _decoded(first) == _decoded(second)


@pytest.mark.slow
def test_another_process_reuses_the_prefills_and_decodes_as_a_run_without_them(tmp_path, two_samples):
    plain = tmp_path / "plain.json"
    assert main(["eval", "--tasks-file", str(two_samples), "--json", str(plain), *POLICIES]) == 0
    snaps, first = tmp_path / "snaps", tmp_path / "first.json"
    assert main(["eval", "--tasks-file", str(two_samples), "--json", str(first), "--snapshot-dir", str(snaps),
                 *POLICIES]) == 0
    second = tmp_path / "second.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = ["eval", "--tasks-file", str(two_samples), "--json", str(second), "--snapshot-dir", str(snaps)]
    done = subprocess.run([sys.executable, "-m", "icecache", *argv, *POLICIES], env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "snapshots: 2 of 2 batch prefills reused" in done.stderr
    assert _decoded(plain) == _decoded(first) == _decoded(second)


@pytest.mark.parametrize("command", ["eval", "run"])
def test_a_snapshot_dir_that_cannot_be_one_is_refused_before_any_work(tmp_path, two_samples, capsys, command):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    source = ["--tasks-file", str(two_samples)] if command == "eval" else ["--out", str(tmp_path / "out")]
    for bad, message in ((a_file, f"--snapshot-dir '{a_file}' exists and is not a directory"),
                         (a_file / "sub", f"--snapshot-dir '{a_file / 'sub'}' is inside '{a_file}', which is "
                                          "not a directory"),
                         ("", "--snapshot-dir is empty; give a directory")):
        assert main([command, *source, "--snapshot-dir", str(bad), "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"icecache {command}: error: {message}") and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file", "tasks.jsonl"]
