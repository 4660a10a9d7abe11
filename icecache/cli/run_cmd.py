"""The main job: full KV vs icecache, quest and streamingllm on the embedded model at 4k tokens.

Generates a small seeded long-context suite, prefills each sample once and decodes its answer under
every policy, then prints accuracy, accuracy relative to full KV, device-tier KV bytes against full
KV and the decode step split into index query / page load / attention / rest; writes results.json
and a plot into the output folder.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from icecache.core.errors import IceCacheError

DEFAULT_POLICIES = "full,icecache,quest,streamingllm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from icecache.eval.session import add_model_arguments, add_snapshot_argument

    parser.add_argument("--out", default=None, help="output folder (default ./out/run-YYYYmmdd-HHMMSS)")
    parser.add_argument("--policies", default=DEFAULT_POLICIES,
                        help=f"comma-separated NAME or NAME@BUDGET (default {DEFAULT_POLICIES})")
    parser.add_argument("--budget", type=int, default=256, help="budget of policies without @N (default 256)")
    parser.add_argument("--context", type=int, default=4096, help="prompt length in tokens (default 4096)")
    parser.add_argument("--tasks", default=None, help="comma-separated task names (default: the run suite)")
    parser.add_argument("--samples", type=int, default=3, help="samples per task (default 3)")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out: decode only what results.json lacks")
    add_model_arguments(parser)
    add_snapshot_argument(parser)


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except IceCacheError as exc:
        print(f"icecache run: error: {exc}", file=sys.stderr)
        return 2


def _main(args: argparse.Namespace) -> int:
    from icecache.core.errors import ConfigError
    from icecache.eval.checks import check_samples
    from icecache.eval.files import check_output_dir
    from icecache.eval.report import run_table, save_plot, task_table
    from icecache.eval.results_file import ResultsFile, settings_of
    from icecache.eval.runner import evaluate
    from icecache.eval.session import load, prepare, progress_bar, snapshot_store
    from icecache.eval.summary import policy_rows, task_rows
    from icecache.tasks import DEFAULT_SUITE, generate_suite, parse_task_names

    check_samples(args.samples)
    if args.resume and args.out is None:
        raise ConfigError("--resume needs --out DIR: the folder of the run to continue")
    task_names = parse_task_names(",".join(DEFAULT_SUITE) if args.tasks is None else args.tasks)
    prepared = prepare(args, args.policies, args.budget, args.context)
    out = check_output_dir(args.out or f"out/run-{time.strftime('%Y%m%d-%H%M%S')}", "--out")
    t0 = time.perf_counter()
    labels = [s.label for s in prepared.specs]

    def payload(results: list[Any]) -> dict[str, Any]:
        return {"model": str(prepared.checkpoint), "device": str(prepared.device), "dtype": prepared.dtype,
                "context": args.context, "tasks": task_names, "samples": args.samples, "seed": args.seed,
                "batch_size": args.batch_size, "policies": labels, "elapsed_s": time.perf_counter() - t0,
                "results": task_rows(results, args.context), "overview": policy_rows(results, args.context),
                "samples_detail": [r.to_dict() for r in results]}

    settings = settings_of(args, prepared, tasks=task_names, context=args.context, samples=args.samples)
    results_file = ResultsFile(out / "results.json", "run", settings, payload, labels)
    results_file.open(resume=args.resume)
    try:
        if not results_file.was_complete:
            name = args.model or "embedded SmolLM2-135M-Instruct"
            print(f"loading model ({name}) on {prepared.device}", file=sys.stderr)
            model, tokenizer = load(prepared)
            samples = generate_suite(task_names, n=args.samples, context=args.context, tokenizer=tokenizer,
                                     seed=args.seed)
            print(f"{len(samples)} samples ({', '.join(task_names)}) at {args.context} tokens, policies "
                  f"{', '.join(labels)}", file=sys.stderr)
            bar, update = progress_bar(len(samples) * len(labels), not args.no_progress, "run")
            snapshots = snapshot_store(prepared, "run")
            with bar:
                evaluate(model, tokenizer, samples, prepared.specs, batch_size=args.batch_size,
                         policy_kwargs=prepared.policy_kwargs, progress=update, done=results_file.done,
                         on_results=results_file.add, snapshots=snapshots)
            if snapshots is not None:
                print(f"snapshots: {snapshots.stats.summary(prepared.snapshot_dir)}", file=sys.stderr)
        results = results_file.ordered()
        overview = policy_rows(results, args.context)
        print(task_table(task_rows(results, args.context)))
        print()
        print(f"per-policy summary (ms per decode step of a batch of up to {args.batch_size}; "
              f"device_kv = KV bytes resident on the device tier vs a full cache; host = host memory held; "
              f"held = device + host vs full KV)")
        print(run_table(overview))
        results_file.write(complete=True)
        written = [out / "results.json"]
        if not args.no_plot:
            plot = save_plot(overview, out / "summary.png")
            if plot is None:
                print("matplotlib is not installed: no plot (pip install matplotlib)", file=sys.stderr)
            else:
                written.append(plot)
    except KeyboardInterrupt:
        print(f"\n{len(results_file.results)} results kept in {out / 'results.json'}; add --resume to "
              "continue", file=sys.stderr)
        raise
    finally:
        results_file.close()
    print(f"\nwrote {', '.join(map(str, written))} in {time.perf_counter() - t0:.0f} s")
    return 0
