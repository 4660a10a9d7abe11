"""Index benchmark: attention recall vs the oracle on synthetic clustered keys, and build time.

``icecache bench index`` (or ``python -m icecache.index.bench``) prints two tables and writes JSON:

* recall at a budget (sinks and window inside it) on clustered keys with outliers, for the hierarchy
  index (exact and centroid page scoring), FAISS IVF (when faiss is installed), Prioritized DCI, flat
  balanced k-means pages, Quest's position-contiguous pages and the token oracle;
* the median time to build the ``--index`` (default hierarchy) over ``layers x kv_heads``
  head-indexes of ``tokens`` keys at once (the 135M model at 8k: 30 x 3 heads of 8192 x 64).
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import time
from pathlib import Path
from typing import Any

import torch

from icecache.bench.report import format_table, median_time, write_json
from icecache.core.config import CacheConfig
from icecache.index.clustering.kmeans import BalancedKMeans
from icecache.index.dci.index import PrioritizedDCIIndex
from icecache.index.hierarchy.index import HierarchyIndex
from icecache.metrics.fidelity import attention_recall, oracle_mask
from icecache.testing.synthetic import make_clustered_kv, query_for_cluster


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tokens", type=int, default=4096, help="context of the recall test")
    parser.add_argument("--budget", type=int, default=256, help="tokens per KV head, sink + window included")
    parser.add_argument("--queries", type=int, default=8, help="queries (clusters) averaged")
    parser.add_argument("--build-layers", type=int, default=30)
    parser.add_argument("--build-heads", type=int, default=3)
    parser.add_argument("--build-tokens", type=int, default=8192)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-dci", action="store_true", help="DCI is a slow Python reference")
    parser.add_argument("--skip-recall", action="store_true", help="only time the build and the query")
    parser.add_argument("--device", default="cpu", help="device of the build/query timing (cpu, cuda)")
    parser.add_argument("--index", default="hierarchy",
                        help="registered index whose build/query/insert is timed (e.g. faiss-ivf)")
    parser.add_argument("--model", action="store_true",
                        help="also prefill the embedded model on a NIAH prompt of --build-tokens tokens: "
                             "real recall vs oracle and index build time over prefill time")
    parser.add_argument("--dense-layers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads for the whole run, prefill included (default: torch's)")
    parser.add_argument("--json", type=Path, default=Path("bench-results/index.json"))


def _masks(N: int, config: CacheConfig, tokens: torch.Tensor) -> torch.Tensor:
    """Attended tokens ``[B, H, N]``: sinks + window + ``tokens`` ``[B, H, T]`` (-1 padded)."""
    B, H = tokens.shape[:2]
    mask = torch.zeros(B, H, N + 1, dtype=torch.bool)
    mask[..., :config.sink_tokens] = True
    mask[..., N - config.window_tokens:N] = True
    mask.scatter_(2, torch.where(tokens >= 0, tokens, N), True)
    return mask[..., :N]


def _quest_pages(lo: int, hi: int, S: int) -> torch.Tensor:
    ids = torch.arange(lo, hi)
    P = math.ceil(len(ids) / S)
    out = torch.full((P * S,), -1, dtype=torch.int64)
    out[:len(ids)] = ids
    return out.view(P, S)


def _take_pages(pages: torch.Tensor, scores: torch.Tensor, budget: int) -> torch.Tensor:
    """Token ids ``[B, H, T]`` of the best pages (``pages`` ``[B, H, P, S]``, ``scores`` ``[B, H, P]``)."""
    from icecache.index.budget import greedy_take

    B, H, P, S = pages.shape
    lens = (pages >= 0).sum(-1).view(B * H, P)
    order, taken = greedy_take(scores.reshape(B * H, P), lens, torch.full((B * H,), budget))
    chosen = torch.where(taken, order, -1)
    toks = pages.view(B * H, P, S).gather(1, chosen.clamp_min(0)[..., None].expand(B * H, P, S))
    return torch.where((chosen >= 0)[..., None], toks, -1).view(B, H, P * S)


def recall_table(args: argparse.Namespace) -> list[dict[str, Any]]:
    config = CacheConfig(budget=args.budget)
    N, D, H, G = args.tokens, args.dim, 3, 3
    kv = make_clustered_kv(1, H, N, D, num_clusters=max(8, N // 64), spread=0.6, norm_range=(0.5, 4.0),
                           outlier_fraction=0.02, seed=11)
    keys = kv.keys
    lo, hi = config.sink_tokens, N - config.window_tokens
    ids = torch.arange(N)
    ids = torch.where((ids >= lo) & (ids < hi), ids, -1)
    sel = config.selected_budget
    methods: dict[str, Any] = {
        "hierarchy (exact)": HierarchyIndex(config),
        "hierarchy (centroid)": HierarchyIndex(config, scoring="centroid"),
    }
    if importlib.util.find_spec("faiss") is not None:
        from icecache.index.faiss_ivf.index import FaissIvfIndex

        methods["faiss IVF (exact rescoring)"] = FaissIvfIndex(config)
    if not args.skip_dci:
        methods["prioritized DCI"] = PrioritizedDCIIndex(config)
    build_s: dict[str, float] = {}
    for name, index in methods.items():
        t0 = time.perf_counter()
        index.build(keys, ids)
        build_s[name] = time.perf_counter() - t0
    # flat k-means pages of 16 (ClusterKV-like, q . centroid) and Quest pages
    inner = keys[:, :, lo:hi]
    C = math.ceil((hi - lo) / config.page_size)
    flat = BalancedKMeans(transform=False, iters=6).fit(inner.reshape(H, hi - lo, D), C,
                                                        capacity=config.page_size)
    fl_pages = torch.full((H, C, config.page_size), -1, dtype=torch.int64)
    order = flat.assignments.argsort(dim=1, stable=True)
    a_sorted = flat.assignments.gather(1, order)
    rank = torch.arange(hi - lo)[None] - (flat.sizes.cumsum(1) - flat.sizes).gather(1, a_sorted)
    fl_pages[torch.arange(H)[:, None].expand_as(order), a_sorted, rank] = order + lo
    fl_pages = fl_pages[None]
    q_pages = _quest_pages(lo, hi, config.page_size).expand(1, H, -1, -1)
    rows: dict[str, list[float]] = {k: [] for k in [*methods, "flat k-means pages", "quest pages", "oracle"]}
    for c in range(args.queries):
        q = query_for_cluster(kv, c % kv.num_clusters, group_size=G, noise=1.0, scale=6.0,
                              seed=c).view(1, H, G, D)
        probs = torch.einsum("bhgd,bhnd->bhgn", q, keys).mul(D ** -0.5).softmax(-1).reshape(1, H * G, N)
        for name, index in methods.items():
            hits = index.query(q, sel)
            rows[name].append(float(attention_recall(probs, _masks(N, config, hits.token_ids)).mean()))
        fs = torch.einsum("bhgd,bhpd->bhgp", q, flat.centroids[None]).amax(2)
        rows["flat k-means pages"].append(float(attention_recall(
            probs, _masks(N, config, _take_pages(fl_pages, fs, sel))).mean()))
        k = keys[0][:, q_pages[0, 0].clamp_min(0)]  # [H, P, S, D]
        qs = torch.maximum(q[0][:, :, None, None] * k.amin(2)[:, None, :, None],
                           q[0][:, :, None, None] * k.amax(2)[:, None, :, None]).sum(-1)[..., 0]  # [H, G, P]
        rows["quest pages"].append(float(attention_recall(
            probs, _masks(N, config, _take_pages(q_pages, qs.amax(1)[None], sel))).mean()))
        forced = _masks(N, config, torch.full((1, H, 1), -1))
        cand = torch.zeros_like(forced)
        cand[..., lo:hi] = True
        rows["oracle"].append(float(attention_recall(probs, oracle_mask(probs, forced, cand, sel)).mean()))
    oracle = sum(rows["oracle"]) / len(rows["oracle"])
    return [{"method": k, "recall": sum(v) / len(v), "gap_to_oracle": oracle - sum(v) / len(v),
             "build_s": build_s.get(k)} for k, v in rows.items()]


def build_times(args: argparse.Namespace) -> dict[str, Any]:
    """Median build time of ``layers x heads`` head-indexes at once, and the median latency of one
    layer's query (``[1, heads, 3, D]`` at budget 192) and of one 16-token insert."""
    L, H, N, D = args.build_layers, args.build_heads, args.build_tokens, args.dim
    dev = torch.device(args.device)
    kv = make_clustered_kv(L, H, N, D, num_clusters=N // 64, spread=0.6, norm_range=(0.5, 4.0),
                           outlier_fraction=0.02, seed=3)
    keys = kv.keys.to(dev)
    name = getattr(args, "index", "hierarchy")

    def make() -> Any:
        from icecache.core.plugins import build_registry

        return build_registry().create("index", name, CacheConfig(device=dev))

    index = make()
    # NOTE: layers ride the batch axis: one build call indexes every (layer, head) at once
    seconds = median_time(lambda: index.build(keys), repeats=args.repeats)
    layer = make()
    layer.build(keys[:1, :, :N - 64])
    q = query_for_cluster(kv, 0, group_size=3, noise=1.0, scale=6.0)[:1].view(1, H, 3, D).to(dev)
    query_s = median_time(lambda: layer.query(q, 192), repeats=max(5, 4 * args.repeats))
    step = iter(range(10**6))

    def insert() -> None:
        i = next(step) % 4
        layer.insert(keys[:1, :, N - 64 + 16 * i:N - 48 + 16 * i], torch.arange(16, device=dev) + N + 16 * i)

    insert_s = median_time(insert, repeats=max(5, 4 * args.repeats))
    return {"index": name, "device": str(dev), "head_indexes": L * H, "tokens": N, "dim": D,
            "median_s": seconds,
            "per_head_ms": 1e3 * seconds / (L * H), "query_ms": 1e3 * query_s, "insert16_ms": 1e3 * insert_s,
            "threads": torch.get_num_threads()}


