"""Result files of an evaluation: ``results.json``, ``results.csv`` and ``results.md``.

``results.md`` follows the plans' table (Method | Delta MSE | Delta Cosine | Task Accuracy, plus
Δ vs base) and starts with the exact command that reproduces it.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Optional

from ..io import atomic_write_json, atomic_write_text

ROW_FIELDS = [
    "method", "task", "heldout", "delta_mse", "delta_cosine", "centered_cosine", "norm_ratio",
    "nearest_task", "identified", "accuracy", "accuracy_vs_base", "n_questions", "adapter",
]


def fmt(v: Any, digits: int = 4) -> str:
    """A number for a table: fixed digits, '—' for missing or NaN, yes/no for booleans."""
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        if math.isnan(v):
            return "—"
        if v != 0 and abs(v) < 10 ** -(digits - 1):
            return f"{v:.2e}"
        return f"{v:.{digits}f}"
    return str(v)


def signed(v: Optional[float], digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+.{digits}f}"


def clean(obj: Any) -> Any:
    """NaN/Inf to None, recursively, so results.json is strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [clean(v) for v in obj]
    return obj


def rows_csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r.get(k) is None else r.get(k)) for k in fields})
    return buf.getvalue()


def summary_table_md(summary: list[dict[str, Any]]) -> str:
    head = ("| Method | Delta MSE | Delta Cosine | Task Accuracy | Δ vs base | Centered Cosine | Task ID | "
            "Norm ratio | Task-specific |\n|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {s['method']} | {fmt(s['delta_mse'], 6)} | {fmt(s['delta_cosine'])} | {fmt(s['accuracy'])} | "
        f"{signed(s['accuracy_vs_base'])} | {fmt(s['centered_cosine'])} | {fmt(s['task_identification'], 2)} | "
        f"{fmt(s['norm_ratio'], 3)} | {fmt(s.get('task_specific'))} |\n"
        for s in summary
    )
    return head + body


def rows_table_md(rows: list[dict[str, Any]]) -> str:
    head = ("| Method | Task | Held out | Delta MSE | Delta Cosine | Centered Cosine | Nearest teacher | "
            "Task Accuracy | Δ vs base |\n|---|---|---|---|---|---|---|---|---|\n")
    body = "".join(
        f"| {r['method']} | {r['task']} | {fmt(r['heldout'])} | {fmt(r['delta_mse'], 6)} | {fmt(r['delta_cosine'])} | "
        f"{fmt(r['centered_cosine'])} | {r['nearest_task']} | {fmt(r['accuracy'])} | {signed(r['accuracy_vs_base'])} |\n"
        for r in rows
    )
    return head + body


def checks_md(checks: list[dict[str, Any]]) -> str:
    if not checks:
        return "No acceptance checks applied.\n"
    head = "| Check | Result | Measured |\n|---|---|---|\n"
    return head + "".join(f"| {c['name']} | {c['status'].upper()} | {c['detail']} |\n" for c in checks)


def eval_results_md(result: dict[str, Any]) -> str:
    from ..tasks.overlap import summary_line

    held = result.get("holdout") or []
    lines = [
        "# llgbm evaluation",
        "",
        "Reproduce with:",
        "",
        "```bash",
        result["command"],
        "```",
        "",
        f"Base model `{result['base_model']}`; tasks: {', '.join(result['tasks'])}; "
        f"{result['test_sample']} test questions per task (seed {result['seed']}).",
        ("Leave-one-out: held-out tasks " + ", ".join(held) + " (no evaluated generator, index or mean was trained "
         "on their teachers)." if held else "No --holdout: tasks marked `Held out = no` were seen in training by that "
         "method."),
        *([f"Outside the zoo: {', '.join(result['no_teacher'])} (no teacher adapter, so no method was trained on it, "
           "and no delta metric against a teacher exists: delta MSE, cosines, norm ratio and Task ID are left "
           "empty, not zero; the nearest-teacher column says which zoo task's teacher each delta lies nearest to)."]
          if result.get("no_teacher") else []),
        "",
        summary_line(result.get("contamination") or []),
        "",
        "Centered cosine subtracts the mean delta of the training adapters from both deltas; Task ID is the "
        "share of tasks whose delta is nearest to their own teacher among all teachers. A method is called "
        "task-specific only where it beats `mean-delta` on both.",
        "",
        _chance_line(result.get("rows") or []),
        "",
        "## Summary (mean over tasks)",
        "",
        summary_table_md([s for s in result["summary"] if s.get("regime", "zero-shot") != "few-shot"]),
        "## Per task",
        "",
        rows_table_md([r for r in result["rows"] if r.get("regime", "zero-shot") != "few-shot"]),
        *few_shot_md(result),
        *task_probe_md(result),
        "## Acceptance checks",
        "",
        checks_md(result.get("checks") or []),
    ]
    return "\n".join(lines)


