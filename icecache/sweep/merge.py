"""Merge the shard JSONs a sweep has (all, or those done so far) into ``sweep.json``, tables and a plot.

Shards of one group (same model and context) merge with :func:`icecache.cli.merge_cmd.merge`, the
function ``icecache merge`` runs, so a group's tables are what ``icecache merge`` gives for its
shards. Groups stay apart: ``merge`` refuses mixed contexts, and two models share sample ids.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from icecache.sweep.progress import shard_path
from icecache.sweep.shards import Shard


def group_label(model: str, context: int | None) -> str:
    return f"{model} @ {'tasks files' if context is None else f'{context} tokens'}"


def merge_groups(out: Path, shards: list[Shard]) -> list[dict[str, Any]]:
    """One entry per group with a current shard JSON (ordered by model as listed, then context): its
    shards (paths, in plan order) and the ``results`` / ``overview`` / ``samples_detail`` that
    ``icecache merge`` computes from them. A changed shard's old JSON is left out."""
    from icecache.cli.merge_cmd import merge
    from icecache.eval.summary import policy_rows, task_rows

    groups: dict[tuple[str, int | None], list[str]] = {}
    for s in shards:
        groups.setdefault(s.group, [])
        kept = read_shard(shard_path(out, s))
        if kept is not None and kept.get("spec_hash") == s.spec_hash:  # NOTE: not a changed shard's old JSON
            groups[s.group].append(str(shard_path(out, s)))
    models = list(dict.fromkeys(s.model for s in shards))
    order = sorted(groups, key=lambda g: (models.index(g[0]), g[1] is None, g[1] or 0))
    merged = []
    for model, context in order:
        paths = groups[model, context]
        if not paths:
            continue
        results, _, sources = merge(paths)
        merged.append({"model": model, "context": context, "shards": paths, "sources": sources,
                       "results": task_rows(results, context), "overview": policy_rows(results, context),
                       "samples_detail": [r.to_dict() for r in results]})
    return merged


def write_sweep(out: Path, spec_path: str, shards: list[Shard], states: dict[str, dict[str, Any]],
                groups: list[dict[str, Any]]) -> Path:
    """``out/sweep.json``: the shards and their states, every group, and flat ``results`` /
    ``overview`` rows (with ``model``) over all groups."""
    from icecache.bench.report import write_json

    path = out / "sweep.json"
    write_json(path, {
        "command": "sweep", "spec": spec_path,
        "shards": [{"name": s.name, "model": s.model, "context": s.context, "spec_hash": s.spec_hash,
                    "path": str(shard_path(out, s)), **states.get(s.name, {})} for s in shards],
        "groups": groups,
        "results": [{"model": g["model"], **r} for g in groups for r in g["results"]],
        "overview": [{"model": g["model"], **r} for g in groups for r in g["overview"]],
    })
    return path


def print_tables(groups: list[dict[str, Any]]) -> None:
    from icecache.eval.report import run_table, task_table

    for g in groups:
        print(f"== {group_label(g['model'], g['context'])} ({len(g['shards'])} shards) ==")
        print(task_table(g["results"]))
        print()
        print(run_table(g["overview"]))
        print()


def save_sweep_plot(groups: list[dict[str, Any]], path: Path) -> Path | None:
    """Accuracy and decode-step time per policy across the groups (x: model and context);
    ``None`` when matplotlib is missing or there is nothing to plot."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    if not groups:
        return None
    models = {g["model"] for g in groups}
    xs = [(g["model"] + "\n" if len(models) > 1 else "") + ("files" if g["context"] is None
                                                           else str(g["context"])) for g in groups]
    policies = list(dict.fromkeys(r["policy"] for g in groups for r in g["overview"]))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    for p in policies:
        rows = [next((r for r in g["overview"] if r["policy"] == p), None) for g in groups]
        pts = [(x, r) for x, r in zip(xs, rows, strict=True) if r is not None]
        ax1.plot([x for x, _ in pts], [r["accuracy"] for _, r in pts], marker="o", label=p)
        ax2.plot([x for x, _ in pts], [r["total_ms"] for _, r in pts], marker="o", label=p)
    ax1.set_ylim(-0.05, 1.05)
    ax1.set_ylabel("accuracy (all answers found)")
    ax1.set_xlabel("context (tokens)")
    ax2.set_ylabel("ms per decode step")
    ax2.set_xlabel("context (tokens)")
    ax1.legend(fontsize=8)
    fig.suptitle("sweep: accuracy and decode step time per policy")
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp" + path.suffix)
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def read_shard(path: Path) -> dict[str, Any] | None:
    """A shard JSON's ``sweep`` block, or ``None`` when missing or unreadable (then it reruns)."""
    try:
        data = json.loads(path.read_text())
        return data["sweep"] if isinstance(data.get("sweep"), dict) else None
    except (OSError, ValueError, AttributeError):
        return None
