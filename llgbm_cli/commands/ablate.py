"""`llgbm ablate`: the plans' ablation grid (train + eval per cell), or any cells under cross-validation
(``--folds``), resumable."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, force_option, out_option, overrides_from, progress, set_option, state, with_flags


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


def render_folds(r: dict) -> None:
    from rich.table import Table

    from ..evaluation.reports import fmt, signed

    c = console()
    t = Table(title=f"ablation over {len(r['folds'])} folds: each cell against the base cell, mean Δ accuracy "
                    "[95% t-interval across folds]")
    for col in ("Cell", "Method", "Δ vs base cell", "Wilcoxon p", "Better/worse (Holm p<0.05)"):
        t.add_column(col, justify="left" if col in ("Cell", "Method") else "right")
    for s in r["summary"]:
        span = signed(s["diff"]) + (f" [{signed(s['low'])}, {signed(s['high'])}]" if s.get("low") is not None else "")
        t.add_row(s["cell"], s["method"], span, fmt(s.get("wilcoxon_p"), 3), f"{s['better']}/{s['worse']}")
    c.print(t)
    c.print(f"comparison: {r['files'].get('md')} (json, csv beside it); each cell's tables: <cell>/results.md")


def ablate_cmd(
    ctx: typer.Context,
    cell: Optional[List[str]] = typer.Option(None, "--cell", help="Run only this cell (repeatable; names from --dry-run)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="ablation.total_steps: train steps per cell."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the grid's cells and which are done; run nothing."),
    folds: Optional[str] = typer.Option(
        None, "--folds",
        help="Cross-validate the cells (leave-one-task-out over `all` zoo tasks or comma-separated ones) beside the "
        "base cell, the project's own config; default cells: every [ablation.cells.NAME].",
    ),
    method: Optional[List[str]] = typer.Option(
        None, "--method", "-m", help="With --folds: method evaluated in every cell (repeatable; default: the cell's "
        "methods, else ablation.methods)."),
    out: Optional[str] = out_option("With --folds: output folder (default: <workdir>/<ablation.out>-folds)."),
    force: bool = force_option("With --folds: run every cell's folds afresh."),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Run the ablation grid from [ablation]: each cell trains the multitask generator with one setting
    changed and evaluates it; finished cells are skipped, so an interrupted run resumes.

    With --folds, each cell (declared as [ablation.cells.NAME] with `set = {...}`, or a grid cell named
    with --cell) is cross-validated like `eval --folds` into <out>/<cell>, and compared with the base
    cell on the same questions of every fold: exact paired tests, Holm-adjusted over the run, and the
    mean difference across folds with its t-interval and Wilcoxon p (<out>/comparison.md).

    Runs sharded under `accelerate launch -m llgbm_cli ablate ...`: whole cells per process, the
    same summary as one process, written by the main one."""
    from ..services.ablate import run_ablate

    ov = overrides_from(set_)
    if folds is not None:
        if dry_run:
            raise typer.BadParameter("cannot be combined with --dry-run", param_hint="--folds")
        from ..services.ablate_folds import run_ablate_folds

        resolved = state(ctx).load_config(*with_flags(ov, {"ablation.total_steps": ("--steps", steps)}))
        if resolved.config.ablation.total_steps is not None:  # every cell's, the base cell's too
            ov["train.multitask.total_steps"] = resolved.config.ablation.total_steps
        with progress(ctx) as rep:
            res = run_ablate_folds(resolved, folds=folds, cells=cell, methods=method, out=out, force=force,
                                   overrides=ov, progress=rep)
        if res.is_main:
            emit(ctx, res.to_dict(), render_folds)
        return
    clash = [f for f, v in (("--method", method), ("--out", out), ("--force", force)) if v]
    if clash:
        raise typer.BadParameter("only with --folds", param_hint=clash[0])
    resolved = state(ctx).load_config(*with_flags(ov, {"ablation.total_steps": ("--steps", steps)}))
    with progress(ctx) as rep:
        result = run_ablate(resolved, cells=cell, dry_run=dry_run, overrides=ov, progress=rep)
    if not result.is_main:  # under accelerate launch the main process reports
        return
    emit(ctx, result.to_dict(), render_ablate)


def register(app: typer.Typer) -> None:
    app.command("ablate")(ablate_cmd)
