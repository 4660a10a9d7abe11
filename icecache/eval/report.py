"""Tables, JSON and the plot of an evaluation."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from icecache.bench.report import format_table

RUN_COLUMNS = ("policy", "n", "accuracy", "rel_full", "device_kv", "host", "held", "index_ms", "load_ms",
               "attn_ms", "rest_ms", "total_ms", "build_s")


def run_table(rows: Sequence[dict[str, Any]]) -> str:
    """The per-policy table: accuracy, relative to full, device-tier KV vs full, host bytes (and disk),
    everything held (device + host) vs full, ms per decode step."""
    table = []
    for r in rows:
        table.append({
            "policy": r["policy"], "n": r["n"], "accuracy": f"{r['accuracy']:.3f}",
            "rel_full": "-" if r["rel_full"] is None else f"{r['rel_full']:.3f}",
            "device_kv": (f"{r['device_kv_mib']:.1f}/{r['full_kv_mib']:.1f} MiB "
                          f"({100 * r['device_kv_fraction']:.1f}%)"),
            "host": (f"{r.get('host_mib', 0.0):.1f} MiB ({100 * r.get('host_fraction', 0.0):.0f}%)"
                     + (f" +{r['disk_mib']:.1f} disk" if r.get("disk_mib") else "")),
            "held": f"{100 * r.get('held_fraction', 0.0):.0f}%",
            "index_ms": f"{r['index_query_ms']:.1f}", "load_ms": f"{r['page_load_ms']:.1f}",
            "attn_ms": f"{r['attention_ms']:.1f}", "rest_ms": f"{r['rest_ms']:.1f}",
            "total_ms": f"{r['total_ms']:.1f}", "build_s": f"{r['index_build_s']:.2f}",
        })
    return format_table(table, RUN_COLUMNS)


def task_table(rows: Sequence[dict[str, Any]]) -> str:
    """Accuracy per task (rows) and policy (columns)."""
    policies = list(dict.fromkeys(r["policy"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    acc = {(r["policy"], r["task"]): r for r in rows}
    table = []
    for task in tasks:
        n = next(acc[p, task]["n"] for p in policies if (p, task) in acc)
        row: dict[str, Any] = {"task": task, "n": n}
        for p in policies:
            row[p] = f"{acc[p, task]['accuracy']:.2f}" if (p, task) in acc else "-"
        table.append(row)
    return format_table(table, ("task", "n", *policies))


def save_plot(rows: Sequence[dict[str, Any]], path: str | os.PathLike[str]) -> Path | None:
    """Accuracy per policy and the decode-step time split; ``None`` when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    path = Path(path)
    labels = [r["policy"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.bar(labels, [r["accuracy"] for r in rows], color="tab:blue")
    for i, r in enumerate(rows):
        ax1.text(i, r["accuracy"] + 0.01, f"{100 * r['device_kv_fraction']:.0f}% KV", ha="center", fontsize=8)
    ax1.set_ylim(0, 1.1)
    ax1.set_ylabel("accuracy (all answers found)")
    ax1.set_title("accuracy (label: device-tier KV vs full)")
    bottom = [0.0] * len(rows)
    for part, color in (("index_query", "tab:orange"), ("page_load", "tab:green"), ("attention", "tab:red"),
                        ("rest", "tab:gray")):
        vals = [r[f"{part}_ms"] for r in rows]
        ax2.bar(labels, vals, bottom=bottom, label=part, color=color)
        bottom = [b + v for b, v in zip(bottom, vals, strict=True)]
    ax2.set_ylabel("ms per decode step")
    ax2.set_title("decode step time")
    ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=path.suffix or ".png")
    os.close(fd)
    try:  # NOTE: a unique temp name renamed into place, so concurrent writers never collide
        fig.savefig(tmp, dpi=110)
        os.replace(tmp, path)
    finally:
        plt.close(fig)
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
