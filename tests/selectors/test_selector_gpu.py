"""Every selector on CUDA tensors: same invariants, and the same choices as on the CPU (up to float
ties in k-means). Run on a CUDA machine: ``pytest tests/selectors -m gpu``."""

from __future__ import annotations

import time

import pytest
import torch
from default_selectors import DEFAULT_SELECTORS, available, make_selector

from icecache.core.config import CacheConfig
from icecache.metrics import attention_probs, attention_recall
from icecache.testing.synthetic import left_padding, make_clustered_kv, query_for_cluster

pytestmark = pytest.mark.gpu
#: selectors whose layout comes from k-means: float differences may move a few keys between pages
CLUSTERED = {"clusterkv", "icecache", "icecache-reuse"}


def _run(name: str, device: str, kv, start, queries, config):
    sel = make_selector(name, config)
    keys = kv.keys.to(device)
    N = 600
    sel.prefill(keys[:, :, :N], start=start.to(device))
    out = []
    for t, q in enumerate(queries):
        sel.append(keys[:, :, N + t : N + t + 1])
        s = sel.select(q.to(device))
        assert s.token_ids.device.type == device and s.page_ids.device.type == device
        n = N + t + 1
        mask = s.token_mask(n).cpu()
        recall = attention_recall(attention_probs(q, kv.keys[:, :, :n], start=start), mask)
        out.append((mask, recall, s.ledger.total.cpu()))
    return out


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name", [n for n, _ in DEFAULT_SELECTORS])
def test_cuda_matches_cpu(name):
    if not available(name):
        pytest.skip(f"{name} unavailable")
    torch.backends.cuda.matmul.allow_tf32 = False
    kv = make_clustered_kv(2, 3, 640, 64, num_clusters=12, spread=0.3, seed=1)
    start = left_padding(2, 600, max_pad=50, seed=2)
    queries = [query_for_cluster(kv, t % 12, group_size=3, noise=0.3, scale=4.0, seed=t) for t in range(20)]
    config = CacheConfig(budget=128, page_size=16)
    cpu = _run(name, "cpu", kv, start, queries, config)
    gpu = _run(name, "cuda", kv, start, queries, config)
    for (m_cpu, r_cpu, tot_cpu), (m_gpu, r_gpu, tot_gpu) in zip(cpu, gpu, strict=True):
        assert int(tot_gpu.max()) <= (10**9 if name == "full" else 128)
        if name in CLUSTERED:
            assert float((r_gpu - r_cpu).abs().max()) < 0.05
        else:
            assert float((m_cpu == m_gpu).float().mean()) > 0.99
            assert torch.equal(tot_cpu, tot_gpu)
            assert float((r_gpu - r_cpu).abs().max()) < 1e-3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_select_times_at_8k(capsys):
    """Prints per-layer prefill and select times on CUDA at 8k tokens (no timed assertion)."""
    kv = make_clustered_kv(1, 3, 8192, 64, num_clusters=64, spread=0.3, seed=3)
    keys = kv.keys.cuda()
    q = torch.randn(1, 9, 64, device="cuda")
    lines = []
    for name, _ in DEFAULT_SELECTORS:
        if not available(name):
            continue
        sel = make_selector(name, CacheConfig(budget=256))
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        sel.prefill(keys)
        torch.cuda.synchronize()
        build = time.perf_counter() - t0
        for _ in range(3):
            sel.select(q)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        for _ in range(20):
            sel.select(q)
        torch.cuda.synchronize()
        select_ms = 1000 * (time.perf_counter() - t0) / 20
        lines.append(f"{name:14s} prefill {1000 * build:8.1f} ms  select {select_ms:6.2f} ms")
    with capsys.disabled():
        print("\n" + "\n".join(lines))
