"""``benchmarks/gpu_bench.py --dry-run``: every section runs on CPU at tiny sizes and writes JSON."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from icecache.kernels.base import triton_available

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_bench.py"


@pytest.mark.skipif(not SCRIPT.exists(), reason="benchmarks/ not in this checkout")
def test_dry_run_writes_every_section(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.RESULTS.update({"sections": {}, "errors": {}})
    rc = module.main(["--dry-run", "--out", str(tmp_path)])
    payload = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert payload["errors"] == {}, payload["errors"]
    assert rc == 0
    expected = {"attention", "transfer", "bandwidth", "step"}
    expected |= {"correctness"} if triton_available() else set()
    assert set(payload["sections"]) == expected
    assert all(row["ok"] for row in payload["sections"].get("correctness", []))
    assert {r["budget"] for r in payload["sections"]["attention"] if "sparse" in r["method"]} == {64, 128}
