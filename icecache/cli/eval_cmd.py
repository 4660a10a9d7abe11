"""Evaluate cache policies on long-context tasks (prefill once per sample, decode per policy)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from icecache.core.errors import IceCacheError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from icecache.eval.policies import options_argument
    from icecache.eval.session import add_model_arguments, add_snapshot_argument

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
    parser.add_argument("--json", default=None,
                        help="write results here; rewritten after every finished batch (see docs/running.md)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --json: decode only what it lacks")
    add_model_arguments(parser)
    add_snapshot_argument(parser)


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except IceCacheError as exc:
        print(f"icecache eval: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from icecache.core.errors import ConfigError
    from icecache.eval.checks import check_samples
    from icecache.eval.report import run_table, task_table
    from icecache.eval.results_file import ResultsFile, settings_of
    from icecache.eval.session import load, prepare
    from icecache.eval.summary import policy_rows, task_rows
    from icecache.tasks import DEFAULT_SUITE, load_tasks_file, parse_task_names

    check_samples(args.samples)
    if args.resume and args.json is None:
        raise ConfigError("--resume needs --json PATH: the results file to continue")
    from_file = args.tasks_file is not None
    if from_file:
        file_samples = load_tasks_file(args.tasks_file)
        task_names: list[str] = []
    else:
        task_names = parse_task_names(",".join(DEFAULT_SUITE) if args.tasks is None else args.tasks)
    prepared = prepare(args, args.policy, args.budget, None if from_file else args.context,
                       options=args.policy_options)
    if from_file:
        _check_file_prompts(file_samples, prepared)
    context = None if from_file else args.context

    def payload(results: list[Any]) -> dict[str, Any]:
        return {"model": str(prepared.checkpoint), "context": context, "tasks_file": args.tasks_file,
                "policies": [s.label for s in prepared.specs], "budget": args.budget,
                "samples": args.samples, "seed": args.seed, "batch_size": args.batch_size,
                "results": task_rows(results, context), "overview": policy_rows(results, context),
                "samples_detail": [r.to_dict() for r in results]}

    settings = settings_of(args, prepared, tasks=task_names or None, context=context,
                           samples=None if from_file else args.samples, tasks_file=args.tasks_file,
                           policy_options=args.policy_options)
    out = ResultsFile(None if args.json is None else Path(args.json), "eval", settings, payload,
                      [s.label for s in prepared.specs])
    out.open(resume=args.resume)
    try:
        if args.resume:
            print(f"resuming {args.json}: {len(out.results)} results kept"
                  + (" (complete: nothing to decode)" if out.was_complete else ""), file=sys.stderr)
        if not out.was_complete:
            _decode(args, prepared, task_names, file_samples if from_file else None, out, load)
        results = out.ordered()
        print(task_table(task_rows(results, context)))
        print()
        print(run_table(policy_rows(results, context)))
        out.write(complete=True)
    finally:
        out.close()
    if args.json:
        print(f"\nwrote {args.json}")
    return 0


def _check_file_prompts(samples: list[Any], prepared: Any) -> None:
    """Every tasks-file prompt plus its answer fits the model, measured with the tokenizer alone (before
    the weights load)."""
    from icecache.eval.runner import check_prompts
    from icecache.integrations.hf.loader import check_tokenizer
    from icecache.tasks.sample import split_prompt_ids

    tokenizer = check_tokenizer(prepared.checkpoint)
    prompts = [sum(split_prompt_ids(tokenizer, s), []) for s in samples]
    check_prompts(samples, prompts, getattr(prepared.model_config, "max_position_embeddings", None))


def _decode(args: argparse.Namespace, prepared: Any, task_names: list[str], file_samples: list[Any] | None,
            out: Any, load: Any) -> None:
    """Load the model, build the samples and decode what ``out`` lacks, writing as results arrive."""
    from icecache.eval.runner import evaluate
    from icecache.eval.session import progress_bar, snapshot_store
    from icecache.tasks import generate_suite

    model, tokenizer = load(prepared)
    samples = file_samples or generate_suite(task_names, n=args.samples, context=args.context,
                                             tokenizer=tokenizer, seed=args.seed)
    bar, update = progress_bar(len(samples) * len(prepared.specs), not args.no_progress, "eval")
    snapshots = snapshot_store(prepared, "eval")
    try:
        with bar:
            evaluate(model, tokenizer, samples, prepared.specs, batch_size=args.batch_size,
                     policy_kwargs=prepared.policy_kwargs, progress=update, done=out.done,
                     on_results=out.add, snapshots=snapshots)
        if snapshots is not None:
            print(f"snapshots: {snapshots.stats.summary(prepared.snapshot_dir)}", file=sys.stderr)
    except KeyboardInterrupt:
        if out.path is not None:
            print(f"\n{len(out.results)} results kept in {out.path}; add --resume to continue",
                  file=sys.stderr)
        raise
