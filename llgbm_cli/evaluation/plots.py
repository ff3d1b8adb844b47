"""Figures of an evaluation, a training run and an ablation (matplotlib, headless Agg backend).

Every figure is written as PNG (for a quick look) and as PDF and SVG (vector, for a paper) side
by side; each function returns the paths it wrote. Conventions shared by all figures:

- accuracy comes with its 95% Wilson interval (from the number of questions) and the task's
  chance level (mean of 1 / number of options over the questions asked), on an axis zoomed to the
  data instead of 0-1;
- delta metrics carry the ``mean-delta`` baseline (one adapter for every task) as a reference line:
  a method is only interesting where it beats it;
- training curves: one row per run, one panel per quantity, linear axes with labels, the λ warm-up
  shaded, held-out cosine drawn against its mean-delta baseline.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional, Sequence

FORMATS = ("png", "pdf", "svg")
Z95 = 1.959963984540054
REFERENCE = "mean-delta"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import logging

    # PDF/SVG font subsetting logs every subset at INFO: with -v that would flood stderr
    logging.getLogger("fontTools").setLevel(logging.WARNING)
    import matplotlib.pyplot as plt

    plt.rcParams.update({"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8,
                         "svg.fonttype": "none", "pdf.fonttype": 42, "axes.spines.top": False,
                         "axes.spines.right": False})
    return plt


def _num(v: Any) -> float:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan


def _save(fig, path: Path) -> list[Path]:
    """Write ``path`` (its suffix is replaced) as PNG, PDF and SVG; returns the three paths."""
    plt = _plt()
    path = Path(path)
    out = []
    fig.tight_layout()
    for ext in FORMATS:
        p = path.with_suffix("." + ext)
        fig.savefig(p, dpi=150 if ext == "png" else None, bbox_inches="tight",
                    metadata={"Date": None} if ext in ("pdf", "svg") else None)
        out.append(p)
    plt.close(fig)
    return out


def _colors(methods: Sequence[str]) -> dict[str, Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    return {m: cmap(i % 10) for i, m in enumerate(methods)}


def wilson_interval(p: float, n: int, z: float = Z95) -> tuple[float, float]:
    """95% Wilson score interval of a proportion ``p`` measured on ``n`` trials."""
    if not n or math.isnan(p):
        return math.nan, math.nan
    d = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / d
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def _zoom(lows: list[float], highs: list[float], extra: Sequence[float] = (), pad: float = 0.08) -> tuple[float, float]:
    vals = [v for v in list(lows) + list(highs) + list(extra) if not math.isnan(v)]
    if not vals:
        return 0.0, 1.0
    lo, hi = min(vals), max(vals)
    span = max(hi - lo, 0.02)
    return max(0.0, lo - pad * span), min(1.0, hi + pad * span)


def accuracy_plot(rows: list[dict[str, Any]], path: Path) -> list[Path]:
    """Accuracy of each method on each task: point, 95% interval, the task's chance level."""
    plt = _plt()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    by = {(r["method"], r["task"]): r for r in rows}
    colors = _colors(methods)
    fig, ax = plt.subplots(figsize=(max(4.5, 0.5 * len(methods) * len(tasks) + 1.5), 3.6))
    width = 0.8 / max(1, len(methods))
    lows, highs, chances = [], [], []
    for i, m in enumerate(methods):
        xs, ys, err = [], [], [[], []]
        for j, t in enumerate(tasks):
            r = by.get((m, t))
            if r is None:
                continue
            p = _num(r.get("accuracy"))
            lo, hi = wilson_interval(p, int(r.get("n_questions") or 0))
            xs.append(j - 0.4 + width * (i + 0.5))
            ys.append(p)
            err[0].append(max(0.0, p - lo) if not math.isnan(lo) else 0.0)
            err[1].append(max(0.0, hi - p) if not math.isnan(hi) else 0.0)
            lows.append(lo if not math.isnan(lo) else p)
            highs.append(hi if not math.isnan(hi) else p)
        ax.errorbar(xs, ys, yerr=err, fmt="o", color=colors[m], capsize=3, markersize=5, label=m)
    for j, t in enumerate(tasks):
        ch = [_num(by[m, t].get("chance")) for m in methods if (m, t) in by]
        ch = [c for c in ch if not math.isnan(c)]
        if ch:
            chances.append(ch[0])
            ax.hlines(ch[0], j - 0.45, j + 0.45, colors="0.3", linestyles="--", linewidth=1,
                      label="chance (1 / options)" if j == 0 else None)
            ax.annotate(f"chance {ch[0]:.2f}", (j + 0.45, ch[0]), xytext=(0, 2), textcoords="offset points",
                        ha="right", va="bottom", fontsize=7, color="0.3")
    n = sorted({int(r.get("n_questions") or 0) for r in rows})
    ax.set_ylim(*_zoom(lows, highs, chances))
    ax.set_xlim(-0.55, len(tasks) - 0.45)
    ax.set_xticks(range(len(tasks)))
    ax.set_xticklabels(tasks)
    ax.set_ylabel("task accuracy")
    ax.set_title(f"Task accuracy (95% Wilson interval, n = {', '.join(map(str, n))} questions per task)")
    ax.grid(axis="y", linewidth=0.4, alpha=0.5)
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    return _save(fig, path)


