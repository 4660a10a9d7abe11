"""Evaluate cache policies on long-context tasks (prefill once per sample, decode per policy)."""

from __future__ import annotations

import argparse
import sys

from icecache.core.errors import IceCacheError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from icecache.eval.policies import options_argument
    from icecache.eval.session import add_model_arguments

    parser.add_argument("--policy", default="full,icecache",
                        help="comma-separated selectors, NAME or NAME@BUDGET (default full,icecache)")
    parser.add_argument("--budget", type=int, default=256,
                        help="tokens per KV head, sinks and window included, for policies without @N (256)")
    parser.add_argument("--policy-options", type=options_argument, default=None,
                        help="JSON object (or file): selector or selector:variant -> selector options, "
                             "e.g. '{\"icecache:wide\": {\"index_options\": {\"candidates\": 8}}}'")
    parser.add_argument("--context", type=int, default=4096, help="prompt length in tokens (default 4096)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tasks", default=None,
                        help="comma-separated task names or 'all' (default: the run suite)")
    source.add_argument("--tasks-file", default=None,
                        help="JSONL file, one {id, context, question, answers} per line "
                             "(see docs/running.md)")
    parser.add_argument("--samples", type=int, default=5, help="samples per generated task (default 5)")
    parser.add_argument("--json", default=None, help="write results here (written once, at the end)")
    add_model_arguments(parser)


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except IceCacheError as exc:
        print(f"icecache eval: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from icecache.bench.report import write_json
    from icecache.core.errors import ConfigError
    from icecache.eval.report import run_table, task_table
    from icecache.eval.runner import evaluate
    from icecache.eval.session import load, prepare, progress_bar
    from icecache.eval.summary import policy_rows, task_rows
    from icecache.tasks import DEFAULT_SUITE, generate_suite, load_tasks_file, parse_task_names

    if args.samples < 1:
        raise ConfigError(f"--samples must be positive, got {args.samples}")
    from_file = args.tasks_file is not None
    if from_file:
        file_samples = load_tasks_file(args.tasks_file)
        task_names: list[str] = []
    else:
        task_names = parse_task_names(args.tasks or ",".join(DEFAULT_SUITE))
    prepared = prepare(args, args.policy, args.budget, None if from_file else args.context,
                       options=args.policy_options)
    model, tokenizer = load(prepared)
    if from_file:
        samples = file_samples
    else:
        samples = generate_suite(task_names, n=args.samples, context=args.context, tokenizer=tokenizer,
                                 seed=args.seed)
    bar, update = progress_bar(len(samples) * len(prepared.specs), not args.no_progress, "eval")
    with bar:
        results = evaluate(model, tokenizer, samples, prepared.specs, batch_size=args.batch_size,
                           policy_kwargs=prepared.policy_kwargs, progress=update)
    context = None if from_file else args.context
    rows = task_rows(results, context)
    overview = policy_rows(results, context)
    print(task_table(rows))
    print()
    print(run_table(overview))
    write_json(args.json, {
        "command": "eval", "model": str(prepared.checkpoint), "context": context,
        "tasks_file": args.tasks_file, "policies": [s.label for s in prepared.specs],
        "budget": args.budget, "samples": args.samples, "seed": args.seed, "batch_size": args.batch_size,
        "results": rows, "overview": overview, "samples_detail": [r.to_dict() for r in results],
    })
    if args.json:
        print(f"\nwrote {args.json}")
    return 0
