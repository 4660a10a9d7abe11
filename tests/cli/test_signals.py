"""A real ``icecache eval`` process killed mid-run (SIGKILL, SIGTERM) keeps every finished batch in its
JSON, and ``--resume`` completes it without redoing them; two real writers of one JSON: one is refused."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from icecache.cli.main import main

# NOTE: each test starts real interpreters (~8 s of imports and model load on 2 cores) and decodes:
# 25-45 s each, so slow; tests/cli/test_resume.py covers the same logic in-process in the default run.
pytestmark = [pytest.mark.model, pytest.mark.slow]

POLICIES = ["--policy", "full,streamingllm", "--budget", "64", "--batch-size", "1", "--no-progress"]


def _start(tasks_file, out, *extra):
    argv = [sys.executable, "-m", "icecache.cli.main", "eval", "--tasks-file", str(tasks_file),
            "--json", str(out), *POLICIES, *extra]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _results(out):
    try:
        return json.loads(out.read_text())["samples_detail"]
    except (FileNotFoundError, ValueError):
        return []


def _wait_for(predicate, proc, timeout=240):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, proc.communicate()[1][-2000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_killed_eval_keeps_finished_batches_and_resumes(tmp_path, tasks_file, monkeypatch, capsys, sig):
    import icecache.eval.runner as runner

    out, disk = tmp_path / "r.json", tmp_path / "disk"
    disk.mkdir()
    proc = _start(tasks_file, out, "--disk-dir", str(disk))
    _wait_for(lambda: len(_results(out)) >= 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL if sig == signal.SIGKILL else proc.returncode == 128 + sig, err
    kept = json.loads(out.read_text())  # whole, valid JSON: every write was atomic
    assert kept["complete"] is False and 2 <= len(kept["samples_detail"]) < 8
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]  # no temp file left
    if sig == signal.SIGTERM:  # cleanups ran: the lock and the disk tier's page file are gone
        assert not (tmp_path / "r.json.lock").exists() and list(disk.iterdir()) == []
    done_before = {(d["sample_id"], d["policy"]) for d in kept["samples_detail"]}

    decoded = []
    real = runner.decode
    monkeypatch.setattr(runner, "decode", lambda *a, **k: decoded.append(1) or real(*a, **k))
    assert main(["eval", "--tasks-file", str(tasks_file), "--json", str(out), *POLICIES, "--resume",
                 "--disk-dir", str(disk)]) == 0
    final = json.loads(out.read_text())
    pairs = [(d["sample_id"], d["policy"]) for d in final["samples_detail"]]
    assert final["complete"] is True and len(pairs) == len(set(pairs)) == 8
    assert len(decoded) == 8 - len(done_before)  # nothing finished was decoded again
    kept_rows = {(d["sample_id"], d["policy"]): d for d in kept["samples_detail"]}
    assert all(d == kept_rows[(d["sample_id"], d["policy"])] for d in final["samples_detail"]
               if (d["sample_id"], d["policy"]) in done_before)
    assert list(disk.iterdir()) == []  # the killed run's orphaned page file was swept at start
    assert "resuming" in capsys.readouterr().err


def test_two_real_writers_of_one_json(tmp_path, tasks_file):
    out = tmp_path / "r.json"
    first = _start(tasks_file, out)
    _wait_for(lambda: (tmp_path / "r.json.lock").exists(), first)
    second = _start(tasks_file, out)
    _, err = second.communicate(timeout=240)
    assert second.returncode == 2, err
    assert f"icecache eval: error: --json '{out}' is being written by another icecache process " \
           f"(pid {first.pid}" in err
    _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    assert json.loads(out.read_text())["complete"] is True


def test_cli_module_runs_as_a_script():
    """The subprocess tests start ``python -m icecache.cli.main``: it must exit with main's code."""
    done = subprocess.run([sys.executable, "-m", "icecache.cli.main", "eval", "--samples", "0"],
                          capture_output=True, text=True, timeout=120, env=os.environ)
    assert done.returncode == 2 and "--samples must be positive" in done.stderr
