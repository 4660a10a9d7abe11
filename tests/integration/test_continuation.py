"""``icecache bench continuation`` on the real embedded model at small sizes (256-token prompts,
16-token continuations)."""

import json

import pytest
import torch

from icecache.bench.continuation.documents import builtin_documents, split_documents
from icecache.bench.continuation.runner import run_continuation
from icecache.eval.policies import parse_policies

N, M = 256, 16


@pytest.fixture(scope="module")
def splits(model_and_tokenizer):
    _, tokenizer = model_and_tokenizer
    return split_documents(builtin_documents(2, seed=3), tokenizer, N, M)


def _run(model, splits, spec, **kw):
    return run_continuation(model, splits, parse_policies(spec), batch_size=2, **kw)["policies"]


def test_full_against_full_is_exact(model_and_tokenizer, splits):
    model, _ = model_and_tokenizer
    (row,) = _run(model, splits, "full", free_tokens=6)
    s = row["summary"]
    assert s["kl"] == 0.0 and s["extra_nll"] == 0.0 and s["agree"] == 1.0
    assert s["steps"] == M and s["docs"] == 2
    assert row["free"] == {"first_divergence": 6.0, "agree_fraction": 1.0}
    assert [d["full_margin"] for d in row["free_by_doc"]] == [None, None]


def test_free_running_divergences_carry_fulls_margin_there(model_and_tokenizer, splits):
    model, _ = model_and_tokenizer
    (row,) = _run(model, splits, "streamingllm@64", free_tokens=M)
    assert any(doc["first_divergence"] < M for doc in row["free_by_doc"])  # 64 of 256 tokens must part
    for doc in row["free_by_doc"]:
        if doc["first_divergence"] < M:
            assert isinstance(doc["full_margin"], float) and doc["full_margin"] >= 0
        else:
            assert doc["full_margin"] is None


def test_budget_covering_the_context_matches_full_and_small_budgets_do_not(model_and_tokenizer, splits):
    model, _ = model_and_tokenizer
    wide, narrow = _run(model, splits, "icecache@1024,streamingllm@64")
    assert wide["summary"]["kl"] < 1e-4
    assert wide["summary"]["agree"] == 1.0
    assert abs(wide["summary"]["extra_nll"]) < 1e-3
    # NOTE: 64 tokens of sink + window over a 256-token prompt must lose something
    assert narrow["summary"]["kl"] > 1e-3
    assert len(narrow["kl_by_position"]) == M
    assert len(narrow["summary"]["kl_by_segment"]) == 4
    assert narrow["step_s"]["total"] > 0


def test_reference_reports_full_kvs_own_nll(model_and_tokenizer, splits):
    model, _ = model_and_tokenizer
    out = run_continuation(model, splits, parse_policies("quest@64"), batch_size=1)
    ref = out["reference"]
    assert ref["docs"] == 2 and 0.5 < ref["nll"] < 10
    # extra NLL is the policy's NLL minus full's, per step: the means agree
    s = out["policies"][0]["summary"]
    assert s["nll"] - ref["nll"] == pytest.approx(s["extra_nll"], abs=1e-4)


def test_documents_too_short_are_named(model_and_tokenizer):
    from icecache.bench.continuation.documents import Document
    from icecache.core.errors import ConfigError

    _, tokenizer = model_and_tokenizer
    with pytest.raises(ConfigError, match=r"'tiny' \(\d+ tokens\)"):
        split_documents([Document("tiny", "A few words only.")], tokenizer, N, M)


def test_cli_writes_table_json_and_plot(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from icecache.cli.main import main

    out = tmp_path / "c.json"
    rc = main(["bench", "continuation", "--prompt-tokens", "128", "--continuation-tokens", "8", "--docs", "1",
               "--policy", "quest@64", "--json", str(out), "--no-progress"])
    assert rc == 0
    data = json.loads(out.read_text())
    assert data["complete"] and data["settings"]["documents"] == 1
    assert data["policies"][0]["policy"] == "quest@64"
    assert out.with_suffix(".png").stat().st_size > 0
    assert "quest@64" in capsys.readouterr().out


def test_step_metrics_of_identical_logits():
    from icecache.bench.continuation.measure import step_metrics

    logits = torch.randn(3, 50)
    m = step_metrics(logits, torch.log_softmax(logits, -1), torch.tensor([1, 2, 3]))
    assert torch.allclose(m["kl"], torch.zeros(3), atol=1e-6)
    assert m["agree"].tolist() == [1.0, 1.0, 1.0]
