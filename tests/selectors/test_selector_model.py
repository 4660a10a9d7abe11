"""On real decode queries of the embedded model, IceCache beats the position-based baselines."""

from __future__ import annotations

import pytest

from icecache.bench.selector_eval import EvalSpec, evaluate
from icecache.core.plugins import build_registry

pytestmark = pytest.mark.model


def test_capture_holds_every_layer(smollm_capture):
    cap = smollm_capture
    L, H, N, D = cap.keys.shape
    assert (L, H, D) == (30, 3, 64) and N == cap.prompt_len + 2
    assert cap.decode_queries.shape == (30, 9, 2, 64) and cap.prompt_queries.shape[2] == cap.prompt_len
    assert 900 <= cap.prompt_len <= 1022 and cap.prefill_seconds > 0


@pytest.mark.parametrize("budget", [128])
def test_icecache_beats_streamingllm_and_quest_at_equal_budget(smollm_capture, budget):
    registry = build_registry()
    spec = EvalSpec(layers=tuple(range(2, 30)), steps=2)
    rows = {name: evaluate(registry, name, budget, smollm_capture, spec)
            for name in ("icecache", "quest", "streamingllm", "oracle")}
    recall = {name: row["attention_recall"] for name, row in rows.items()}
    assert recall["icecache"] > recall["quest"] + 0.02, recall
    assert recall["icecache"] > recall["streamingllm"] + 0.05, recall
    assert recall["icecache"] <= recall["oracle"] + 1e-6, recall
    # A near-tie at the budget's edge may swap a token (logits summed in another order on another
    # CPU): one swap moves this mean over 28 layers x 2 steps x 3 heads by ~5e-5; a real miss is
    # systematic and costs far more.
    assert rows["oracle"]["oracle_recall"] == pytest.approx(1.0, abs=2e-4)
    assert all(row["attended"] <= budget for row in rows.values())
