"""Long-generation fidelity: every policy teacher-forced through the same long continuation vs full KV.

``icecache bench continuation --json out.json`` cuts documents (the suite's ``pydoc_data`` prose, or
``--docs-file`` JSONL of ``{"id", "text"}``) into a prompt of ``--prompt-tokens`` and a continuation of
``--continuation-tokens``; prefills each batch of prompts once; then decodes the continuation one token per
step under full KV (the reference) and under each policy, through the same :class:`IceCache` decode path
``icecache run/eval`` use (pages inserted, index updated, tiers in use). Per policy: extra NLL per token vs
full, mean KL(full || policy), top-1 agreement with full, each per segment of the continuation (does it
drift as the output grows?), the step-time split; with ``--free-tokens N`` also greedy generation of N
tokens: tokens until the first divergence from full KV's own greedy output and the fraction of positions
that agree. See docs/benchmarks.md ("Long generation").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from icecache.eval.policies import options_argument
    from icecache.eval.session import add_model_arguments

    parser.add_argument("--policy", default="icecache,quest,streamingllm,oracle,quest@1024",
                        help="comma-separated policies NAME or NAME@BUDGET, scored against full KV "
                             "(default icecache,quest,streamingllm,oracle,quest@1024)")
    parser.add_argument("--budget", type=int, default=256,
                        help="tokens per KV head, sinks and window included, for policies without @N (256)")
    parser.add_argument("--policy-options", type=options_argument, default=None,
                        help="JSON object (or file): selector or selector:variant -> selector options")
    parser.add_argument("--prompt-tokens", type=int, default=4096, help="prompt length N (default 4096)")
    parser.add_argument("--continuation-tokens", type=int, default=1024,
                        help="continuation length M, teacher-forced (default 1024, at most 2048)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--docs", type=int, default=4,
                        help="number of built-in documents (pydoc_data prose, default 4)")
    source.add_argument("--docs-file", default=None,
                        help="JSONL file, one {\"id\": ..., \"text\": ...} per line; every text must hold "
                             "prompt + continuation + 1 tokens")
    parser.add_argument("--segments", type=int, default=4,
                        help="segments of the continuation reported apart (default 4: quarters)")
    parser.add_argument("--free-tokens", type=int, default=0,
                        help="also generate this many tokens greedily per policy and compare with full KV's "
                             "greedy output (default 0: off)")
    parser.add_argument("--json", type=Path, default=None,
                        help="write results here (rewritten after every batch)")
    parser.add_argument("--plot", type=Path, default=None,
                        help="KL-vs-position plot (default: the JSON path with .png)")
    add_model_arguments(parser)


def main(args: argparse.Namespace) -> int:
    from icecache.core.errors import IceCacheError

    try:
        return _main(args)
    except IceCacheError as exc:
        print(f"icecache bench continuation: error: {exc}", file=sys.stderr)
        return 2


#: built-in documents at most (each is built and tokenized whole before the first batch)
MAX_DOCS = 256


def _check(args: argparse.Namespace) -> Any:
    """Every user input, before the model's weights load."""
    from icecache.bench.continuation.documents import check_lengths, load_docs_file
    from icecache.core.errors import ConfigError
    from icecache.eval.policies import build_policy, check_capacities
    from icecache.eval.session import prepare

    if args.segments < 1:
        raise ConfigError(f"--segments must be positive, got {args.segments}")
    if args.segments > args.continuation_tokens:
        raise ConfigError(f"--segments {args.segments} is more than the {args.continuation_tokens} "
                          "continuation tokens")
    if args.free_tokens < 0:
        raise ConfigError(f"--free-tokens must be non-negative, got {args.free_tokens}")
    docs = load_docs_file(args.docs_file) if args.docs_file is not None else None
    if docs is None and args.docs < 1:
        raise ConfigError(f"--docs must be a positive number of documents, got {args.docs}")
    if docs is None and args.docs > MAX_DOCS:  # NOTE: each is the whole ~50k-token prose pool, tokenized
        raise ConfigError(f"--docs {args.docs} is more than {MAX_DOCS} built-in documents; give more with "
                          "--docs-file")
    prepared = prepare(args, args.policy, args.budget, None, options=args.policy_options)
    positions = getattr(prepared.model_config, "max_position_embeddings", None)
    check_lengths(args.prompt_tokens, args.continuation_tokens, positions)
    if positions is not None and args.prompt_tokens + args.free_tokens > positions:
        raise ConfigError(f"--prompt-tokens {args.prompt_tokens} + --free-tokens {args.free_tokens} is more "
                          f"than the model's {positions} positions")
    context = args.prompt_tokens + max(args.continuation_tokens + 1, args.free_tokens)
    for spec in prepared.specs:
        policy = build_policy(spec, prepared.model_config, device=prepared.device, **prepared.policy_kwargs)
        check_capacities(policy, batch=args.batch_size, context=context,
                         num_layers=prepared.model_config.num_hidden_layers)
    return prepared, docs


def _main(args: argparse.Namespace) -> int:
    from icecache.bench.continuation.documents import builtin_documents, split_documents
    from icecache.bench.continuation.runner import run_continuation
    from icecache.bench.continuation.summary import save_plot, table
    from icecache.bench.report import write_json
    from icecache.eval.session import load, progress_bar
    from icecache.integrations.hf.loader import check_tokenizer

    prepared, docs = _check(args)
    docs = docs if docs is not None else builtin_documents(args.docs, seed=args.seed)
    # NOTE: cut with the tokenizer alone: a document too short fails before the weights load
    splits = split_documents(docs, check_tokenizer(prepared.checkpoint), args.prompt_tokens,
                             args.continuation_tokens)
    model, _ = load(prepared)
    settings = {"model": str(prepared.checkpoint), "prompt_tokens": args.prompt_tokens,
                "continuation_tokens": args.continuation_tokens, "documents": len(splits),
                "document_ids": [s.id for s in splits], "docs_file": args.docs_file,
                "policies": [s.label for s in prepared.specs], "budget": args.budget,
                "batch_size": args.batch_size, "segments": args.segments, "free_tokens": args.free_tokens,
                "seed": args.seed, "dtype": prepared.dtype, "threads": prepared.threads,
                "policy_options": args.policy_options, "command": "icecache " + " ".join(sys.argv[1:])}
    batches = -(-len(splits) // args.batch_size)
    per_batch = (len(prepared.specs) + 1) * (args.continuation_tokens + args.free_tokens)
    bar, update = progress_bar(batches * per_batch, not args.no_progress, "continuation")

    def write(partial: dict[str, Any], complete: bool = False) -> None:
        write_json(args.json, {"settings": settings, "complete": complete, **partial})

    with bar:
        results = run_continuation(model, splits, prepared.specs, batch_size=args.batch_size,
                                   segments=args.segments, free_tokens=args.free_tokens,
                                   policy_kwargs=prepared.policy_kwargs, progress=update,
                                   on_batch=write if args.json is not None else None)
    print(table(results["policies"], results["reference"]))
    if args.json is not None:
        write(results, complete=True)
        print(f"\nwrote {args.json}")
        plot = args.plot or args.json.with_suffix(".png")
    else:
        plot = args.plot
    if plot is not None and save_plot({"settings": settings, **results}, plot):
        print(f"wrote {plot}")
    return 0
