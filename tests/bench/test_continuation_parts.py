"""Continuation bench parts that need no model: documents file checks, agreement, summaries."""

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from icecache.bench.continuation.documents import check_lengths, load_docs_file
from icecache.bench.continuation.measure import agreement, top2_margin
from icecache.bench.continuation.summary import summarize
from icecache.core.errors import ConfigError


@pytest.mark.parametrize(("content", "message"), [
    ("not json\n", r"line 1 is not valid JSON"),
    ('{"id": "a", "text": "x"}\n[1, 2]\n', r"line 2 must be a JSON object"),
    ('{"id": "a"}\n', r"line 1 lacks \['text'\]"),
    ('{"id": "", "text": "x"}\n', r"'id' must be a non-empty string"),
    ('{"id": "a", "text": 3}\n', r"'text' of 'a' must be a non-empty string"),
    ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', r"line 2: id 'a' appears twice"),
    ("\n\n", r"holds no documents"),
])
def test_bad_docs_file_is_named(tmp_path, content, message):
    path = tmp_path / "docs.jsonl"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        load_docs_file(path)


def test_docs_file_missing_and_good(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_docs_file(tmp_path / "none.jsonl")
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"id": "a", "text": "hello"}) + "\n\n" + json.dumps({"id": "b", "text": "x"}))
    assert [d.id for d in load_docs_file(path)] == ["a", "b"]


def test_cli_rejects_bad_docs_file_before_loading(tmp_path, capsys):
    from icecache.cli.main import main

    path = tmp_path / "docs.jsonl"
    path.write_text('{"id": "a", "txt": "x"}\n')
    assert main(["bench", "continuation", "--docs-file", str(path)]) == 2
    err = capsys.readouterr().err
    assert "line 1 lacks ['text']" in err and "Traceback" not in err


@pytest.mark.parametrize(("n", "m", "message"), [(0, 8, "--prompt-tokens"), (8, 0, "--continuation-tokens"),
                                                  (8, 4096, "at most|1..2048"), (8000, 1000, "positions")])
def test_lengths_checked(n, m, message):
    with pytest.raises(ConfigError, match=message):
        check_lengths(n, m, 8192)


def test_agreement_counts_the_first_divergence():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    got = agreement([[1, 2, 9, 4], [5, 6, 7, 8]], ref)
    assert got[0] == {"first_divergence": 2.0, "agree_fraction": 0.75}
    assert got[1] == {"first_divergence": 4.0, "agree_fraction": 1.0}


def test_agreement_reports_fulls_margin_where_the_rows_part():
    ref = [[1, 2, 3, 4], [5, 6, 7, 8]]
    margins = [[0.5, 0.4, 0.01, 0.3], [1.0, 1.0, 1.0, 1.0]]
    got = agreement([[1, 2, 9, 4], [5, 6, 7, 8]], ref, margins)
    assert got[0]["full_margin"] == 0.01  # the step where row 0 parts, not its neighbours
    assert got[1]["full_margin"] is None  # never parts


@given(st.lists(st.floats(-20, 20), min_size=2, max_size=12))
def test_top2_margin_is_the_log_prob_gap_of_the_two_best(values):
    logits = torch.tensor([values], dtype=torch.float64)
    best, second = sorted(values, reverse=True)[:2]
    assert top2_margin(logits)[0].item() == pytest.approx(best - second, abs=1e-4)  # float32 log-softmax
    assert top2_margin(logits)[0].item() >= 0


@given(steps=st.integers(4, 200), docs=st.integers(1, 4), segments=st.integers(1, 4))
def test_segments_cover_every_step_and_average_to_the_mean(steps, docs, segments):
    values = torch.rand(steps, docs)
    s = summarize({"kl": values}, segments)
    edges = s["segments"]
    assert edges[0][0] == 0 and edges[-1][1] == steps
    assert all(a[1] == b[0] for a, b in zip(edges, edges[1:], strict=False))
    weighted = sum((b - a) * m for (a, b), m in zip(edges, s["kl_by_segment"], strict=True)) / steps
    assert weighted == pytest.approx(s["kl"], rel=1e-5)


def test_drift_is_last_minus_first_segment():
    values = torch.cat([torch.full((64, 2), 0.1), torch.full((64, 2), 0.3)])
    s = summarize({"kl": values + 0.01 * torch.rand(128, 2)}, 2)
    assert s["kl_drift"] == pytest.approx(0.2, abs=0.02)
    assert s["kl_drift_z"] > 2


@pytest.mark.parametrize(("argv", "message"), [
    (["--segments", "0"], "--segments must be positive"),
    (["--continuation-tokens", "8", "--segments", "9"], "--segments 9 is more than"),
    (["--free-tokens", "-1"], "--free-tokens must be non-negative"),
    (["--continuation-tokens", "4096"], "--continuation-tokens must be in 1..2048"),
    (["--prompt-tokens", "8000", "--continuation-tokens", "1000"], "positions"),
    (["--policy", "nosuch@64"], "nosuch"),
    (["--docs", "0"], "--docs must be a positive"),
])
def test_cli_bad_arguments_fail_before_loading(argv, message, capsys):
    from icecache.cli.main import main

    assert main(["bench", "continuation", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
