"""One layer's decode step: dense attention vs a sparse policy (index query + page load + sparse attention).

Per context length, one run measures (medians, same process):

* ``dense``: SDPA of one decode query over the full KV cache of the layer;
* ``<selector>@<budget>``: ``selector.select(query)`` (the index query), gathering the selected pages
  from a host page pool into staging and scattering them into a device pool (the kernel backend's
  gather/scatter), and sparse paged attention over sink + window + selected pages.

Keys are clustered synthetic keys (what a semantic index is built for); the query leans towards one
cluster. ``vs_dense`` is the step time over the dense step time at that context. Writes JSON
(``results``: ``context``, ``policy``, ``step_ms``, ``vs_dense`` plus a breakdown) and a PNG plot
next to it.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from attrs import define
from torch import Tensor

from icecache.bench.report import format_table, median_time, write_json
from icecache.core.config import CacheConfig
from icecache.core.page_table import PageTable

DEFAULT_CONTEXTS = (16 * 1024, 64 * 1024, 128 * 1024, 256 * 1024)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, help="write results here (a PNG plot goes next to it)")
    parser.add_argument("--contexts", default=",".join(str(c) for c in DEFAULT_CONTEXTS),
                        help="comma-separated context lengths in tokens")
    parser.add_argument("--selector", default="icecache", help="registered selector to compare with dense")
    parser.add_argument("--selector-options", type=_selector_options, default=None,
                        help="JSON object (or file): the selector's factory options, e.g. "
                             "'{\"index_options\": {\"bound_candidates\": 0}}'")
    parser.add_argument("--fallback-selector", default="quest",
                        help="used (and labelled) when --selector cannot be built or prefilled")
    parser.add_argument("--budget", type=int, default=256,
                        help="tokens per KV head, sinks and window included")
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--group", type=int, default=4, help="query heads per KV head (GQA)")
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--kernel", default="auto", help="kernel backend: auto, reference, triton, ...")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (1: stable on a shared machine; OpenMP barriers spin badly "
                             "when cores are oversubscribed)")


def _selector_options(text: str) -> dict[str, Any]:
    import json

    try:
        value = json.loads(text if text.lstrip().startswith("{") else Path(text).read_text())
    except (OSError, ValueError) as exc:
        raise argparse.ArgumentTypeError(f"--selector-options must be a JSON object or file: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"--selector-options must be a JSON object, got {text!r}")
    return value


# ------------------------------------------------------------------------------------------ data
def clustered_kv(n: int, kv_heads: int, head_dim: int, *, seed: int, device: torch.device,
                 tokens_per_cluster: int = 64) -> tuple[Tensor, Tensor, Tensor]:
    """Keys/values ``[1, H_kv, n, D]`` float32: keys are noisy copies of random cluster centres (in
    random order along the sequence), and a query ``[1, H_kv, D]`` near one centre per head."""
    g = torch.Generator().manual_seed(seed)
    C = max(1, n // tokens_per_cluster)
    centers = torch.randn(kv_heads, C, head_dim, generator=g) * 1.5  # [H_kv, C, D]
    assign = torch.randint(0, C, (kv_heads, n), generator=g)  # [H_kv, n]
    keys = torch.gather(centers, 1, assign[..., None].expand(kv_heads, n, head_dim))  # [H_kv, n, D]
    keys.add_(torch.randn(kv_heads, n, head_dim, generator=g), alpha=0.5)
    values = torch.randn(kv_heads, n, head_dim, generator=g)
    target = torch.randint(0, C, (kv_heads,), generator=g)
    query = centers[torch.arange(kv_heads), target]  # [H_kv, D]
    return keys[None].to(device), values[None].to(device), query[None].to(device)


# ------------------------------------------------------------------------------------------ sparse step
@define
class SparseStep:
    """State of one layer's sparse decode step: the selector, a host page pool holding every logical page
    of the selector's layout (``[rows * P, 2, S, D]``: K and V), and a device pool with resident
    sink/window pages followed by one region per row for the pages loaded each step."""

    selector: Any
    backend: Any
    host_pool: Tensor  # [R * P, 2, S, D] (pinned on CUDA)
    device_pool: Tensor  # [R * (F + K_max), 2, S, D]
    fixed_pages: Tensor  # int64 [R, F]: device slots of the resident sink/window pages
    fixed_lens: Tensor  # int64 [R, F]
    staging: Tensor  # [R * K_max, 2, S, D] (pinned on CUDA)
    device_staging: Tensor  # [R * K_max, 2, S, D]
    page_lens: Tensor  # int64 [R, P]: valid slots of every logical page
    pages_per_row: int  # P
    max_selected: int  # K_max
    page_size: int

    @classmethod
    def build(cls, selector: Any, backend: Any, keys: Tensor, values: Tensor, config: CacheConfig,
              max_selected: int) -> SparseStep:
        """Prefill done by the caller; lay the selector's pages into the host pool (untimed setup)."""
        B, H, N, D = keys.shape
        device = keys.device
        layout = selector.layout.token_ids  # [B, H_kv, P, S], -1 padding
        R, S = B * H, layout.shape[-1]  # the selector's page size (IceCache sizes its own)
        P = layout.shape[2]
        idx = layout.clamp_min(0).reshape(B, H, P * S, 1).expand(B, H, P * S, D)  # [B, H_kv, P*S, D]
        valid = (layout >= 0).reshape(B, H, P * S, 1)
        kp = torch.where(valid, torch.gather(keys, 2, idx), 0.0).reshape(R * P, S, D)  # [R*P, S, D]
        vp = torch.where(valid, torch.gather(values, 2, idx), 0.0).reshape(R * P, S, D)
        pin = device.type == "cuda"
        host_pool = torch.stack([kp, vp], dim=1).cpu()  # [R*P, 2, S, D]
        if pin:
            host_pool = host_pool.pin_memory()
        # resident pages: the sinks (first tokens) and the recent window (last tokens)
        sink, window = config.sink_tokens, config.window_tokens
        fixed_tokens = torch.cat([torch.arange(sink), torch.arange(N - window, N)]).to(device)
        f_pages = math.ceil(sink / S) + math.ceil(window / S)
        fixed_k = torch.zeros(R, f_pages * S, D, dtype=keys.dtype, device=device)
        fixed_v = torch.zeros_like(fixed_k)
        slot = torch.cat([torch.arange(sink), math.ceil(sink / S) * S + torch.arange(window)]).to(device)
        fixed_k[:, slot] = keys.reshape(R, N, D)[:, fixed_tokens]
        fixed_v[:, slot] = values.reshape(R, N, D)[:, fixed_tokens]
        lens = torch.tensor([min(S, max(0, sink - i * S)) for i in range(math.ceil(sink / S))]
                            + [min(S, max(0, window - i * S)) for i in range(math.ceil(window / S))])
        per_row = f_pages + max_selected
        device_pool = torch.zeros(R * per_row, 2, S, D, dtype=keys.dtype, device=device)
        fixed_slots = torch.arange(R, device=device)[:, None] * per_row + torch.arange(f_pages, device=device)
        device_pool[fixed_slots.flatten(), 0] = fixed_k.reshape(R * f_pages, S, D)
        device_pool[fixed_slots.flatten(), 1] = fixed_v.reshape(R * f_pages, S, D)
        keep = lens > 0
        staging = torch.empty(R * max_selected, 2, S, D, dtype=keys.dtype, pin_memory=pin)
        return cls(selector=selector, backend=backend, host_pool=host_pool, device_pool=device_pool,
                   fixed_pages=fixed_slots[:, keep.to(device)],
                   fixed_lens=lens[keep].to(device).expand(R, -1),
                   page_lens=(layout >= 0).sum(-1).reshape(R, P), staging=staging,
                   device_staging=torch.empty_like(device_pool[: R * max_selected]),
                   pages_per_row=P, max_selected=max_selected, page_size=S)

    def select(self, query: Tensor) -> Tensor:
        """The index query: selected page ids ``[B, H_kv, K]`` (-1 padded)."""
        return self.selector.select(query).page_ids

    def load(self, page_ids: Tensor) -> tuple[Tensor, Tensor]:
        """Bulk load the selected pages into each row's device region: one gather into staging, one
        copy, one scatter. Returns device slots and lens, ``[R, K]`` (-1 / 0 padded)."""
        B, H, K = page_ids.shape
        R = B * H
        if K > self.max_selected:
            raise ValueError(f"selector returned {K} pages per row, over max_selected={self.max_selected}")
        ids = page_ids.reshape(R, K)
        valid = ids >= 0
        rows = torch.arange(R, device=ids.device)[:, None].expand(R, K)
        host_slots = (rows * self.pages_per_row + ids)[valid].cpu()  # [n]
        per_row = self.fixed_pages.shape[1] + self.max_selected
        dev_slots_all = rows * per_row + self.fixed_pages.shape[1] + torch.arange(K, device=ids.device)
        dev_slots = dev_slots_all[valid].to(self.device_pool.device)  # [n]
        n = host_slots.numel()
        staged = self.backend.gather_pages(self.host_pool, host_slots, out=self.staging[:n], check=False)
        dev = self.device_staging[:n]
        dev.copy_(staged, non_blocking=True)
        self.backend.scatter_pages(self.device_pool, dev_slots, dev, check=False)
        lens = torch.where(valid, self.page_lens.gather(1, ids.clamp_min(0)), 0)  # [R, K]
        return torch.where(valid, dev_slots_all, -1), lens

    def attend(self, query: Tensor, slots: Tensor, lens: Tensor) -> tuple[Tensor, Tensor]:
        pages = torch.cat([self.fixed_pages, slots], dim=1)  # [R, F + K]
        page_lens = torch.cat([self.fixed_lens, lens], dim=1)
        table = PageTable.from_page_lists(pages, page_lens, self.page_size)
        k_pool, v_pool = self.device_pool[:, 0], self.device_pool[:, 1]  # [slots, S, D] views
        return self.backend.paged_decode_attention(query, k_pool, v_pool, table,
                                                   max_pages_per_row=pages.shape[1])

    def step(self, query: Tensor) -> Tensor:
        slots, lens = self.load(self.select(query))
        return self.attend(query, slots, lens)[0]


