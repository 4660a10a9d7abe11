"""Every output path is checked before any work: an unwritable path is a clear error (exit 2) naming it,
the model never loads and nothing is left behind (the probe file is removed)."""

import json

import pytest

from icecache.cli.main import main
from icecache.eval.files import check_output_dir, check_output_file


@pytest.fixture(autouse=True)
def _no_model(monkeypatch):
    """Loading the model would mean the check came too late."""
    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the output path was checked")

    monkeypatch.setattr("icecache.eval.session.load", refuse)
    monkeypatch.setattr("icecache.integrations.hf.loader.load_model", refuse)


@pytest.fixture
def a_file(tmp_path):
    path = tmp_path / "plain.txt"
    path.write_text("x")
    return path


@pytest.fixture
def results(tmp_path):
    path = tmp_path / "shard.json"
    path.write_text(json.dumps({"context": 10, "samples_detail": []}))
    return path


def _cases(tmp_path, a_file, readonly, results):
    inside = a_file / "out.json"
    return [
        (["eval", "--json", str(readonly / "r.json")], f"--json '{readonly / 'r.json'}': cannot write in"),
        (["eval", "--json", str(inside)],
         f"--json '{inside}' is inside '{a_file}', which is not a directory"),
        (["eval", "--json", str(tmp_path)], f"--json '{tmp_path}' is a directory"),
        (["eval", "--json", ""], "--json is empty"),
        (["eval", "--json", "/dev/null"], "--json '/dev/null' exists and is not a regular file"),
        (["run", "--out", str(readonly / "run")], f"--out '{readonly / 'run'}': cannot write in"),
        (["run", "--out", str(a_file)], f"--out '{a_file}' exists and is not a directory"),
        (["run", "--out", str(inside)], f"--out '{inside}' is inside '{a_file}'"),
        (["merge", str(results), "--json", str(readonly / "m.json")], "--json"),
        (["merge", str(results), "--json", str(tmp_path)], "is a directory"),
        (["merge", str(results), "--plot", str(inside)], f"--plot '{inside}' is inside"),
        (["bench", "transfer", "--json", str(readonly / "t.json")], f"'{readonly / 't.json'}': cannot write"),
        (["bench", "selectors", "--json", str(inside)], f"--json '{inside}' is inside"),
        (["bench", "selectors", "--plot", str(tmp_path)], f"--plot '{tmp_path}' is a directory"),
        (["bench", "decode", "--json", str(inside)], f"--json '{inside}' is inside"),
        (["bench", "index", "--json", str(inside)], f"--json '{inside}' is inside"),
    ]


CASE_IDS = ["eval-readonly", "eval-inside-file", "eval-dir", "eval-empty", "eval-devnull", "run-readonly",
            "run-file", "run-inside-file", "merge-readonly", "merge-dir", "merge-plot", "bench-transfer",
            "bench-selectors-json", "bench-selectors-plot", "bench-decode", "bench-index"]


@pytest.mark.parametrize("case", range(len(CASE_IDS)), ids=CASE_IDS)
def test_unwritable_output_is_refused_before_any_work(tmp_path, a_file, readonly_dir, results, capsys,
                                                      case):
    argv, message = _cases(tmp_path, a_file, readonly_dir, results)[case]
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(argv) == 2
    err = capsys.readouterr().err
    prog = "icecache " + " ".join(argv[:2] if argv[0] == "bench" else argv[:1])
    # NOTE: from the error on: a fresh cache converts the embedded model first, with progress on stderr
    at = err.find(f"{prog}: error: ")
    assert at >= 0 and message in err[at:] and "error" not in err[:at], err
    assert "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no probe, no lock, no partial file


def test_a_writable_path_passes_and_leaves_nothing(tmp_path):
    assert check_output_file(tmp_path / "new" / "deeper" / "r.json") == tmp_path / "new" / "deeper" / "r.json"
    assert check_output_dir(tmp_path / "run") == tmp_path / "run"
    assert list(tmp_path.iterdir()) == []


def test_the_probe_really_writes(monkeypatch, tmp_path):
    """A directory that passes ``os.access`` but refuses files (what a read-only mount is for root)."""
    import tempfile

    def refuse(*a, **k):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(tempfile, "mkstemp", refuse)
    with pytest.raises(Exception, match="cannot write in .*Permission denied"):
        check_output_file(tmp_path / "r.json")


def test_run_default_output_folder_is_checked(tmp_path, a_file, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "out").write_text("a file where the default folder goes")
    assert main(["run", "--samples", "1"]) == 2
    assert "--out 'out/run-" in capsys.readouterr().err


def test_a_json_switch_is_not_an_output_path(capsys):
    """`icecache plugins --json` prints JSON: the output check must leave a boolean flag alone."""
    assert main(["plugins", "--json"]) == 0
    assert '"components"' in capsys.readouterr().out