DELTA_PANELS = (
    ("delta_mse", "delta MSE to the teacher (lower is better)"),
    ("delta_cosine", "delta cosine with the teacher"),
    ("centered_cosine", "centered cosine with the teacher"),
    ("norm_ratio", "delta norm / teacher's (1 = same size)"),
)


def delta_plot(rows: list[dict[str, Any]], summary: list[dict[str, Any]], path: Path) -> list[Path]:
    """Delta metrics per method: mean over tasks (bar), each task (dot), the mean-delta reference line."""
    plt = _plt()
    methods = [s["method"] for s in summary]
    colors = _colors(methods)
    summ = {s["method"]: s for s in summary}
    fig, axes = plt.subplots(1, len(DELTA_PANELS), figsize=(3.0 * len(DELTA_PANELS), 0.32 * len(methods) + 1.6),
                             sharey=True, squeeze=False)
    ys = list(range(len(methods)))
    for ax, (key, label) in zip(axes[0], DELTA_PANELS):
        ax.barh(ys, [_num(summ[m].get(key)) for m in methods], color=[colors[m] for m in methods], alpha=0.75,
                height=0.6)
        for y, m in zip(ys, methods):
            pts = [_num(r.get(key)) for r in rows if r["method"] == m]
            if len(pts) > 1:
                ax.plot(pts, [y] * len(pts), "o", color="black", markersize=2.5)
        if REFERENCE in summ and not math.isnan(_num(summ[REFERENCE].get(key))):
            ref = _num(summ[REFERENCE][key])
            ax.axvline(ref, color="0.25", linestyle="--", linewidth=1)
            ax.annotate(f"{REFERENCE}\n{ref:.3g}", (ref, 1.0), xycoords=("data", "axes fraction"),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7, color="0.25")
        if key in ("delta_cosine", "centered_cosine"):
            ax.axvline(0, color="black", linewidth=0.5)
        ax.set_xlabel(label)
        ax.grid(axis="x", linewidth=0.4, alpha=0.5)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels(methods)
    axes[0][0].invert_yaxis()
    ntask = len({r["task"] for r in rows})
    fig.suptitle(f"Delta metrics against the teacher delta (bars: mean over {ntask} task(s)"
                 + ("; dots: each task" if ntask > 1 else "") + f"; dashed: the {REFERENCE} baseline)", fontsize=10)
    return _save(fig, path)


# Panels of the training-curve grid: (title, y label, [(key, legend label)], baseline key or None).
CURVE_PANELS = (
    ("weight loss", "loss_weights", [("loss_weights", None)], None),
    ("delta loss", "loss_delta", [("loss_delta", None)], None),
    ("loss", "loss", [("loss", None)], None),
    ("train delta cosine", "cosine (train batch)", [("delta_cosine_sim", None)], None),
    ("held-out delta cosine", "cosine with held-out teachers",
     [("heldout_delta_cosine", "generated"), ("val_cosine", "predicted")],
     ("heldout_mean_delta_cosine", "val_mean_delta_cosine")),
    ("held-out centered cosine", "centered cosine", [("val_centered_cosine", None)], None),
)
CURVE_KEYS = tuple(k for p in CURVE_PANELS for k, _ in p[2])


