"""Merge the JSON of several `icecache eval` / `icecache run` runs into one table (sharded runs).

Long evaluations are run in shards (one task or a few samples per process, so each shard's results
land as soon as it is done); this recomputes the per-task and per-policy tables over all of them from
their ``samples_detail``. Shards must share the context length; a (sample, policy) pair may appear in
one shard only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from icecache.core.errors import ConfigError, IceCacheError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="JSON files written by `icecache eval --json`")
    parser.add_argument("--json", default=None, help="write the merged results here")
    parser.add_argument("--reference", default="full", help="policy that rel_full compares with (full)")


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except IceCacheError as exc:
        print(f"icecache merge: error: {exc}", file=sys.stderr)
        return 2


def _read(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"results file {path!r} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"results file {path!r} is not JSON (line {exc.lineno}: {exc.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("samples_detail"), list):
        raise ConfigError(f"results file {path!r} has no 'samples_detail' list (write it with "
                          "`icecache eval --json`)")
    return data


def merge(paths: list[str]) -> tuple[list[Any], int | None, list[dict[str, Any]]]:
    """``(sample results, context, sources)`` of the shards, batches renumbered to stay distinct."""
    from icecache.eval.runner import SampleResult

    results: list[SampleResult] = []
    seen: dict[tuple[str, str], str] = {}
    contexts: dict[Any, str] = {}
    sources = []
    for path in paths:
        data = _read(path)
        contexts.setdefault(data.get("context"), path)
        if len(contexts) > 1:
            (c0, p0), (c1, p1) = list(contexts.items())[:2]
            raise ConfigError(f"shards differ in context: {p0!r} has {c0}, {p1!r} has {c1}")
        offset = 1 + max((r.batch for r in results), default=-1)
        for i, d in enumerate(data["samples_detail"]):
            try:
                r = SampleResult(**{**d, "batch": offset + int(d["batch"])})
            except (TypeError, KeyError, ValueError) as exc:
                raise ConfigError(f"results file {path!r}: samples_detail[{i}] is malformed "
                                  f"({exc})") from None
            key = (r.sample_id, r.policy)
            if key in seen:
                raise ConfigError(f"sample {r.sample_id!r} under policy {r.policy!r} is in both "
                                  f"{seen[key]!r} and {path!r}")
            seen[key] = path
            results.append(r)
        sources.append({"path": path, "model": data.get("model"), "policies": data.get("policies"),
                        "samples": len(data["samples_detail"]), "machine": data.get("machine")})
    return results, next(iter(contexts)), sources


def _main(args: argparse.Namespace) -> int:
    from icecache.bench.report import write_json
    from icecache.eval.report import run_table, task_table
    from icecache.eval.summary import policy_rows, task_rows

    results, context, sources = merge(args.inputs)
    rows = task_rows(results, context)
    overview = policy_rows(results, context, reference=args.reference)
    print(task_table(rows))
    print()
    print(run_table(overview))
    write_json(args.json, {"command": "merge", "context": context, "sources": sources, "results": rows,
                           "overview": overview, "samples_detail": [r.to_dict() for r in results]})
    if args.json:
        print(f"\nwrote {args.json}")
    return 0
