"""Per-policy summaries of continuation metrics: means, per-segment means, drift and its uncertainty,
the KL-vs-position curve; the table and the plot."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

#: positions per block when estimating uncertainty: neighbouring tokens are correlated, blocks of this
#: many are treated as independent units (per document)
BLOCK = 32


def _segments(steps: int, count: int) -> list[tuple[int, int]]:
    edges = [round(i * steps / count) for i in range(count + 1)]
    return [(edges[i], edges[i + 1]) for i in range(count) if edges[i + 1] > edges[i]]


def _mean_se(values: Tensor) -> tuple[float, float]:
    """Mean and standard error of ``values`` ``[steps, docs]`` over blocks of :data:`BLOCK` positions
    per document (each block's mean is one unit)."""
    steps, docs = values.shape
    units = torch.stack([values[i:i + BLOCK].mean(0) for i in range(0, steps, BLOCK)]).flatten()
    mean = float(values.mean())
    se = float(units.std(unbiased=True) / math.sqrt(units.numel())) if units.numel() > 1 else float("nan")
    return mean, se


def summarize(metrics: dict[str, Tensor], segments: int) -> dict[str, Any]:
    """``metrics``: name -> ``[steps, docs]``. Means over all steps and per segment (with standard errors),
    and the drift of each metric from the first to the last segment: ``drift`` = last - first,
    ``drift_se`` its standard error, ``drift_z`` their ratio (|z| < 2: within the noise)."""
    steps = next(iter(metrics.values())).shape[0]
    out: dict[str, Any] = {"steps": steps, "docs": next(iter(metrics.values())).shape[1]}
    segs = _segments(steps, segments)
    out["segments"] = [list(s) for s in segs]
    for name, values in metrics.items():
        out[name] = float(values.mean())
        per = [_mean_se(values[a:b]) for a, b in segs]
        out[f"{name}_by_segment"] = [m for m, _ in per]
        out[f"{name}_se_by_segment"] = [s for _, s in per]
        (m0, s0), (m1, s1) = per[0], per[-1]
        se = math.sqrt(s0 ** 2 + s1 ** 2)
        out[f"{name}_drift"] = m1 - m0
        out[f"{name}_drift_se"] = se
        out[f"{name}_drift_z"] = (m1 - m0) / se if se > 0 else float("nan")
    return out


def kl_curve(kl: Tensor) -> list[float]:
    """Mean KL per generated position over documents (``kl`` ``[steps, docs]``)."""
    return [float(v) for v in kl.mean(1)]


def table(rows: Sequence[dict[str, Any]], reference: dict[str, Any]) -> str:
    """Policies by row: extra NLL / token, KL(full || policy), top-1 agreement, KL per segment, the drift
    of KL (last - first segment, with its z score), step time; full KV's NLL and entropy underneath."""
    from icecache.bench.report import format_table

    body = []
    for r in rows:
        s = r["summary"]
        body.append({
            "policy": r["policy"],
            "extra NLL/tok": f"{s['extra_nll']:+.4f}",
            "KL(full||p)": f"{s['kl']:.4f}",
            "top-1 agree": f"{s['agree']:.3f}",
            "KL by segment": " ".join(f"{v:.4f}" for v in s["kl_by_segment"]),
            "KL drift (z)": f"{s['kl_drift']:+.4f} ({s['kl_drift_z']:+.1f})",
            "step ms": f"{1e3 * r['step_s']['total']:.0f}",
            "index/load/attn ms": "/".join(f"{1e3 * r['step_s'][k]:.0f}"
                                           for k in ("index_query", "page_load", "attention")),
        })
        if "free" in r:
            body[-1]["free: 1st diverge"] = f"{r['free']['first_divergence']:.1f}"
            body[-1]["free: agree"] = f"{r['free']['agree_fraction']:.3f}"
    columns = list(body[0]) if body else ["policy"]
    ref = (f"full KV: NLL/token {reference['nll']:.4f}, entropy by segment "
           + " ".join(f"{v:.3f}" for v in reference["full_entropy_by_segment"])
           + f", step {1e3 * reference['step_s']['total']:.0f} ms")
    return format_table(body, columns) + "\n" + ref


def save_plot(payload: dict[str, Any], path: Path) -> bool:
    """KL(full || policy) vs generated position (moving average), one line per policy."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed (the 'plot' extra): no plot")
        return False
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in payload["policies"]:
        curve = torch.tensor(r["kl_by_position"])
        width = max(1, len(curve) // 32)
        smooth = torch.nn.functional.avg_pool1d(curve[None, None], width, stride=1)[0, 0]
        x = torch.arange(len(smooth)) + (width - 1) / 2
        ax.plot(x.tolist(), smooth.tolist(), label=r["policy"])
    ax.set_yscale("log")
    ax.set_xlabel("generated position (tokens after the prompt)")
    ax.set_ylabel("KL(full || policy), nats (moving mean)")
    s = payload["settings"]
    ax.set_title(f"{s['prompt_tokens']}-token prompts, {s['documents']} documents")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