def _warmup_span(rows: list[dict[str, Any]], x: str) -> Optional[tuple[float, float]]:
    """From the start to the first logged step where λ (``lambda_delta``) reaches its final value."""
    pts = sorted((r[x], _num(r["lambda_delta"])) for r in rows if x in r and "lambda_delta" in r)
    if not pts:
        return None
    top = max(v for _, v in pts)
    if top <= 0 or pts[0][1] >= top - 1e-9:
        return None
    return 0.0, float(next(s for s, v in pts if v >= top - 1e-9))


def curves_plot(runs: dict[str, list[dict[str, Any]]], path: Path) -> Optional[list[Path]]:
    """Training curves from each run's metrics.jsonl: a row per run, a panel per logged quantity."""
    layout = []
    for name, rows in runs.items():
        x = "step" if any("step" in r for r in rows) else "epoch"
        panels = [p for p in CURVE_PANELS if any(k in r for r in rows for k, _ in p[2])]
        if panels:
            layout.append((name, rows, x, panels))
    if not layout:
        return None
    plt = _plt()
    ncols = max(len(p) for _, _, _, p in layout)
    fig, axes = plt.subplots(len(layout), ncols, figsize=(2.9 * ncols, 2.3 * len(layout)), squeeze=False)
    for i, (name, rows, x, panels) in enumerate(layout):
        span = _warmup_span(rows, x)
        for j in range(ncols):
            ax = axes[i][j]
            if j >= len(panels):
                ax.axis("off")
                continue
            title, ylabel, series, base = panels[j]
            for key, label in series:
                pts = [(r[x], _num(r[key])) for r in rows if key in r and x in r]
                if pts:
                    sparse = len(pts) < 0.5 * len(rows) or len(pts) < 8
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if sparse else "-", markersize=3,
                            linewidth=1.2, label=label or key)
            if base:
                for bkey in base:
                    pts = [(r[x], _num(r[bkey])) for r in rows if bkey in r and x in r]
                    if pts:
                        ax.plot([p[0] for p in pts], [p[1] for p in pts], "--", color="0.3", linewidth=1,
                                label=f"{REFERENCE} baseline")
                        break
            if span is not None:
                ax.axvspan(span[0], span[1], color="tab:orange", alpha=0.12, linewidth=0,
                           label="λ warm-up" if j == 0 else None)
            ax.set_title(f"{name}: {title}")
            ax.set_xlabel(x)
            ax.set_ylabel(ylabel)
            ax.grid(linewidth=0.4, alpha=0.5)
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 4), useOffset=False)
            handles, labels = ax.get_legend_handles_labels()
            if len(handles) > 1:
                ax.legend(frameon=False, fontsize=7)
    return _save(fig, path)


def ablation_plot(cells: list[dict[str, Any]], path: Path) -> list[Path]:
    """Per ablation cell: delta cosine, centered cosine and accuracy of the trained generator,
    with the mean-delta baseline's centered cosine as a reference line."""
    plt = _plt()
    names = [c["cell"] for c in cells]
    panels = (("delta_cosine", "delta cosine", None), ("centered_cosine", "centered cosine", "mean_delta_centered_cosine"),
              ("accuracy", "task accuracy", None))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels) + 1.5, 0.3 * len(names) + 1.4),
                             sharey=True, squeeze=False)
    ys = list(range(len(names)))
    for ax, (key, label, ref) in zip(axes[0], panels):
        vals = [_num(c.get(key)) for c in cells]
        # dots, not bars: the axis is zoomed to the values, and a bar's length would mean nothing
        ax.plot(vals, ys, "o", color="tab:blue", markersize=5)
        refs = [_num(c.get(ref)) for c in cells] if ref else []
        refs = [r for r in refs if not math.isnan(r)]
        if refs:
            ax.axvline(sum(refs) / len(refs), color="0.25", linestyle="--", linewidth=1, label=REFERENCE)
            ax.legend(loc="lower right", frameon=False, fontsize=7)
        finite = [v for v in vals if not math.isnan(v)] + refs
        if key != "centered_cosine" and finite and min(finite) > 0:
            lo, hi = min(finite), max(finite)
            span = max(hi - lo, 0.02)
            ax.set_xlim(max(0.0, lo - 0.3 * span), hi + 0.1 * span)
        if key == "centered_cosine":
            ax.axvline(0, color="black", linewidth=0.5)
        ax.set_xlabel(label)
        ax.grid(linewidth=0.4, alpha=0.5)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels(names, fontsize=7)
    axes[0][0].invert_yaxis()
    fig.suptitle("Ablation grid: multitask generator per cell (mean over evaluated tasks)", fontsize=10)
    return _save(fig, path)


