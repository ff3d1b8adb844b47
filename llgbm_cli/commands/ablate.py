"""`llgbm ablate`: the plans' ablation grid (train + eval per cell), resumable."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, given, overrides_from, progress, set_option, state


def render_ablate(r: dict) -> None:
    from rich.table import Table

    from ..evaluation.reports import fmt, signed

    c = console()
    if r["dry_run"]:
        same = r.get("same_as") or {}
        t = Table(title=f"ablation grid: {len(r['cells'])} cells, {len(r['cells']) - len(same)} distinct settings "
                        f"-> {r['out']}")
        for col in ("cell", "group", "overrides", "done"):
            t.add_column(col)
        for cell in r["cells"]:
            done = f"same setting as {cell['same_as']}: not run" if cell.get("same_as") else ("yes" if cell["done"] else "")
            t.add_row(cell["cell"], cell["group"], ", ".join(f"{k}={v}" for k, v in cell["overrides"].items()), done)
        c.print(t)
        return
    t = Table(title=f"ablation: {len(r['ran'])} cells run, {len(r['skipped'])} already done")
    for col in ("Cell", "Delta Cosine", "Centered Cos", "Task ID", "Task Accuracy", "Δ vs base", "> λ=0 cos", "> λ=0 acc"):
        t.add_column(col, justify="left" if col == "Cell" else "right")
    for row in r["rows"]:
        t.add_row(row["cell"], fmt(row["delta_cosine"]), fmt(row["centered_cosine"]), fmt(row["task_identification"], 2),
                  fmt(row["accuracy"]), signed(row["accuracy_vs_base"]), fmt(row.get("beats_weights_only_cosine")),
                  fmt(row.get("beats_weights_only_accuracy")))
    c.print(t)
    for f in r.get("findings") or []:
        c.print(f"- {f}")
    c.print(f"summary: {r['files'].get('md')}; plot: {r['files'].get('plot')}")


def ablate_cmd(
    ctx: typer.Context,
    cell: Optional[List[str]] = typer.Option(None, "--cell", help="Run only this cell (repeatable; names from --dry-run)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="ablation.total_steps: train steps per cell."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the grid's cells and which are done; run nothing."),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Run the ablation grid from [ablation]: each cell trains the multitask generator with one setting
    changed and evaluates it; finished cells are skipped, so an interrupted run resumes.

    Runs sharded under `accelerate launch -m llgbm_cli ablate ...`: whole cells per process, the
    same summary as one process, written by the main one."""
    from ..services.ablate import run_ablate

    ov = overrides_from(set_)
    resolved = state(ctx).load_config({**ov, **given({"ablation.total_steps": steps})})
    with progress(ctx) as rep:
        result = run_ablate(resolved, cells=cell, dry_run=dry_run, overrides=ov, progress=rep)
    if not result.is_main:  # under accelerate launch the main process reports
        return
    emit(ctx, result.to_dict(), render_ablate)


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate_cmd)
