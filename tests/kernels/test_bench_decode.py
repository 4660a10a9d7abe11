"""``icecache bench decode`` at tiny contexts: JSON shape, plot, and the sparse step's correctness."""

from __future__ import annotations

import json

import pytest
import torch

from icecache.core.config import CacheConfig
from icecache.core.errors import UnknownComponentError
from icecache.kernels.paged_attention.synthetic import dense_masked_attention
from icecache.testing.assertions import assert_close


def _selector_or_skip(name, config, keys):
    from icecache.bench.decode import _make_selector

    try:
        return _make_selector(name, config, "reference", keys)
    except (UnknownComponentError, ModuleNotFoundError) as exc:
        pytest.skip(f"selector {name!r} not available yet: {exc}")


def test_sparse_step_equals_attention_over_the_selection():
    from icecache.bench.decode import SparseStep, clustered_kv

    n, H, G, D = 1024, 2, 4, 32
    config = CacheConfig(budget=128)
    keys, values, q_kv = clustered_kv(n, H, D, seed=3, device=torch.device("cpu"))
    query = (q_kv[:, :, None, :] + 0.3 * torch.randn(1, H, G, D)).reshape(1, H * G, D)
    selector, backend, _ = _selector_or_skip("quest", config, keys)
    step = SparseStep.build(selector, backend, keys, values, config,
                            min(config.selected_budget, selector.layout.num_pages))
    mask = selector.select(query).token_mask(n)
    assert bool((mask.sum(-1) <= config.budget).all())
    expected, _ = dense_masked_attention(query, keys, values, mask)
    assert_close(step.step(query), expected.float())


def test_bench_decode_cli(tmp_path):
    from icecache.cli.main import main

    path = tmp_path / "decode.json"
    rc = main(["bench", "decode", "--contexts", "512,1024", "--selector", "quest", "--kv-heads", "2",
               "--head-dim", "32", "--budget", "128", "--repeats", "1", "--kernel", "reference",
               "--json", str(path)])
    assert rc == 0
    payload = json.loads(path.read_text())
    rows = payload["results"]
    assert {r["policy"] for r in rows} == {"dense", "quest@128"}
    for r in rows:
        assert {"context", "policy", "step_ms", "vs_dense"} <= set(r)
        assert r["step_ms"] > 0
    assert [r["context"] for r in rows if r["policy"] == "dense"] == [512, 1024]
    assert path.with_suffix(".png").stat().st_size > 1000


def test_unknown_selector_is_refused_before_any_work(tmp_path, capsys):
    """An unknown --selector is a usage error naming it (it used to fall back to quest silently)."""
    from icecache.cli.main import main

    path = tmp_path / "d.json"
    code = main(["bench", "decode", "--contexts", "256", "--selector", "no-such-selector", "--kv-heads", "1",
                 "--head-dim", "16", "--budget", "128", "--repeats", "1", "--json", str(path)])
    assert code == 2
    assert "no-such-selector" in capsys.readouterr().err
    assert not path.exists()


def test_selector_options_reach_the_index_and_are_recorded(tmp_path):
    from icecache.cli.main import main

    path = tmp_path / "d.json"
    args = ["bench", "decode", "--contexts", "2048", "--kv-heads", "1", "--head-dim", "16", "--budget", "64",
            "--repeats", "1", "--kernel", "reference", "--json", str(path)]
    main(args + ["--selector-options", '{"index_options": {"bound_candidates": 0, "candidates": 1}}'])
    payload = json.loads(path.read_text())
    assert payload["selector_options"] == {"index_options": {"bound_candidates": 0, "candidates": 1}}
    assert [r["policy"] for r in payload["results"]] == ["dense", "icecache@64"]


@pytest.mark.parametrize("bound", [0, 2])
def test_selector_options_configure_the_selector_index(bound):
    from icecache.bench.decode import _make_selector, clustered_kv

    keys, _, _ = clustered_kv(1024, 1, 16, seed=0, device=torch.device("cpu"))
    selector, _, _ = _make_selector("icecache", CacheConfig(budget=64), "reference", keys,
                                    {"index_options": {"bound_candidates": bound}})
    assert selector.page_index.bound_candidates == bound


def test_bad_selector_options_are_refused_instead_of_falling_back(tmp_path, capsys):
    from icecache.cli.main import main

    code = main(["bench", "decode", "--contexts", "256", "--kv-heads", "1", "--head-dim", "16",
                 "--budget", "64",
                 "--repeats", "1", "--selector-options", '{"no_such_option": 1}',
                 "--json", str(tmp_path / "d.json")])
    assert code == 2
    assert "no_such_option" in capsys.readouterr().err
    assert not (tmp_path / "d.json").exists()
