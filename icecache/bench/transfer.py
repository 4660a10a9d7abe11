"""Bulk page moves between tiers: host -> device loads against memcpy and per-page copies, disk reads.

Ratios are measured in one run (medians over repeats):

* ``bulk_vs_memcpy``: bandwidth of ``TieredStore.load`` of ``--pages`` scattered host pages into free
  device slots, over one plain contiguous copy of the same bytes (pinned host -> device on CUDA);
  ``bulk_vs_memcpy_fragmented`` is the same load when the free device slots are scattered (the
  staging + scatter path).
* ``bulk_vs_per_page``: the bulk load against one copy per page.
* ``bulk_vs_raw``: the bare data movement of a load (``gather_copy_raw``: one ``index_select``, one
  copy, no bookkeeping) over the store's load, after the same untimed setup: 1 minus the share of the
  load that is the store's bookkeeping (target 0.9); ``*_cpu`` ratios use this process's CPU time
  (``time.process_time``; on the CPU stand-in only), which leaves out time spent waiting for a core on
  a shared machine.
* ``fused_vs_protocol``: the same bulk load with ``store.fused_load = False`` (the two-phase tier
  protocol's bookkeeping) over the default fused path.
* ``disk_clustered_vs_sequential``: ``DiskTier.read`` of pages in contiguous runs (``--run-length``)
  over one sequential ``preadv`` of as many bytes; ``disk_clustered_vs_scattered``: against as many
  scattered single pages. Cold reads (the headline): before each repeat the file is fsynced and
  dropped from the page cache (``POSIX_FADV_DONTNEED``). ``*_warm``: page cache hits. Disk reads
  include checksum verification; ``checksum_*`` times each checksum alone over ``--pages`` records.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import torch

from icecache.bench.report import format_table, median_time, median_times, median_times_paired, write_json
from icecache.core.config import CacheConfig, TierConfig, to_dtype
from icecache.core.errors import ConfigError
from icecache.storage.device import DeviceTier
from icecache.storage.disk import DiskTier
from icecache.storage.host import HostTier, can_pin
from icecache.storage.layout import PageSpec
from icecache.storage.store import TieredStore

TARGETS = {"bulk_vs_memcpy": 0.8, "bulk_vs_raw": 0.9, "disk_clustered_vs_sequential": 0.7}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", default=None, help="write results here")
    parser.add_argument("--pages", type=int, default=256, help="pages per load (default 256)")
    parser.add_argument("--host-pages", type=int, default=8192, help="pages in the host tier")
    parser.add_argument("--disk-pages", type=int, default=8192, help="pages in the disk file")
    parser.add_argument("--page-size", type=int, default=16)
    parser.add_argument("--head-dim", type=int, default=128)
    parser.add_argument("--dtype", default="fp16", help="fp16, bf16 or fp32")
    parser.add_argument("--run-length", type=int, default=16, help="pages per contiguous run on disk")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda[:i]")
    parser.add_argument("--disk-dir", default=None, help="directory for the disk tier (default: a temp dir)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sweep-page-tokens", default="16,64,256",
                        help="page sizes (tokens) for bulk_vs_memcpy at the same bytes per load ('' skips)")


def _median_ms(fn: Callable[[], Any], *, setup: Callable[[], Any] | None = None, repeats: int,
               cuda: bool) -> float:
    """Median milliseconds of ``fn()`` (``setup()`` runs untimed before each call; one warm-up)."""
    return 1e3 * median_time(fn, repeats=repeats, warmup=1, sync=cuda, setup=setup)


def _timed(name: str, fn: Callable[[], Any], t: dict[str, float], cpu: dict[str, float], *,
           setup: Callable[[], Any] | None = None, repeats: int, cuda: bool) -> None:
    """``t[name]`` = median wall ms of ``fn()`` and ``cpu[name]`` = median CPU ms, from the same calls."""
    wall, used = median_times(fn, repeats=repeats, warmup=1, sync=cuda, setup=setup)
    t[name], cpu[name] = 1e3 * wall, 1e3 * used


def _fill(store: TieredStore, n: int, gen: torch.Generator, chunk: int = 1024) -> torch.Tensor:
    spec = store.spec
    ids = store.allocate(n)
    for a in range(0, n, chunk):
        sub = ids[a:a + chunk]
        k = torch.randn(sub.numel(), spec.page_size, spec.head_dim, generator=gen).to(spec.dtype)
        v = torch.randn(sub.numel(), spec.page_size, spec.head_dim, generator=gen).to(spec.dtype)
        store.write_pages(sub, k, v)
    return ids


def bench_host_to_device(spec: PageSpec, device: torch.device, args: argparse.Namespace,
                         gen: torch.Generator) -> tuple[dict[str, float], dict[str, Any]]:
    """Every repeat moves a fresh random choice of pages (or, for memcpy, a fresh random region of the
    host pool), so no variant reads bytes that an earlier repeat left in the CPU caches."""
    m, cuda = args.pages, device.type == "cuda"
    device_tier = DeviceTier(name="device", spec=spec, capacity=2 * m, device=device)
    host_tier = HostTier(name="host", spec=spec, capacity=args.host_pages, pin_memory=can_pin())
    store = TieredStore([device_tier, host_tier])
    ids = _fill(store, args.host_pages, gen)
    pick = {"chosen": ids[:m]}

    def choose() -> torch.Tensor:
        pick["chosen"] = ids[torch.randperm(ids.numel(), generator=gen)[:m]]  # scattered in the host tier
        return pick["chosen"]

    def empty_device() -> None:
        store.evict(ids)
        choose()

    def fragment_device() -> None:
        store.evict(ids)
        chosen = choose()
        others = ids[~torch.isin(ids, chosen)][torch.randperm(ids.numel() - m, generator=gen)[: 2 * m]]
        store.load(others)
        store.evict(others[::2])  # free slots 0, 2, 4, ...: no contiguous run

    def load() -> None:
        store.load(pick["chosen"])

    def loaded_correctly() -> bool:
        slots = store.load(pick["chosen"])
        expected_k, expected_v, _ = store.read_pages(pick["chosen"])
        return torch.equal(store.device_pool.k[slots].cpu(), expected_k) and \
            torch.equal(store.device_pool.v[slots].cpu(), expected_v)

    default = store.transfer  # what ``transfer="auto"`` picked here
    t: dict[str, float] = {}
    cpu: dict[str, float] = {}
    via: dict[str, str] = {}
    ok = True
    raw, raw_setup = _raw_gather(spec, host_tier, device_tier, empty_device, pick, cuda)
    for mode in ("staged", "uva") if cuda else ("staged",):
        store.transfer = mode
        if mode == default:
            # NOTE: in turns with the bare gather + copy (same setup), so that bulk_vs_raw compares the
            # two under the same load from other jobs
            paired = median_times_paired({"bulk": (load, empty_device), "raw": (raw, raw_setup)},
                                         repeats=args.repeats, sync=cuda)
            for key, name in (("bulk", f"bulk_load_{mode}"), ("raw", "gather_copy_raw")):
                t[name], cpu[name] = 1e3 * paired[key][0], 1e3 * paired[key][1]
        else:
            _timed(f"bulk_load_{mode}", load, t, cpu, setup=empty_device, repeats=args.repeats, cuda=cuda)
        via[mode] = store.stats().last["load"].via
        ok = ok and loaded_correctly()
        t[f"bulk_load_{mode}_fragmented"] = _median_ms(load, setup=fragment_device, repeats=args.repeats,
                                                       cuda=cuda)
        via[f"{mode}_fragmented"] = store.stats().last["load"].via
        ok = ok and loaded_correctly()
    store.transfer = default
    store.fused_load = False  # the same loads through the two-phase protocol: what the fused path saves
    t["bulk_load_protocol"] = _median_ms(load, setup=empty_device, repeats=args.repeats, cuda=cuda)
    t["load_resident_protocol"] = _median_ms(load, repeats=args.repeats, cuda=cuda)
    store.fused_load = True
    t["bulk_load_fragmented"] = t[f"bulk_load_{default}_fragmented"]

    dst = spec.empty(m, device=device)
    region = {"src": host_tier.data[:m]}

    def choose_region() -> None:
        start = int(torch.randint(0, args.host_pages - m + 1, (1,), generator=gen))
        region["src"] = host_tier.data[start:start + m]  # contiguous; pinned on CUDA

    _timed("memcpy", lambda: dst.copy_(region["src"], non_blocking=True), t, cpu, setup=choose_region,
           repeats=args.repeats, cuda=cuda)

    host_data, dev_data = host_tier.data, device_tier.data
    pairs = {"slots": []}

    def choose_pages() -> None:
        chosen = choose()
        pairs["slots"] = list(zip(host_tier.slot_of(chosen).tolist(), range(m), strict=True))

    def per_page() -> None:
        for h, d in pairs["slots"]:  # the baseline: one copy per page
            dev_data[d].copy_(host_data[h], non_blocking=True)

    t["per_page"] = _median_ms(per_page, setup=choose_pages, repeats=args.repeats, cuda=cuda)
    _timed("load_1_page", lambda: store.load(pick["chosen"][:1]), t, cpu, setup=empty_device,
           repeats=args.repeats, cuda=cuda)
    _timed("load_resident", load, t, cpu, repeats=args.repeats, cuda=cuda)  # bookkeeping alone
    if cuda:
        t["uva_raw"] = _uva_raw(host_tier, device_tier, raw_setup, pick, args)
    t["bulk_load"] = t[f"bulk_load_{default}"]
    cpu["bulk_load"] = cpu[f"bulk_load_{default}"]
    info = {"loaded_pages_match": ok, "transfer": default, "load_via": via,
            **({"times_cpu_ms": cpu} if not cuda else {}),
            "bulk_load_via": via[default], "fragmented_load_via": via[f"{default}_fragmented"],
            "host_pinned": host_tier.pin_memory,
            "device_tier": device_tier.stats().as_dict()}
    store.close()
    return t, info


def _raw_gather(spec: PageSpec, host_tier: HostTier, device_tier: DeviceTier, reset: Callable[[], None],
                pick: dict[str, torch.Tensor], cuda: bool) -> tuple[Callable[[], None], Callable[[], None]]:
    """``(fn, setup)``: the data movement of a load without the store's bookkeeping, one ``index_select``
    into (pinned) staging and one copy into a run of device slots. ``setup`` runs ``reset``, the load's
    own untimed setup (it empties the device tier and picks the pages), so the two differ only by the
    store's work. NOTE: it writes device slots behind the store's back, free ones only (reset empties
    the tier first): nothing the store holds is touched."""
    m = pick["chosen"].numel()
    rows = {"idx": host_tier.slot_of(pick["chosen"])}
    staging = spec.empty(m, pin_memory=cuda)
    region = device_tier.data[:m]

    def setup() -> None:
        reset()
        rows["idx"] = host_tier.slot_of(pick["chosen"])

    def raw() -> None:
        if cuda:
            torch.index_select(host_tier.data, 0, rows["idx"], out=staging)
            region.copy_(staging, non_blocking=True)
        else:
            torch.index_select(host_tier.data, 0, rows["idx"], out=region)

    return raw, setup


def _uva_raw(host_tier: HostTier, device_tier: DeviceTier, setup: Callable[[], None],
             pick: dict[str, torch.Tensor], args: argparse.Namespace) -> float:
    """Median ms of the UVA kernel alone over the pages ``setup`` picks (CUDA)."""
    from icecache.storage.uva import copy_rows

    m = args.pages
    idx = torch.empty(m, 2, dtype=torch.int64, pin_memory=True)

    def choose_pairs() -> None:
        setup()
        idx[:, 0] = host_tier.slot_of(pick["chosen"])
        idx[:, 1] = torch.arange(m)

    return _median_ms(lambda: copy_rows(host_tier.data, device_tier.data, idx), setup=choose_pairs,
                      repeats=args.repeats, cuda=True)


def bench_page_sizes(spec: PageSpec, device: torch.device, args: argparse.Namespace, gen: torch.Generator
                     ) -> dict[str, float]:
    """``bulk_vs_memcpy`` when the same bytes come in fewer, larger pages (the pool keeps its bytes):
    how much of the gap is per-page cost (scattered rows, bookkeeping) rather than bytes."""
    tokens = _sweep(args.sweep_page_tokens)
    return {str(t): _bulk_vs_memcpy_at(t, spec, device, args, gen) for t in tokens}


def _bulk_vs_memcpy_at(tokens: int, spec: PageSpec, device: torch.device, args: argparse.Namespace,
                       gen: torch.Generator) -> float:
    cuda = device.type == "cuda"
    sized = PageSpec(page_size=tokens, head_dim=spec.head_dim, dtype=spec.dtype)
    m = max(1, args.pages * spec.page_size // tokens)
    pool = max(2 * m, args.host_pages * spec.page_size // tokens)
    store = TieredStore([DeviceTier(name="device", spec=sized, capacity=2 * m, device=device),
                         HostTier(name="host", spec=sized, capacity=pool, pin_memory=can_pin())])
    ids = _fill(store, pool, gen)
    pick = {"chosen": ids[:m], "start": 0}

    def choose() -> None:
        store.evict(ids)
        pick["chosen"] = ids[torch.randperm(pool, generator=gen)[:m]]
        pick["start"] = int(torch.randint(0, pool - m + 1, (1,), generator=gen))

    host, dst = store.backing[0].data, sized.empty(m, device=device)
    load = _median_ms(lambda: store.load(pick["chosen"]), setup=choose, repeats=args.repeats, cuda=cuda)
    memcpy = _median_ms(lambda: dst.copy_(host[pick["start"]:pick["start"] + m], non_blocking=True),
                        setup=choose, repeats=args.repeats, cuda=cuda)
    store.close()
    return memcpy / load


def bench_disk(spec: PageSpec, args: argparse.Namespace, gen: torch.Generator, directory: str
               ) -> tuple[dict[str, float], dict[str, Any]]:
    m, run = args.pages, max(1, min(args.run_length, args.pages))
    n = max(args.disk_pages, 4 * m)
    disk = DiskTier(name="disk", spec=spec, capacity=n, directory=directory)
    store = TieredStore([disk])
    _fill(store, n, gen)
    disk.flush()
    runs = m // run
    starts = torch.randperm(n // run, generator=gen)[:runs] * run
    clustered = (starts[:, None] + torch.arange(run)).flatten()  # [runs * run] slots in runs
    scattered = torch.randperm(n, generator=gen)[: clustered.numel()]
    count = clustered.numel()
    out = spec.empty(count)
    raw = out.view(torch.uint8).numpy().reshape(-1)
    nbytes = count * spec.page_nbytes
    fd = os.open(disk.path, os.O_RDONLY)
    offset = {"at": 0}

    def seq_setup() -> None:
        offset["at"] = int(torch.randint(0, n - count + 1, (1,), generator=gen)) * spec.page_nbytes

    def sequential() -> None:
        got = os.preadv(fd, [raw], offset["at"])
        assert got == nbytes, got

    def cold(setup: Callable[[], None] | None = None) -> Callable[[], None]:
        def both() -> None:
            disk.drop_page_cache()
            if setup is not None:
                setup()
        return both

    t: dict[str, float] = {}
    try:
        for label, make in (("cold", cold), ("warm", lambda s=None: s)):
            t[f"disk_clustered_{label}"] = _median_ms(lambda: disk.read(clustered, out=out),
                                                      setup=make(), repeats=args.repeats, cuda=False)
            t[f"disk_scattered_{label}"] = _median_ms(lambda: disk.read(scattered, out=out),
                                                      setup=make(), repeats=args.repeats, cuda=False)
            t[f"disk_sequential_{label}"] = _median_ms(sequential, setup=make(seq_setup),
                                                       repeats=args.repeats, cuda=False)
        t["disk_clustered_nohints_warm"] = _time_without_hints(disk, clustered, out, args.repeats)
    finally:
        os.close(fd)
        store.close()
    return t, {"disk_directory": directory, "disk_file_pages": n, "runs": runs, "run_length": run}


def bench_checksums(spec: PageSpec, args: argparse.Namespace, gen: torch.Generator) -> dict[str, float]:
    """Milliseconds of each disk checksum over ``--pages`` records (the default, ``pos64``, runs on
    every disk read and write)."""
    import numpy as np

    from icecache.storage.checksum import CHECKSUMS, page_keys

    records = torch.randn(args.pages, 2, spec.page_size, spec.head_dim, generator=gen).to(spec.dtype)
    ids = np.arange(args.pages, dtype=np.int64)
    keys = page_keys(ids, ids)
    return {f"checksum_{name}": _median_ms(lambda fn=fn: fn(records, keys), repeats=args.repeats, cuda=False)
            for name, fn in CHECKSUMS.items()}


def _time_without_hints(disk: DiskTier, slots: torch.Tensor, out: torch.Tensor, repeats: int) -> float:
    disk.read_hints = False
    try:
        return _median_ms(lambda: disk.read(slots, out=out), repeats=repeats, cuda=False)
    finally:
        disk.read_hints = True


def check_args(args: argparse.Namespace) -> tuple[torch.device, PageSpec]:
    """Every option checked before any memory is allocated; :class:`ConfigError` names the flag."""
    from icecache.eval.checks import check_disk_dir, resolve_device

    for flag in ("pages", "host_pages", "disk_pages", "head_dim", "run_length", "repeats"):
        value = getattr(args, flag)
        if value < 1:
            raise ConfigError(f"--{flag.replace('_', '-')} must be positive, got {value}")
    if args.threads is not None and args.threads < 1:
        raise ConfigError(f"--threads must be positive, got {args.threads}")
    if args.seed < 0:
        raise ConfigError(f"--seed must be non-negative, got {args.seed}")
    if args.host_pages < args.pages:
        raise ConfigError(f"--host-pages {args.host_pages} must hold at least --pages {args.pages} (the "
                          "pages of one load are drawn from the host tier)")
    for tokens in [args.page_size, *_sweep(args.sweep_page_tokens)]:
        if tokens < 1 or tokens & (tokens - 1):
            raise ConfigError(f"page sizes must be powers of two (--page-size, --sweep-page-tokens), got "
                              f"{tokens}")
    device = resolve_device(args.device)
    try:
        dtype = to_dtype(args.dtype)
    except ConfigError:
        raise ConfigError(f"--dtype {args.dtype!r} is not supported; use fp16, bf16 or fp32") from None
    spec = PageSpec(page_size=args.page_size, head_dim=args.head_dim, dtype=dtype)
    # NOTE: built through the config types the store uses, so a bad size fails like it would there.
    CacheConfig(page_size=args.page_size, dtype=spec.dtype, tiers=TierConfig(device_pages=2 * args.pages))
    check_disk_dir(args.disk_dir)
    _check_room(args, spec)
    return device, spec


def _sweep(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--sweep-page-tokens must be comma-separated integers, got {text!r}") from None


def _check_room(args: argparse.Namespace, spec: PageSpec) -> None:
    """The host pools fit in memory and the disk file on its file system (else an allocator traceback
    or ENOSPC halfway through)."""
    memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    host = (args.host_pages + 4 * args.pages) * spec.page_nbytes  # host tier, staging, device stand-in
    if host > memory // 2:
        raise ConfigError(f"--host-pages {args.host_pages} x {spec.page_nbytes} B pages need "
                          f"{host / 2**30:.1f} GiB, more than half of this machine's "
                          f"{memory / 2**30:.1f} GiB")
    disk = max(args.disk_pages, 4 * args.pages) * spec.page_nbytes
    free = shutil.disk_usage(args.disk_dir or tempfile.gettempdir()).free
    if disk > free:
        raise ConfigError(f"--disk-pages {args.disk_pages} x {spec.page_nbytes} B pages need "
                          f"{disk / 2**30:.2f} GiB; {args.disk_dir or tempfile.gettempdir()!r} has "
                          f"{free / 2**30:.2f} GiB free")


def _cpu_ratios(cpu: dict[str, float] | None) -> dict[str, float]:
    """The headline ratios in CPU time (the CPU stand-in only: on CUDA the host time is not the move's)."""
    if not cpu:
        return {}
    return {"bulk_vs_raw_cpu": cpu["gather_copy_raw"] / cpu["bulk_load"],
            "bulk_vs_memcpy_cpu": cpu["memcpy"] / cpu["bulk_load"],
            "raw_gather_copy_vs_memcpy_cpu": cpu["memcpy"] / cpu["gather_copy_raw"]}


def main(args: argparse.Namespace) -> int:
    device, spec = check_args(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    gen = torch.Generator().manual_seed(args.seed)
    times, info = bench_host_to_device(spec, device, args, gen)
    with tempfile.TemporaryDirectory(prefix="icecache-bench-", dir=args.disk_dir) as directory:
        disk_times, disk_info = bench_disk(spec, args, gen, directory)
    times.update(disk_times)
    times.update(bench_checksums(spec, args, gen))
    by_page = bench_page_sizes(spec, device, args, gen)
    nbytes = args.pages * spec.page_nbytes
    disk_bytes = (args.pages // max(1, min(args.run_length, args.pages))) \
        * max(1, min(args.run_length, args.pages)) * spec.page_nbytes
    ratios = {
        "bulk_vs_memcpy": times["memcpy"] / times["bulk_load"],
        "bulk_vs_memcpy_fragmented": times["memcpy"] / times["bulk_load_fragmented"],
        "bulk_vs_per_page": times["per_page"] / times["bulk_load"],
        "fused_vs_protocol": times["bulk_load_protocol"] / times["bulk_load"],
        "raw_gather_copy_vs_memcpy": times["memcpy"] / times["gather_copy_raw"],
        "bulk_vs_raw": times["gather_copy_raw"] / times["bulk_load"],
        **_cpu_ratios(info.get("times_cpu_ms")),
        **({"raw_uva_vs_memcpy": times["memcpy"] / times["uva_raw"]} if "uva_raw" in times else {}),
        "bulk_staged_vs_memcpy": times["memcpy"] / times["bulk_load_staged"],
        **({"bulk_uva_vs_memcpy": times["memcpy"] / times["bulk_load_uva"],
            "bulk_uva_vs_memcpy_fragmented": times["memcpy"] / times["bulk_load_uva_fragmented"],
            "bulk_uva_vs_per_page": times["per_page"] / times["bulk_load_uva"]} if "bulk_load_uva" in times
           else {}),
        "disk_clustered_vs_sequential": times["disk_sequential_cold"] / times["disk_clustered_cold"],
        "disk_clustered_vs_scattered": times["disk_scattered_cold"] / times["disk_clustered_cold"],
        "disk_clustered_vs_sequential_warm": times["disk_sequential_warm"] / times["disk_clustered_warm"],
        "disk_clustered_vs_scattered_warm": times["disk_scattered_warm"] / times["disk_clustered_warm"],
    }
    rows = []
    for name, ms in times.items():
        if name in ("bulk_load", "bulk_load_fragmented"):
            continue  # aliases of the default transfer's rows
        size = disk_bytes if name.startswith("disk") else nbytes  # checksums: over --pages records
        size = spec.page_nbytes if name == "load_1_page" else size
        size = 0 if name.startswith("load_resident") else size
        rows.append({"measure": name, "median_ms": ms, "cpu_ms": info.get("times_cpu_ms", {}).get(name, ""),
                     "GB/s": size / ms / 1e6})
    print(f"device {device} ({'CPU stand-in' if device.type == 'cpu' else 'CUDA'}), {args.pages} pages of "
          f"{spec.page_size}x{spec.head_dim} {spec.dtype} K+V = {spec.page_nbytes} B/page, "
          f"{torch.get_num_threads()} threads")
    print(format_table(rows, ["measure", "median_ms", "cpu_ms", "GB/s"]))
    print()
    print(format_table([{"ratio": k, "value": v, "target": TARGETS.get(k, "")} for k, v in ratios.items()],
                       ["ratio", "value", "target"]))
    if by_page:
        print()
        print(format_table([{"page tokens": k, "page bytes": int(k) * spec.page_nbytes // spec.page_size,
                             "pages per load": max(1, args.pages * spec.page_size // int(k)),
                             "bulk_vs_memcpy": v} for k, v in by_page.items()],
                           ["page tokens", "page bytes", "pages per load", "bulk_vs_memcpy"]))
    payload = {
        "benchmark": "transfer",
        "device": str(device),
        "device_is_cpu_standin": device.type == "cpu",
        "config": {"pages": args.pages, "host_pages": args.host_pages, "disk_pages": args.disk_pages,
                   "page_size": spec.page_size, "head_dim": spec.head_dim, "dtype": str(spec.dtype),
                   "page_nbytes": spec.page_nbytes, "run_length": args.run_length, "repeats": args.repeats,
                   "threads": torch.get_num_threads()},
        "disk_reads": "cold = fsync and POSIX_FADV_DONTNEED before each repeat; warm = page cache hits; "
                      "DiskTier.read is one preadv per contiguous run and includes checksum verification",
        **ratios,
        "bulk_vs_memcpy_by_page_tokens": by_page,
        "targets": TARGETS,
        "times_ms": times,
        **info,
        **disk_info,
    }
    write_json(args.json, payload)
    return 0
