"""PNG plots of an evaluation (matplotlib, headless Agg backend)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

CURVE_KEYS = ("loss_total", "loss_weights", "loss_delta", "delta_cosine_sim")


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and v is not None else math.nan


def accuracy_plot(rows: list[dict[str, Any]], path: Path) -> Path:
    """Grouped bars: task accuracy of each method on each task."""
    plt = _plt()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    acc = {(r["method"], r["task"]): _num(r.get("accuracy")) for r in rows}
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(tasks) * max(1, len(methods)) / 2), 4))
    width = 0.8 / max(1, len(methods))
    for i, m in enumerate(methods):
        xs = [t + i * width for t in range(len(tasks))]
        ax.bar(xs, [acc.get((m, t), math.nan) for t in tasks], width, label=m)
    ax.set_xticks([t + 0.4 - width / 2 for t in range(len(tasks))])
    ax.set_xticklabels(tasks)
    ax.set_ylabel("task accuracy")
    ax.set_ylim(0, 1)
    ax.set_title("Accuracy by method and task")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def cosine_plot(summary: list[dict[str, Any]], path: Path) -> Path:
    """Bars per method: raw and centered delta cosine (mean over tasks)."""
    plt = _plt()
    methods = [s["method"] for s in summary]
    fig, ax = plt.subplots(figsize=(max(6, 0.9 * len(methods)), 4))
    xs = list(range(len(methods)))
    ax.bar([x - 0.2 for x in xs], [_num(s.get("delta_cosine")) for s in summary], 0.4, label="delta cosine")
    ax.bar([x + 0.2 for x in xs], [_num(s.get("centered_cosine")) for s in summary], 0.4, label="centered cosine")
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(xs)
    ax.set_xticklabels(methods, rotation=30, ha="right")
    ax.set_ylabel("cosine with the teacher delta")
    ax.set_title("Delta cosine by method")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def curves_plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> Optional[Path]:
    """Training curves from each run's metrics.jsonl: one panel per logged quantity."""
    keys = [k for k in CURVE_KEYS if any(k in row for rows in runs.values() for row in rows)]
    if not keys:
        return None
    plt = _plt()
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, rows in runs.items():
            pts = [(r["step"], _num(r[key])) for r in rows if key in r and "step" in r]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name)
        ax.set_title(key)
        ax.set_xlabel("step")
        if key.startswith("loss") and all(_num(r.get(key)) > 0 for rows in runs.values() for r in rows if key in r):
            ax.set_yscale("log")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def ablation_plot(cells: list[dict[str, Any]], path: Path) -> Path:
    """Per ablation cell: delta cosine, centered cosine and accuracy of the trained generator."""
    plt = _plt()
    names = [c["cell"] for c in cells]
    fig, ax = plt.subplots(figsize=(max(7, 0.6 * len(names)), 4.5))
    xs = list(range(len(names)))
    for off, key, label in ((-0.27, "delta_cosine", "delta cosine"), (0.0, "centered_cosine", "centered cosine"),
                            (0.27, "accuracy", "accuracy")):
        ax.bar([x + off for x in xs], [_num(c.get(key)) for c in cells], 0.27, label=label)
    ax.axhline(0, color="black", linewidth=0.5)
    ax.set_xticks(xs)
    ax.set_xticklabels(names, rotation=45, ha="right", fontsize=8)
    ax.set_title("Ablation grid: multitask generator per cell")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
