"""What ``icecache run`` and ``icecache eval`` share: arguments, input checks, model loading.

Every user-input check runs before the model's weights load and before anything is written.
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from attrs import frozen

from icecache.core.config import TierConfig
from icecache.core.errors import ConfigError, message_of
from icecache.eval.checks import check_counts, check_disk_dir, check_dtype, check_tokens, resolve_device
from icecache.eval.files import check_output_dir
from icecache.eval.policies import (
    PolicySpec,
    build_policy,
    check_capacities,
    check_device_room,
    check_tier_stack,
    options_argument,
    parse_policies,
)

#: answer tokens reserved beyond the context when checking it against the model's positions
ANSWER_RESERVE = 64


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None,
                        help="an embedded model's short name (smollm2-135m-instruct, the default; "
                             "gemma3-270m with the gemma extra), or a local checkpoint directory or .gguf "
                             "file of a supported decoder LM")
    parser.add_argument("--device", default="auto", help="auto (cuda if present), cpu, cuda, cuda:N")
    parser.add_argument("--dtype", default=None,
                        help="float32, float16 or bfloat16 (default float32 on CPU, bfloat16 on CUDA)")
    parser.add_argument("--batch-size", type=int, default=4, help="samples decoded together (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="task generation seed (default 0)")
    parser.add_argument("--sink", type=int, default=None, help="sink tokens per KV head (default 4)")
    parser.add_argument("--window", type=int, default=None,
                        help="recent-window tokens per KV head (default min(60, budget/4 - sink))")
    parser.add_argument("--device-pages", type=int, default=None, help="device-tier capacity in pages")
    parser.add_argument("--host-pages", type=int, default=None, help="host-tier capacity in pages")
    parser.add_argument("--disk-dir", default=None,
                        help="directory of the disk tier (enables it: pages beyond --host-pages spill there)")
    parser.add_argument("--tiers", default=None, type=_tier_names,
                        help="comma-separated storage tiers by registered name, in order, the first one the "
                             "device cache (default device,host, plus disk with --disk-dir); "
                             "`icecache plugins` lists them")
    parser.add_argument("--tier-options", type=lambda t: options_argument(t, "--tier-options"), default=None,
                        help="JSON object (or file): tier name -> its options, e.g. "
                             "'{\"device\": {\"eviction\": \"lfu\"}, \"host\": {\"pin_memory\": false}}'")
    parser.add_argument("--eviction", default=None,
                        help="eviction policy of every tier without its own: lru (default), fifo, lfu, mru "
                             "or a plugin's")
    parser.add_argument("--budget-policy", default=None,
                        help="how the budget is spread over layers and KV heads: uniform (default), pyramid "
                             "(PyramidKV), adakv (Ada-KV), per-layer, or a plugin's")
    parser.add_argument("--budget-options", type=_budget_options, default=None,
                        help="JSON object (or file): the budget policy's options, e.g. '{\"taper\": 0.3}'")
    parser.add_argument("--page-dtype", default=None,
                        help="float32, float16 or bfloat16: the dtype pages are stored in (default: the "
                             "model's KV dtype)")
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: decode runs small ops, where more threads "
                             "mostly add synchronization, and shared machines oversubscribe)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def add_snapshot_argument(parser: argparse.ArgumentParser) -> None:
    """``--snapshot-dir`` (``run`` and ``eval``: the commands that prefill through
    :func:`~icecache.eval.runner.evaluate`)."""
    parser.add_argument("--snapshot-dir", default=None,
                        help="keep each batch's prefill here and reuse it when a later run (another process, "
                             "a sweep shard) prefills the same prompts with the same model (created if "
                             "missing; see docs/running.md)")


def _tier_names(text: str) -> tuple[str, ...]:
    names = tuple(n.strip() for n in text.split(","))
    if not all(names):
        raise argparse.ArgumentTypeError(f"--tiers must be comma-separated tier names, got {text!r}")
    return names


def _budget_options(text: str) -> dict[str, Any]:
    return options_argument(f'{{"budget": {text}}}' if text.lstrip().startswith("{") else text,
                            "--budget-options").get("budget", {})


@frozen(kw_only=True)
class Prepared:
    """Checked inputs: the checkpoint directory, its config, the device and the policies."""

    checkpoint: Any
    model_config: Any
    device: torch.device
    dtype: str
    specs: list[PolicySpec]
    policy_kwargs: dict[str, Any]
    threads: int = 1
    snapshot_dir: str | None = None


def prepare(args: argparse.Namespace, policies: str, budget: int | None, context: int | None, *,
            options: dict[str, dict[str, Any]] | None = None) -> Prepared:
    """Validate policies (and their ``options``), budget, model path and context against the model
    (weights not loaded)."""
    from icecache.integrations.hf.loader import check_tokenizer, read_model_config, resolve_checkpoint

    specs = parse_policies(policies, budget, options=options)
    check_counts(args)
    check_dtype(args.dtype)
    check_dtype(getattr(args, "page_dtype", None), "--page-dtype")
    device = resolve_device(args.device)
    dtype = args.dtype or ("bfloat16" if device.type == "cuda" else "float32")
    check_disk_dir(args.disk_dir)
    snapshot_dir = getattr(args, "snapshot_dir", None)
    if snapshot_dir is not None:
        check_output_dir(snapshot_dir, "--snapshot-dir")
    checkpoint = resolve_checkpoint(args.model)
    model_config = read_model_config(checkpoint)
    check_tokenizer(checkpoint)
    positions = getattr(model_config, "max_position_embeddings", None)
    check_tokens(specs, args, positions)
    if context is not None:
        if context <= 0:
            raise ConfigError(f"--context must be a positive number of tokens, got {context}")
        if positions is not None and context + ANSWER_RESERVE > positions:
            raise ConfigError(
                f"--context {context} is longer than the model allows: it has {positions} positions and "
                f"{ANSWER_RESERVE} are kept for the answer (at most {positions - ANSWER_RESERVE})")
    eviction = getattr(args, "eviction", None)
    tiers = TierConfig(device_pages=args.device_pages, host_pages=args.host_pages, disk_dir=args.disk_dir,
                       **({} if eviction is None else {"eviction": eviction}))
    kwargs = {"sink_tokens": args.sink, "window_tokens": args.window, "tiers": tiers,
              "page_dtype": getattr(args, "page_dtype", None), "tier_names": getattr(args, "tiers", None),
              "tier_options": getattr(args, "tier_options", None),
              "budget_policy": getattr(args, "budget_policy", None),
              "budget_options": getattr(args, "budget_options", None)}
    for spec in specs:  # NOTE: builds each CacheConfig now, so a budget below sink + window fails early
        policy = build_policy(spec, model_config, device=device, **kwargs)
        if spec.options:  # and one selector, so options that do not fit fail before any work
            try:
                policy.make_selector(policy.config.dense_layers)
            except (TypeError, ValueError) as exc:
                cause = exc.__cause__ if isinstance(exc, ConfigError) and exc.__cause__ else exc
                raise ConfigError(f"--policy-options for {spec.name!r} do not fit the {spec.selector!r} "
                                  f"selector: {message_of(cause)}") from None
        check_tier_stack(policy)
        check_device_room(policy)
        if context is not None:  # NOTE: after the options check: it builds a selector too
            check_capacities(policy, batch=args.batch_size, context=context,
                             num_layers=model_config.num_hidden_layers)
    return Prepared(checkpoint=checkpoint, model_config=model_config, device=device, dtype=dtype, specs=specs,
                    policy_kwargs=kwargs, threads=args.threads, snapshot_dir=snapshot_dir)


def load(prepared: Prepared) -> tuple[Any, Any]:
    """Load the checked model with the ``"icecache"`` attention implementation."""
    from icecache.integrations.hf.attention import use_icecache
    from icecache.integrations.hf.loader import load_model

    # NOTE: measured on this project's 2-core machines under load: one thread made a decode step ~10x
    # faster and a prefill ~2.5x faster than two (OpenMP synchronization under oversubscription).
    torch.set_num_threads(prepared.threads)
    model, tokenizer = load_model(prepared.checkpoint, dtype=prepared.dtype, device=str(prepared.device))
    use_icecache(model)
    return model, tokenizer


def progress_bar(total: int, enabled: bool, desc: str):
    """A tqdm bar (stderr) and the callback :func:`~icecache.eval.runner.evaluate` wants."""
    from tqdm import tqdm

    bar = tqdm(total=total, disable=not enabled, desc=desc, unit="decode", dynamic_ncols=True)

    def update(n: int, what: str) -> None:
        bar.set_postfix_str(what)
        bar.update(n)

    return bar, update


def snapshot_store(prepared: Prepared, command: str) -> Any:
    """The :class:`~icecache.integrations.hf.snapshot_store.SnapshotStore` of ``--snapshot-dir`` (its
    warnings printed as ``icecache COMMAND: warning: ...``, above a progress bar), or ``None``."""
    if prepared.snapshot_dir is None:
        return None
    import sys

    from tqdm import tqdm

    from icecache.integrations.hf.snapshot_store import SnapshotStore

    def warn(message: str) -> None:
        tqdm.write(f"icecache {command}: warning: {message}", file=sys.stderr)

    return SnapshotStore(prepared.snapshot_dir, warn=warn)