def task_probe_md(result: dict[str, Any]) -> list[str]:
    """The delta metrics on each task's own prompts (``eval.task_probes``), when measured."""
    rows = [r for r in result.get("rows") or [] if "task_probe_centered_cosine" in r]
    if not rows:
        return []
    out = ["## Delta metrics on each task's own prompts", "",
           "Every delta measured again on prompts of the evaluated task's train split (never its test questions): "
           "cosine to the task's teacher there, and centered (both minus the training teachers' mean delta there).",
           "", "| Method | Task | Cosine | Centered Cosine |", "|---|---|---|---|"]
    out += [f"| {r['method']} | {r['task']} | {fmt(r.get('task_probe_cosine'))} | "
            f"{fmt(r.get('task_probe_centered_cosine'))} |" for r in rows]
    return out + [""]


def few_shot_md(result: dict[str, Any]) -> list[str]:
    """The few-shot methods' section (empty when none ran): apart from the zero-shot tables, since
    these methods read labelled train examples of the evaluated task, which no zero-shot method does."""
    summary = [s for s in result.get("summary") or [] if s.get("regime") == "few-shot"]
    if not summary:
        return []
    rows = [r for r in result.get("rows") or [] if r.get("regime") == "few-shot"]
    ks = sorted({len(info.get("examples") or []) for m in (s["method"] for s in summary)
                 for info in ((result.get("runs") or {}).get(m, {}).get("tasks") or {}).values()})
    k = "/".join(map(str, ks)) if ks else "k"
    return ["## Few-shot (a separate regime)", "",
            f"These methods read {k} labelled examples of each evaluated task's train split (never its test "
            "questions); the zero-shot methods above read none. Compare them with base and with each other, "
            "not with the zero-shot rows.", "",
            summary_table_md(summary), rows_table_md(rows)]


def _chance_line(rows: list[dict[str, Any]]) -> str:
    """Chance accuracy per task and the 95% interval half-width at this sample size."""
    import math

    seen: dict[str, tuple[float, int]] = {}
    for r in rows:
        if r.get("chance") is not None and r["task"] not in seen:
            seen[r["task"]] = (r["chance"], int(r.get("n_questions") or 0))
    if not seen:
        return ""
    parts = [f"{t} {c:.2f}" + (f" (±{1.96 * math.sqrt(c * (1 - c) / n):.2f} at n = {n})" if n else "")
             for t, (c, n) in seen.items()]
    return ("Chance accuracy (1 / options; in brackets the 95% interval half-width of an accuracy at that "
            "level): " + ", ".join(parts) + ".")


def write_results(folder: Path, result: dict[str, Any]) -> dict[str, str]:
    """Write the three result files into ``folder``; returns their paths."""
    folder = Path(folder)
    res = clean(result)
    paths = {"json": folder / "results.json", "csv": folder / "results.csv", "md": folder / "results.md"}
    atomic_write_json(paths["json"], res)
    atomic_write_text(paths["csv"], rows_csv(res["rows"], ROW_FIELDS))
    atomic_write_text(paths["md"], eval_results_md(res))
    return {k: str(v) for k, v in paths.items()}