def crossfold_plot(folds: dict[str, list[dict[str, Any]]], path: Path,
                   keys: Sequence[tuple[str, str]] = (("centered_cosine", "centered cosine"),
                                                      ("accuracy", "task accuracy"))) -> Optional[list[Path]]:
    """Several folds (fold name -> that fold's rows, one per method; `eval` passes each held-out
    task's rows): each fold a dot, the mean across folds with its 95% t-interval, per method. One
    fold: each method's value, its accuracy with the exact (Clopper-Pearson) 95% interval of a
    proportion over the fold's questions."""
    if not folds:
        return None
    if len(folds) == 1:
        return _one_fold_plot(*next(iter(folds.items())), path, keys)
    methods = list(dict.fromkeys(s["method"] for rows in folds.values() for s in rows))
    colors = _colors(methods)
    fig, axes, ys = _method_rows(methods, len(keys))
    for ax, (key, label) in zip(axes[0], keys):
        for y, m in zip(ys, methods):
            vals = [_num(s.get(key)) for rows in folds.values() for s in rows if s["method"] == m]
            vals = [v for v in vals if not math.isnan(v)]
            if not vals:
                continue
            ax.plot(vals, [y - 0.18] * len(vals), "o", color=colors[m], alpha=0.5, markersize=4)
            mean = sum(vals) / len(vals)
            half = _t95(len(vals)) * _sd(vals) / math.sqrt(len(vals)) if len(vals) > 1 else 0.0
            ax.errorbar([mean], [y], xerr=[[half], [half]], fmt="D", color=colors[m], capsize=3, markersize=5)
        ax.set_xlabel(label)
    return _method_rows_done(fig, axes, ys, methods, path,
                             f"Across {len(folds)} folds: each fold (dots), mean and 95% t-interval (diamond)")


def _method_rows(methods: list[str], panels: int):
    """A figure of ``panels`` side by side, one row per method (the y axis shared)."""
    plt = _plt()
    fig, axes = plt.subplots(1, panels, figsize=(3.4 * panels + 1.0, 0.35 * len(methods) + 1.5),
                             sharey=True, squeeze=False)
    return fig, axes, list(range(len(methods)))


def _method_rows_done(fig, axes, ys, methods, path: Path, title: str) -> list[Path]:
    for ax in axes[0]:
        ax.grid(axis="x", linewidth=0.4, alpha=0.5)
    axes[0][0].set_yticks(ys)
    axes[0][0].set_yticklabels(methods)
    axes[0][0].invert_yaxis()
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def _one_fold_plot(fold: str, rows: list[dict[str, Any]], path: Path,
                   keys: Sequence[tuple[str, str]]) -> Optional[list[Path]]:
    from scipy.stats import binomtest

    methods = list(dict.fromkeys(s["method"] for s in rows))
    colors = _colors(methods)
    n = next((int(s["n_questions"]) for s in rows if s.get("n_questions")), 0)
    fig, axes, ys = _method_rows(methods, len(keys))
    for ax, (key, label) in zip(axes[0], keys):
        for y, m in zip(ys, methods):
            v = _num(next((s.get(key) for s in rows if s["method"] == m), None))
            if math.isnan(v):
                continue
            lo = hi = 0.0
            if key == "accuracy" and n:  # an accuracy is a proportion of the fold's n questions
                ci = binomtest(round(v * n), n).proportion_ci(0.95, method="exact")
                lo, hi = v - ci.low, ci.high - v
            ax.errorbar([v], [y], xerr=[[lo], [hi]], fmt="D", color=colors[m], capsize=3, markersize=5)
        ax.set_xlabel(label + (f" (exact 95% interval, n = {n})" if key == "accuracy" and n else ""))
    return _method_rows_done(fig, axes, ys, methods, path, f"Held-out fold {fold}: each method")


def _sd(v: list[float]) -> float:
    m = sum(v) / len(v)
    return math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1))


def _t95(n: int) -> float:
    """Two-sided 95% quantile of Student's t with n - 1 degrees of freedom (the one the results tables use)."""
    from .stats import t_quantile

    return t_quantile(0.975, n - 1)
