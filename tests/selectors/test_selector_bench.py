"""The selector benchmark's pieces on a synthetic capture (no model): evaluation rows, targets,
report, plot and argument checks."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from icecache.bench import selectors as bench
from icecache.bench.capture import Capture
from icecache.bench.selector_eval import EvalSpec, evaluate
from icecache.core.errors import UnknownComponentError
from icecache.core.plugins import build_registry
from icecache.testing.synthetic import make_clustered_kv


@pytest.fixture(scope="module")
def synthetic_capture() -> Capture:
    L, H, G, N, T, D = 3, 2, 2, 300, 2, 16
    kv = make_clustered_kv(L, H, N + T, D, num_clusters=6, spread=0.3, seed=0)  # layers as the batch axis
    g = torch.Generator().manual_seed(1)
    return Capture(
        keys=kv.keys,
        values=kv.values,
        decode_queries=torch.randn(L, H * G, T, D, generator=g) * 3,
        prompt_queries=torch.randn(L, H * G, N, D, generator=g).half(),
        prompt_len=N,
        prefill_seconds=1.0,
    )


def test_evaluate_reports_every_metric_within_the_budget(synthetic_capture):
    registry = build_registry()
    spec = EvalSpec(layers=(1, 2), steps=2)
    rows = {
        name: evaluate(registry, name, 64, synthetic_capture, spec)
        for name in ("oracle", "quest", "streamingllm", "full", "icecache-reuse")
    }
    assert rows["oracle"]["oracle_recall"] == pytest.approx(1.0)
    assert rows["full"]["attention_recall"] == pytest.approx(1.0, abs=1e-5)
    assert rows["full"]["output_rel_error"] == pytest.approx(0.0, abs=1e-4)
    for name, row in rows.items():
        assert 0.0 <= row["attention_recall"] <= 1.0 + 1e-6
        assert row["oracle_recall"] <= 1.0 + 1e-6 and row["output_rel_error"] >= 0
        if name != "full":
            assert (
                row["attended"] <= 64 and row["attention_recall"] <= rows["oracle"]["attention_recall"] + 1e-6
            )
    assert rows["quest"]["pages_touched"] >= 1 and rows["quest"]["copy_runs"] >= 1


def _row(sel, budget, recall, context=4096):
    return {
        "selector": sel,
        "budget": budget,
        "context": context,
        "attention_recall": recall,
        "build_seconds": 2.0,
    }


def test_targets_report_and_plot(tmp_path, capsys):
    results = [
        _row("icecache", 256, 0.935),
        _row("quest", 1024, 0.93),
        _row("oracle", 256, 0.95),
        _row("icecache", 64, 0.9),
        _row("quest", 256, 0.8),
    ]
    t = bench.check_targets(results)
    assert t["icecache@256 >= 0.93"] and t["icecache@256 >= quest@1024"]
    assert t["icecache@256 within 0.03 of oracle@256"]
    assert bench.check_targets(results, "icecache:tuned")["icecache@256 >= 0.93"] is None
    ratio = bench._build_ratio(results, {4096: {"prefill_seconds": 40.0}})
    assert ratio["ratio"] == pytest.approx(0.05) and ratio["context"] == 4096
    payload = {"results": results, "index_build_vs_prefill": ratio, "targets": {"icecache": t}}
    bench.print_report(payload)
    out = capsys.readouterr().out
    assert "index build / prefill at 4096 tokens" in out
    assert "icecache@256 >= quest@1024: met" in out and "not checked" not in out
    results[1] = _row("quest", 1024, 0.94)
    line = bench.describe_targets("icecache", bench.check_targets(results))
    assert "icecache@256 >= quest@1024: NOT met" in line
    line = bench.describe_targets("icecache:tuned", bench.check_targets(results, "icecache:tuned"))
    assert line == "not checked without icecache:tuned@256 at context 4096"
    pytest.importorskip("matplotlib")
    assert bench.save_plot(payload, tmp_path / "plot.png") and (tmp_path / "plot.png").stat().st_size > 0


def test_plan_checks_names_and_options():
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    plan = bench._plan(parser.parse_args(["--quick"]))
    assert plan["contexts"] == [2048] and plan["selectors"] == list(bench.QUICK_SELECTORS)
    plan = bench._plan(
        parser.parse_args(
            ["--selectors", "quest,icecache:tuned", "--selector-options", '{"quest": {"merge": "max"}}']
        )
    )
    assert plan["options"] == {
        "icecache:tuned": bench.DEFAULT_VARIANTS["icecache:tuned"],
        "quest": {"merge": "max"},
    }
    long = {f"icecache:v{i}": {"index_options": {"candidates": 4 + i}} for i in range(12)}  # > NAME_MAX
    assert bench._options(json.dumps(long)) == long
    with pytest.raises(argparse.ArgumentTypeError, match="JSON object or file"):
        bench._options("no-such-options-file.json")
    with pytest.raises(UnknownComponentError, match="unknown selector 'nope'"):
        bench._plan(parser.parse_args(["--selectors", "quest,nope"]))
    with pytest.raises(SystemExit):
        parser.parse_args(["--budgets", "0,64"])
