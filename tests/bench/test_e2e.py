"""``icecache bench e2e``: end-to-end decode steps on a random-weight shape and on the embedded model."""

from __future__ import annotations

import json

import pytest

from icecache.cli.main import main


def test_shape_run_writes_rows_for_every_case(tmp_path, capsys):
    out = tmp_path / "e2e.json"
    code = main(["bench", "e2e", "--shape", "smollm2-135m", "--layers", "3", "--contexts", "300,600",
                 "--batch-sizes", "1,2", "--steps", "2", "--warmup", "0", "--policies",
                 "full,icecache@64,streamingllm@64", "--json", str(out)])
    assert code == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert {(r["context"], r["batch"]) for r in rows} == {(300, 1), (300, 2), (600, 1), (600, 2)}
    assert len(rows) == 12
    for r in rows:
        parts = r["index_query_ms"] + r["page_load_ms"] + r["attention_ms"] + r["rest_ms"]
        assert r["total_ms"] > 0 and parts == pytest.approx(r["total_ms"], rel=0.05)
        # NOTE: one torch thread: the process's CPU time per step cannot exceed the step's wall time by much
        assert 0 < r["cpu_ms"] <= 1.5 * r["total_ms"] + 1
        if r["policy"] == "full":
            assert r["vs_full"] == 1.0 and r["cpu_vs_full"] == 1.0 and r["index_query_ms"] == 0.0
        else:
            assert r["index_query_ms"] > 0  # the sparse layer (layer 2) selected every step
    held = {(r["policy"], r["context"], r["batch"]): r["held"] for r in rows}
    # a sparse cache of one sparse layer in three holds less on the device than full KV, not less overall
    assert all(v > 0 for v in held.values())
    assert "load_average" in data["machine"]
    assert (tmp_path / "e2e.png").exists()
    assert "streamingllm@64" in capsys.readouterr().out


@pytest.mark.parametrize(("argv", "message"), [
    (["--shape", "gpt-9"], "unknown --shape 'gpt-9'"),
    (["--layers", "2"], "--layers only applies with --shape"),
    (["--shape", "smollm2-135m", "--layers", "31"], "--layers must lie in [1, 30]"),
    (["--shape", "smollm2-135m", "--contexts", "4k"], "--contexts must be comma-separated integers"),
    (["--shape", "smollm2-135m", "--batch-sizes", "0"], "--batch-sizes must name positive integers"),
    (["--shape", "smollm2-135m", "--policies", "nope"], "nope"),
    (["--contexts", "9000"], "--contexts 9000 is longer than the model allows"),
])
def test_bad_input_is_named(argv, message, capsys):
    assert main(["bench", "e2e", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_embedded_model_step_split(tmp_path):
    out = tmp_path / "e2e.json"
    assert main(["bench", "e2e", "--contexts", "512", "--batch-sizes", "2", "--steps", "2", "--warmup", "1",
                 "--policies", "full,icecache@128", "--json", str(out), "--rounds", "2"]) == 0
    rows = {r["policy"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["full"]["page_load_ms"] == 0.0
    assert rows["icecache@128"]["device"] < rows["full"]["device"]
    assert rows["icecache@128"]["build_s"] > rows["full"]["build_s"]
