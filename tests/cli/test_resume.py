"""``icecache eval --json`` / ``icecache run --out`` keep their results file current; ``--resume``
completes an interrupted run without redoing finished decodes; one writer per output."""

import json
import os
import subprocess
import sys

import pytest

from icecache.cli.main import main
from icecache.eval.files import OutputLock

pytestmark = pytest.mark.model

POLICIES = ["--policy", "full,streamingllm", "--budget", "64", "--batch-size", "1", "--no-progress"]


def _eval(tasks_file, out, *extra):
    return main(["eval", "--tasks-file", str(tasks_file), "--json", str(out), *POLICIES, *extra])


def _pairs(data):
    return [(d["sample_id"], d["policy"], d["output"], d["batch"]) for d in data["samples_detail"]]


@pytest.fixture
def count_decodes(monkeypatch):
    """Counts decodes and interrupts (KeyboardInterrupt, as Ctrl-C would) after ``stop_after`` of them."""
    import icecache.eval.runner as runner

    calls = {"n": 0, "stop_after": None}
    real = runner.decode

    def counted(*a, **k):
        if calls["stop_after"] is not None and calls["n"] >= calls["stop_after"]:
            raise KeyboardInterrupt
        calls["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(runner, "decode", counted)
    return calls


def test_interrupted_eval_keeps_finished_batches_and_resume_completes_it(tmp_path, tasks_file, count_decodes,
                                                                        capsys):
    whole = tmp_path / "whole.json"
    assert _eval(tasks_file, whole) == 0
    assert count_decodes["n"] == 8  # 4 batches x 2 policies

    out = tmp_path / "r.json"
    count_decodes.update(n=0, stop_after=3)
    assert _eval(tasks_file, out) == 130
    assert "3 results kept in" in capsys.readouterr().err
    partial = json.loads(out.read_text())
    assert partial["complete"] is False and len(partial["samples_detail"]) == 3
    assert not (tmp_path / "r.json.lock").exists()  # released on the way out

    count_decodes.update(n=0, stop_after=None)
    assert _eval(tasks_file, out, "--resume") == 0
    assert count_decodes["n"] == 5  # only what was missing
    assert "resuming" in capsys.readouterr().err
    done, expected = json.loads(out.read_text()), json.loads(whole.read_text())
    assert done["complete"] is True
    assert _pairs(done) == _pairs(expected)  # same results, same order as one uninterrupted run
    assert done["results"] == expected["results"]

    count_decodes.update(n=0)
    assert _eval(tasks_file, out, "--resume") == 0  # complete: nothing decoded, the model not even loaded
    assert count_decodes["n"] == 0


@pytest.mark.parametrize(("change", "message"), [
    (["--budget", "128"], "written with budget=64, this run has budget=128"),
    (["--seed", "3"], "written with seed=0, this run has seed=3"),
    (["--policy", "full"],
     "written with policies=['full', 'streamingllm@64'], this run has policies=['full']"),
])
def test_resume_with_other_settings_is_refused_naming_the_difference(tmp_path, tasks_file, count_decodes,
                                                                    capsys, change, message):
    out = tmp_path / "r.json"
    count_decodes["stop_after"] = 1
    assert _eval(tasks_file, out) == 130
    before = out.read_text()
    capsys.readouterr()
    assert _eval(tasks_file, out, "--resume", *change) == 2
    err = capsys.readouterr().err
    assert "icecache eval: error: --resume:" in err and message in err, err
    assert out.read_text() == before


def test_resume_of_a_changed_tasks_file_is_refused(tmp_path, tasks_file, count_decodes, capsys):
    out = tmp_path / "r.json"
    count_decodes["stop_after"] = 1
    assert _eval(tasks_file, out) == 130
    tasks_file.write_text(tasks_file.read_text().replace("amber3", "amber9"))
    assert _eval(tasks_file, out, "--resume") == 2
    assert "written with tasks_file_sha256=" in capsys.readouterr().err


@pytest.mark.parametrize(("content", "message"), [
    (None, "does not exist (run without --resume to start)"),
    ("{not json", "is not a results JSON"),
    (json.dumps({"command": "merge", "samples_detail": []}), "was not written by `icecache eval`"),
])
def test_resume_of_a_missing_or_foreign_file_is_refused(tmp_path, tasks_file, capsys, content, message):
    out = tmp_path / "r.json"
    if content is not None:
        out.write_text(content)
    assert _eval(tasks_file, out, "--resume") == 2
    assert message in capsys.readouterr().err


# NOTE: loads icecache/eval/files.py alone: the package's __init__ would import torch (seconds).
HOLD_LOCK = """
import importlib.util, sys, time
import icecache
spec = importlib.util.spec_from_file_location("files", icecache.__path__[0] + "/eval/files.py")
files = importlib.util.module_from_spec(spec)
spec.loader.exec_module(files)
files.OutputLock(sys.argv[1]).acquire()
print("locked", flush=True)
time.sleep(60)
"""


def test_a_second_writer_is_refused_naming_the_holder(tmp_path, tasks_file, capsys):
    """The lock is held by another process (a real one: flock locks are per open file)."""
    out = tmp_path / "r.json"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert _eval(tasks_file, out) == 2
        err = capsys.readouterr().err
        assert f"--json '{out}' is being written by another icecache process (pid {holder.pid}" in err, err
        assert not out.exists()
    finally:
        holder.kill()
        holder.wait()
    assert _eval(tasks_file, out) == 0  # the dead holder's lock is gone with it (the file may stay)
    assert json.loads(out.read_text())["complete"] is True


def test_run_out_is_locked_and_written_atomically(tmp_path, capsys):
    out = tmp_path / "run"
    with OutputLock(out / "results.json", "--out"):
        assert main(["run", "--out", str(out), "--context", "300", "--samples", "1", "--tasks", "niah_single",
                     "--policies", "full", "--no-progress", "--no-plot"]) == 2
    assert "--out" in capsys.readouterr().err and not (out / "results.json").exists()
    assert main(["run", "--out", str(out), "--context", "300", "--samples", "1", "--tasks", "niah_single",
                 "--policies", "full", "--no-progress", "--no-plot"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["results.json"]  # no temp or lock file left
    assert oct(os.stat(out / "results.json").st_mode & 0o777) != "0o600"