def dense_step(query: Tensor, keys: Tensor, values: Tensor) -> Tensor:
    """Dense decode attention: ``query`` ``[B, H_q, D]`` over ``[B, H_kv, N, D]``; the G query heads of
    a KV head ride as G query rows (exact for one decode position), so nothing is expanded."""
    B, H_q, D = query.shape
    H = keys.shape[1]
    out = F.scaled_dot_product_attention(query.view(B, H, H_q // H, D), keys, values)  # [B, H_kv, G, D]
    return out.reshape(B, H_q, D)


# ------------------------------------------------------------------------------------------ main
def _make_selector(name: str, config: CacheConfig, kernel: str, keys: Tensor,
                   options: dict[str, Any] | None = None) -> tuple[Any, str, float]:
    from icecache.core.policy import compose_policy

    policy = compose_policy(selector=name, config=config, kernel=kernel,
                            options={"selector": options} if options else None)
    selector = policy.make_selector(config.dense_layers)  # a sparse layer (earlier ones stay dense)
    t0 = time.perf_counter()
    selector.prefill(keys)
    return selector, policy.make_kernels(), time.perf_counter() - t0


def run_context(n: int, args: argparse.Namespace, device: torch.device, log) -> list[dict[str, Any]]:
    H, G, D = args.kv_heads, args.group, args.head_dim
    config = CacheConfig(budget=args.budget, page_size=args.page_size, device=device)
    keys, values, q_kv = clustered_kv(n, H, D, seed=args.seed + n, device=device)
    g = torch.Generator().manual_seed(args.seed)
    query = (q_kv[:, :, None, :] + 0.3 * torch.randn(1, H, G, D, generator=g).to(device)).reshape(1, H * G, D)
    dense_ms = median_time(lambda: dense_step(query, keys, values), repeats=args.repeats) * 1e3
    dense_out = dense_step(query, keys, values)
    rows = [{"context": n, "policy": "dense", "step_ms": dense_ms, "vs_dense": 1.0}]
    log(f"  {n}: dense {dense_ms:.2f} ms")
    used, error = args.selector, None
    try:
        selector, backend, prefill_s = _make_selector(args.selector, config, args.kernel, keys,
                                                     args.selector_options)
    except Exception as exc:  # noqa: BLE001 - the selector under test may not be ready; say so, go on
        if args.selector_options:  # options were meant for this selector: a bad one is the user's error
            raise
        error = f"{type(exc).__name__}: {exc}"
        log(f"  {args.selector} unavailable ({error}); using {args.fallback_selector}")
        used = args.fallback_selector
        selector, backend, prefill_s = _make_selector(used, config, args.kernel, keys)
    # NOTE: partial pages hold >= 1 token, so at most selected_budget pages fit in the budget
    max_sel = max(1, min(config.selected_budget, selector.layout.num_pages))
    sparse = SparseStep.build(selector, backend, keys, values, config, max_sel)
    select_ms = median_time(lambda: sparse.select(query), repeats=args.repeats) * 1e3
    page_ids = sparse.select(query)
    load_ms = median_time(lambda: sparse.load(page_ids), repeats=args.repeats) * 1e3
    slots, lens = sparse.load(page_ids)
    attend_ms = median_time(lambda: sparse.attend(query, slots, lens), repeats=args.repeats) * 1e3
    step_ms = median_time(lambda: sparse.step(query), repeats=args.repeats) * 1e3
    out = sparse.step(query)
    rel_err = float((out.float() - dense_out.float()).norm() / dense_out.float().norm())
    label = f"{used}@{args.budget}" + ("" if used == args.selector else f" (stand-in for {args.selector})")
    rows.append({"context": n, "policy": label, "step_ms": step_ms, "vs_dense": step_ms / dense_ms,
                 "select_ms": select_ms, "load_ms": load_ms, "attend_ms": attend_ms,
                 "pages_loaded": int((page_ids >= 0).sum()), "prefill_s": prefill_s,
                 "rel_err_vs_dense": rel_err, "kernel": backend.name, "selector_error": error})
    log(f"  {n}: {label} {step_ms:.2f} ms (select {select_ms:.2f}, load {load_ms:.2f}, "
        f"attend {attend_ms:.2f}); vs dense {step_ms / dense_ms:.3f}, rel err {rel_err:.3f}")
    return rows


def plot(results: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for policy in dict.fromkeys(r["policy"] for r in results):
        pts = [(r["context"], r["step_ms"]) for r in results if r["policy"] == policy]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=policy)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("context (tokens)")
    ax.set_ylabel("decode step, one layer (ms)")
    ax.set_title("decode step time vs context")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def check(args: argparse.Namespace) -> tuple[list[int], torch.device]:
    """Every flag, before any tensor is made: the contexts and the device."""
    from icecache.bench import checks
    from icecache.eval.checks import check_threads, resolve_device

    contexts = checks.int_list(args.contexts, "--contexts")
    checks.at_least(args, {"--budget": 1, "--kv-heads": 1, "--group": 1, "--head-dim": 1, "--repeats": 1,
                           "--seed": 0})
    checks.power_of_two(args.page_size, "--page-size")
    check_threads(args.threads)
    device = resolve_device(args.device)
    # NOTE: names are checked here: the fallback is for a registered selector that cannot be built
    for name in (args.selector, args.fallback_selector):
        checks.registered("selector", name)
    checks.registered("kernel", args.kernel)
    config = CacheConfig(budget=args.budget, page_size=args.page_size)  # budget vs sink + window
    if args.selector_options:  # one selector built (no keys yet): options that do not fit fail now
        from icecache.core.errors import ConfigError, message_of
        from icecache.core.policy import compose_policy

        try:
            compose_policy(selector=args.selector, config=config, options={"selector": args.selector_options}
                           ).make_selector(config.dense_layers)
        except (TypeError, ValueError) as exc:
            cause = exc.__cause__ if isinstance(exc, ConfigError) and exc.__cause__ else exc
            raise ConfigError(f"--selector-options do not fit the {args.selector!r} selector: "
                              f"{message_of(cause)}") from None
    # keys, values, their clustered source and the host pool: about 4 copies of one layer's KV
    checks.fits_memory(4 * 2 * max(contexts) * args.kv_heads * args.head_dim * 4,
                       f"--contexts {max(contexts)} with {args.kv_heads} KV heads of {args.head_dim}", device)
    return contexts, device


def main(args: argparse.Namespace) -> int:
    contexts, device = check(args)
    torch.set_num_threads(args.threads)
    print(f"decode step, one layer: {args.kv_heads} KV heads, GQA {args.group}, D={args.head_dim}, "
          f"batch 1, budget {args.budget}, device {device}, {torch.get_num_threads()} threads", flush=True)
    results: list[dict[str, Any]] = []
    for n in contexts:
        results.extend(run_context(n, args, device, lambda m: print(m, flush=True)))
    print(format_table(results, ["context", "policy", "step_ms", "vs_dense", "select_ms", "load_ms",
                                 "attend_ms", "rel_err_vs_dense"]))
    payload = {"benchmark": "decode", "kv_heads": args.kv_heads, "group": args.group,
               "head_dim": args.head_dim, "budget": args.budget, "page_size": args.page_size,
               "selector": args.selector, "selector_options": args.selector_options or {},
               "device": str(device), "threads": torch.get_num_threads(),
               "results": results}
    if args.json:
        write_json(args.json, payload)
        png = Path(args.json).with_suffix(".png")
        try:
            plot(results, png)
            print(f"wrote {args.json} and {png}")
        except ImportError as exc:  # matplotlib is optional (extra "plot")
            print(f"wrote {args.json}; no plot ({exc})")
    return 0
