"""Merge the JSON of several `icecache eval` / `icecache run` runs into one table (sharded runs).

Long evaluations are run in shards (one task or a few samples per process, so each shard's results
land as soon as it is done); this recomputes the per-task and per-policy tables over all of them from
their ``samples_detail``. Shards must share the context length; a (sample, policy) pair may appear in
one shard only, unless ``--replace`` says that later shards win (a task rerun after a fix).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from icecache.core.errors import ConfigError, IceCacheError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("inputs", nargs="+", help="JSON files written by `icecache eval --json`")
    parser.add_argument("--json", default=None, help="write the merged results here")
    parser.add_argument("--plot", default=None,
                        help="accuracy and step-time plot (default: beside --json, .png)")
    parser.add_argument("--reference", default=None,
                        help="policy that rel_full compares with (default full; one given must be in the "
                             "inputs)")
    parser.add_argument("--replace", action="store_true",
                        help="a (sample, policy) pair in several shards takes the last shard's result")


def main(args: argparse.Namespace) -> int:
    try:
        return _main(args)
    except IceCacheError as exc:
        print(f"icecache merge: error: {exc}", file=sys.stderr)
        return 2


def _read(path: str) -> dict[str, Any]:
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"results file {path!r} does not exist")
    if not p.is_file():
        raise ConfigError(f"results file {path!r} is not a file")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"results file {path!r} is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"results file {path!r} is not JSON (line {exc.lineno}: {exc.msg})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read results file {path!r}: {exc.strerror or exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("samples_detail"), list):
        raise ConfigError(f"results file {path!r} has no 'samples_detail' list (write it with "
                          "`icecache eval --json`)")
    return data


def _number(v: Any) -> bool:
    """A finite JSON number (Python's json reads NaN and Infinity)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _count(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


STEP_PARTS = ("index_query", "page_load", "attention", "rest", "total")
#: field of a ``samples_detail`` entry -> (check, what it must be)
FIELDS: dict[str, tuple[Any, str]] = {
    "sample_id": (lambda v: isinstance(v, str), "a string"),
    "task": (lambda v: isinstance(v, str), "a string"),
    "policy": (lambda v: isinstance(v, str) and v != "", "a non-empty string"),
    "selector": (lambda v: isinstance(v, str), "a string"),
    "budget": (lambda v: v is None or (_count(v) and v > 0), "a positive integer or null"),
    "prompt_tokens": (_count, "a non-negative integer"),
    "correct": (lambda v: isinstance(v, bool), "true or false"),
    "score": (lambda v: _number(v) and 0.0 <= v <= 1.0, "a number in [0, 1]"),
    "output": (lambda v: isinstance(v, str), "a string"),
    "new_tokens": (_count, "a non-negative integer"),
    "batch": (_count, "a non-negative integer"),
    "batch_size": (lambda v: _count(v) and v > 0, "a positive integer"),
    "index_build_s": (lambda v: _number(v) and v >= 0, "a non-negative number"),
    "step_s": (lambda v: isinstance(v, dict) and set(STEP_PARTS) <= set(v)
               and all(isinstance(k, str) and _number(x) and x >= 0 for k, x in v.items()),
               f"an object of non-negative seconds with {list(STEP_PARTS)}"),
    "device_kv_bytes": (_count, "a non-negative integer"),
    "full_kv_bytes": (_count, "a non-negative integer"),
    "device_fraction": (lambda v: _number(v) and v >= 0, "a non-negative number"),
}
#: fields written by newer versions, absent from older files
OPTIONAL_FIELDS: dict[str, tuple[Any, str]] = {
    "host_bytes": (_count, "a non-negative integer"),
    "disk_bytes": (_count, "a non-negative integer"),
    "memory": (lambda v: isinstance(v, dict), "an object"),
}


def check_result(d: Any, where: str) -> None:
    """A ``samples_detail`` entry has every field, each of its type and range (``where`` names it)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} is malformed: an object was expected, got {type(d).__name__}")
    missing = [k for k in FIELDS if k not in d]
    if missing:
        raise ConfigError(f"{where} is malformed: it lacks field(s) {missing}")
    unknown = sorted(set(d) - set(FIELDS) - set(OPTIONAL_FIELDS))
    if unknown:
        raise ConfigError(f"{where} is malformed: unknown field(s) {unknown}")
    for key, (ok, what) in (*FIELDS.items(), *OPTIONAL_FIELDS.items()):
        if key in d and not ok(d[key]):
            raise ConfigError(f"{where} is malformed: field {key!r} must be {what}, got {d[key]!r}")


def merge(paths: list[str], *, replace: bool = False) -> tuple[list[Any], int | None, list[dict[str, Any]]]:
    """``(sample results, context, sources)`` of the shards, batches renumbered to stay distinct.
    ``replace``: a later shard's result for a (sample, policy) pair replaces an earlier one (each
    source's ``replaced`` counts what it lost)."""
    from icecache.eval.runner import SampleResult

    results: dict[tuple[str, str], SampleResult] = {}
    seen: dict[tuple[str, str], str] = {}
    lost: dict[str, int] = {}
    contexts: dict[Any, str] = {}
    sources = []
    for path in paths:
        data = _read(path)
        context = data.get("context")
        if context is not None and not (_count(context) and context > 0):
            raise ConfigError(f"results file {path!r}: 'context' must be a positive number of tokens or "
                              "null, "
                              f"got {context!r}")
        contexts.setdefault(context, path)
        if len(contexts) > 1:
            (c0, p0), (c1, p1) = list(contexts.items())[:2]
            raise ConfigError(f"shards differ in context: {p0!r} has {c0}, {p1!r} has {c1}")
        offset = 1 + max((r.batch for r in results.values()), default=-1)
        for i, d in enumerate(data["samples_detail"]):
            check_result(d, f"results file {path!r}: samples_detail[{i}]")
            r = SampleResult(**{**d, "batch": offset + d["batch"]})
            key = (r.sample_id, r.policy)
            if key in seen:
                if not replace or seen[key] == path:
                    raise ConfigError(f"sample {r.sample_id!r} under policy {r.policy!r} is in both "
                                      f"{seen[key]!r} and {path!r}" + ("" if replace else " (--replace "
                                                                      "keeps the later one)"))
                lost[seen[key]] = lost.get(seen[key], 0) + 1
                del results[key]  # NOTE: re-inserted last, so the table order follows the shards
            seen[key] = path
            results[key] = r
        sources.append({"path": path, "model": data.get("model"), "policies": data.get("policies"),
                        "samples": len(data["samples_detail"]), "machine": data.get("machine")})
    for source in sources:
        source["replaced"] = lost.get(source["path"], 0)
    return list(results.values()), next(iter(contexts)), sources


def _main(args: argparse.Namespace) -> int:
    from icecache.bench.report import write_json
    from icecache.eval.report import run_table, save_plot, task_table
    from icecache.eval.summary import policy_rows, task_rows

    results, context, sources = merge(args.inputs, replace=args.replace)
    policies = list(dict.fromkeys(r.policy for r in results))
    if args.reference is not None and args.reference not in policies:
        raise ConfigError(f"--reference {args.reference!r} is not a policy of the inputs; they hold "
                          f"{policies}")
    reference = args.reference or "full"
    for source in sources:
        if source["replaced"]:
            print(f"{source['path']}: {source['replaced']} results replaced by later shards")
    rows = task_rows(results, context)
    overview = policy_rows(results, context, reference=reference)
    print(task_table(rows))
    print()
    print(run_table(overview))
    write_json(args.json, {"command": "merge", "context": context, "sources": sources, "results": rows,
                           "overview": overview, "samples_detail": [r.to_dict() for r in results]})
    if args.json:
        print(f"\nwrote {args.json}")
    plot = args.plot or (str(Path(args.json).with_suffix(".png")) if args.json else None)
    if plot and save_plot(overview, plot) is not None:
        print(f"wrote {plot}")
    return 0