def real_model(args: argparse.Namespace) -> dict[str, Any]:
    """Prefill the embedded model, index every sparse layer's keys (all layers at once, prompt queries
    whitening), and measure recall of the decoded tokens' queries at ``args.budget`` vs the oracle."""
    from icecache.bench.capture import capture, niah_prompt
    from icecache.integrations.hf.loader import load_model

    model, tok = load_model()
    ids, _ = niah_prompt(tok, args.build_tokens)
    cap = capture(model, ids, decode_steps=4, keep_prompt_queries=True)
    config = CacheConfig(budget=args.budget)
    first = args.dense_layers
    L = cap.num_layers - first
    N = cap.prompt_len
    keys = cap.keys[first:, :, :N]  # [L, H, N, D] prompt keys; decoded tokens join the window
    H, D = keys.shape[1], keys.shape[-1]
    G = cap.decode_queries.shape[1] // H
    pq = cap.prompt_queries[first:, :, -64:].float()  # [L, H_q, 64, D]
    queries = pq.view(L, H, G * 64, D)
    rows = []
    for whiten in (False, True):
        index = HierarchyIndex(config)
        ids_t = torch.arange(N)
        ids_t = torch.where((ids_t >= config.sink_tokens) & (ids_t < N - config.window_tokens), ids_t, -1)
        t0 = time.perf_counter()
        index.build(keys, ids_t, queries=queries if whiten else None)
        build_s = time.perf_counter() - t0
        got, best = [], []
        for t in range(cap.decode_steps):
            ctx = N + t + 1  # the query at position N + t attends keys 0 .. N + t
            k = cap.keys[first:, :, :ctx]
            q = cap.decode_queries[first:, :, t].view(L, H, G, D)
            probs = torch.einsum("bhgd,bhnd->bhgn", q, k).mul(D ** -0.5).softmax(-1).reshape(L, H * G, ctx)
            window = torch.arange(N - config.window_tokens, ctx)
            res_ids = torch.cat([torch.arange(config.sink_tokens), window])
            resident = torch.einsum("bhgd,bhrd->bhgr", q, k[:, :, res_ids]) * D ** -0.5
            hits = index.query(q, config.budget - config.sink_tokens - (ctx - (N - config.window_tokens)),
                               resident_logits=resident)
            mask = torch.zeros(L, H, ctx + 1, dtype=torch.bool)
            mask[:, :, res_ids] = True
            mask.scatter_(2, torch.where(hits.token_ids >= 0, hits.token_ids, ctx), True)
            got.append(float(attention_recall(probs, mask[..., :ctx]).mean()))
            forced = mask.clone()
            forced[...] = False
            forced[:, :, res_ids] = True
            cand = torch.zeros_like(forced)
            cand[:, :, config.sink_tokens:N - config.window_tokens] = True
            k_sel = config.budget - int(res_ids.numel())
            best.append(float(attention_recall(probs, oracle_mask(probs, forced[..., :ctx], cand[..., :ctx],
                                                                  k_sel)).mean()))
        rows.append({"whiten": whiten, "recall": sum(got) / len(got), "oracle": sum(best) / len(best),
                     "build_s": build_s})
    # build time of every sparse layer's index over the prefill, medians, same process
    whitened = median_time(lambda: HierarchyIndex(config).build(keys, queries=queries), repeats=args.repeats)
    return {"context": N, "layers": L, "prefill_s": cap.prefill_seconds, "build_s": whitened,
            "build_over_prefill": whitened / cap.prefill_seconds, "recall": rows}


