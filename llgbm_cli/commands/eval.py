"""`llgbm eval`: compare methods on held-out tasks (delta metrics, task accuracy, acceptance checks)."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, force_option, given, out_option, overrides_from, progress, set_option, state


def render_eval(r: dict) -> None:
    from rich.table import Table

    from ..evaluation.reports import fmt, signed

    c = console()
    held = r.get("holdout") or []
    t = Table(title=f"eval on {', '.join(r['tasks'])}" + (f" (held out: {', '.join(held)})" if held else ""))
    for col in ("Method", "Delta MSE", "Delta Cosine", "Task Accuracy", "Δ vs base", "Centered Cos", "Task ID",
                "Norm ratio", "Task-specific"):
        t.add_column(col, justify="left" if col == "Method" else "right")
    for s in r["summary"]:
        t.add_row(s["method"], fmt(s["delta_mse"], 6), fmt(s["delta_cosine"]), fmt(s["accuracy"]),
                  signed(s["accuracy_vs_base"]), fmt(s["centered_cosine"]), fmt(s["task_identification"], 2),
                  fmt(s["norm_ratio"], 3), fmt(s.get("task_specific")))
    c.print(t)
    style = {"pass": "green", "fail": "bold red", "skip": "dim"}
    for ch in r.get("checks") or []:
        c.print(f"[{style[ch['status']]}]{ch['status'].upper():4}[/] {ch['name']}: {ch['detail']}")
    c.print(f"results: {r['files'].get('md')} (json, csv beside it); plots: "
            f"{', '.join(p for p in r.get('plots') or [] if p.endswith('.png'))} (PDF and SVG beside each)")


def eval_cmd(
    ctx: typer.Context,
    method: Optional[List[str]] = typer.Option(
        None, "--method", "-m",
        help="Method (repeatable): base, teacher, mean-delta, multitask, b1, b2, merge:<strategy>, or an adapter "
        "folder. Default: [eval] methods.",
    ),
    task: Optional[List[str]] = typer.Option(None, "--task", "-t", help="Task to evaluate (repeatable; default: every zoo task)."),
    holdout: Optional[List[str]] = typer.Option(
        None, "--holdout",
        help="Leave-one-out task (repeatable): evaluated as held out; generators or an index that saw it are refused.",
    ),
    test_sample: Optional[int] = typer.Option(None, "--test-sample", help="eval.test_sample: questions per task."),
    multitask_checkpoint: Optional[str] = typer.Option(None, "--multitask-checkpoint", help="Generator checkpoint folder for `multitask`."),
    b1_checkpoint: Optional[str] = typer.Option(None, "--b1-checkpoint", help="Generator checkpoint folder for `b1`."),
    out: Optional[str] = out_option("Output folder (default: <workdir>/eval)."),
    force: bool = force_option("Replace an existing output folder."),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict", help="Exit 1 when an acceptance check fails (CI)."),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Evaluate methods per task: delta MSE / cosine / centered cosine / task identification against the
    teacher delta, and task accuracy vs base; writes results.{json,csv,md}, plots and acceptance checks.

    Runs sharded under `accelerate launch -m llgbm_cli eval ...`: the scoring cells and delta
    batches are dealt to the processes; the same results as one process, written by the main one."""
    from pathlib import Path

    from ..services.eval import enforce_checks, run_eval

    ov = overrides_from(set_)
    ov.update(given({"eval.test_sample": test_sample, "eval.strict": strict or None}))
    resolved = state(ctx).load_config(ov)
    cks = {k: Path(v) for k, v in (("multitask", multitask_checkpoint), ("b1", b1_checkpoint)) if v}
    with progress(ctx) as rep:
        result = run_eval(resolved, methods=method, tasks=task, holdout=holdout, out=out, force=force,
                          checkpoints=cks, overrides=overrides_from(set_), progress=rep)
    if not result.is_main:  # under accelerate launch the main process reports and writes
        return
    emit(ctx, result.to_dict(), render_eval)
    if resolved.config.eval.strict:
        enforce_checks(result)


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_cmd)