def check(args: argparse.Namespace) -> None:
    """Every flag, before any key is drawn."""
    from icecache.bench import checks
    from icecache.core.config import CacheConfig
    from icecache.eval.checks import check_threads, resolve_device

    checks.at_least(args, {"--tokens": 1, "--budget": 1, "--queries": 1, "--build-layers": 1,
                           "--build-heads": 1, "--build-tokens": 1, "--dim": 1, "--repeats": 1,
                           "--dense-layers": 0})
    check_threads(args.threads, "--threads")
    resolve_device(args.device)
    checks.registered("index", args.index)
    CacheConfig(budget=args.budget)  # a budget below sinks + window is refused, naming both
    checks.fits_memory(4 * args.build_layers * args.build_heads * args.build_tokens * args.dim * 4,
                       f"--build-layers {args.build_layers} x --build-heads {args.build_heads} x "
                       f"--build-tokens {args.build_tokens} keys of --dim {args.dim}", args.device)
    checks.fits_memory(4 * args.tokens * args.dim * 4, f"--tokens {args.tokens}")
    if args.model:
        _, positions = checks.model_positions(None)
        checks.contexts_fit([args.build_tokens], positions, "--build-tokens", reserve=64)


def main(args: argparse.Namespace) -> int:
    check(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows = [] if args.skip_recall else recall_table(args)
    if rows:
        print(f"attention recall at budget {args.budget} (sink + window inside), {args.tokens} "
              "clustered keys")
        print(format_table(rows, ["method", "recall", "gap_to_oracle", "build_s"]))
    build = build_times(args)
    print(f"\n{build['index']} build on {build['device']}: {build['head_indexes']} head-indexes x "
          f"{build['tokens']} keys x {build['dim']} dims: median {build['median_s']:.3f} s "
          f"({build['per_head_ms']:.2f} ms per head); one layer's query {build['query_ms']:.2f} ms, "
          f"16-token insert {build['insert16_ms']:.2f} ms")
    real = None
    if args.model:
        real = real_model(args)
        print(f"\nembedded model, {real['context']}-token NIAH prompt, {real['layers']} sparse layers: "
              f"prefill {real['prefill_s']:.1f} s, index build {real['build_s']:.2f} s = "
              f"{real['build_over_prefill']:.3f} of prefill")
        print(format_table(real["recall"], ["whiten", "recall", "oracle", "build_s"]))
    options = {k: str(v) for k, v in vars(args).items() if not k.startswith("_")}
    write_json(args.json, {"recall": rows, "build": build, "real_model": real, "args": options})
    return 0


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__)
    add_arguments(p)
    raise SystemExit(main(p.parse_args()))
