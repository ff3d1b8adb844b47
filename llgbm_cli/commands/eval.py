"""`llgbm eval`: compare methods on held-out tasks (delta metrics, task accuracy, acceptance checks)."""

from __future__ import annotations

import inspect
from typing import List, Optional

import typer

from ..services.eval_methods import fixed_names
from ..training.methods import TRAINED
from .common import console, emit, force_option, out_option, overrides_from, progress, set_option, state, with_flags


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
        help=f"Method (repeatable): {', '.join(fixed_names())}, merge:<strategy>, or an adapter "
        "folder. Default: [eval] methods.",
    ),
    task: Optional[List[str]] = typer.Option(None, "--task", "-t", help="Task to evaluate (repeatable; default: every zoo task): a zoo task, or any registered task, scored without a teacher."),
    holdout: Optional[List[str]] = typer.Option(
        None, "--holdout",
        help="Leave-one-out task (repeatable): evaluated as held out; generators or an index that saw it are refused.",
    ),
    test_sample: Optional[int] = typer.Option(None, "--test-sample", help="eval.test_sample: questions per task."),
    # here: one --<method>-checkpoint per trained method (with_checkpoint_options)
    folds: Optional[str] = typer.Option(
        None, "--folds",
        help="Cross-validate: leave-one-task-out over `all` zoo tasks or comma-separated ones; each fold trains "
        "what the methods need without its task, then evaluates it (resumable; default --out <workdir>/eval-cv).",
    ),
    out: Optional[str] = out_option("Output folder (default: <workdir>/eval)."),
    force: bool = force_option("Replace an existing output folder."),
    strict: Optional[bool] = typer.Option(None, "--strict/--no-strict", help="Exit 1 when an acceptance check fails (CI)."),
    set_: Optional[List[str]] = set_option(),
    **checkpoints: Optional[str],
) -> None:
    """Evaluate methods per task: delta MSE / cosine / centered cosine / task identification against the
    teacher delta, and task accuracy vs base; writes results.{json,csv,md}, plots and acceptance checks.

    With --folds, cross-validate instead: one fold per task (leave-one-task-out); each fold trains
    multitask/b1 (b2: its predictor and index) without its task into <out>/folds/<task>/runs, evaluates the task held out, and keeps
    every question's score (questions.json). results.{md,json,csv} at <out> give per-fold rows with
    the differences to base and mean-delta (exact McNemar p, Holm-adjusted over the run, bootstrap
    interval), the mean over folds with a 95% t-interval and a Wilcoxon p, and the oracle-best
    reference (the best single training adapter on the task's test questions). Scored questions found
    in a train split the evaluation depends on follow eval.contamination (drop, refuse or allow).
    Finished folds are skipped on a rerun; --force starts afresh.

    Runs sharded under `accelerate launch -m llgbm_cli eval ...`: the scoring cells and delta
    batches are dealt to the processes; the same results as one process, written by the main one."""
    from pathlib import Path

    from ..services.eval import enforce_checks, run_eval

    ov, flags = with_flags(overrides_from(set_), {"eval.test_sample": ("--test-sample", test_sample),
                                                  "eval.strict": ("--strict", strict or None)})
    given_checkpoints = {m: checkpoints.get(_checkpoint_param(m)) for m in TRAINED}
    if folds is not None:
        clash = [f for f, v in (("--holdout", holdout), ("--task", task),
                                *((TRAINED[m].flag, v) for m, v in given_checkpoints.items()),
                                ("--strict", strict)) if v]
        if clash:
            raise typer.BadParameter(f"cannot be combined with {', '.join(clash)} (each fold holds out its own task "
                                     "and trains its own checkpoints)", param_hint="--folds")
        return _cv(ctx, folds, method, out, force, ov, flags)
    resolved = state(ctx).load_config(ov, flags=flags)
    cks = {m: Path(v) for m, v in given_checkpoints.items() if v}
    with progress(ctx) as rep:
        result = run_eval(resolved, methods=method, tasks=task, holdout=holdout, out=out, force=force,
                          checkpoints=cks, overrides=overrides_from(set_), progress=rep)
    if not result.is_main:  # under accelerate launch the main process reports and writes
        return
    emit(ctx, result.to_dict(), render_eval)
    if resolved.config.eval.strict:
        enforce_checks(result)


def render_cv(r: dict) -> None:
    from rich.table import Table

    from ..evaluation.reports import fmt, signed

    def ci(s, key, f=fmt):  # 3 digits on the terminal (4 in results.md): an interval fits a narrow column
        if s.get(key) is None:
            return "—"
        g = (lambda v: signed(v, 3)) if f is signed else (lambda v: "—" if v is None else f"{v:.3f}")  # noqa: E731
        return g(s[key]) + (f" [{g(s[key + '_low'])}, {g(s[key + '_high'])}]" if s.get(key + "_low") is not None else "")

    c = console()
    t = Table(title=f"cross-validation over {len(r['folds'])} folds ({', '.join(r['folds'])}): "
                    f"mean [95% t-interval across folds]")
    t.caption = ("W/L: folds won/lost against base at Holm-adjusted p < 0.05. oracle-best: a reference, not a "
                 "method (the best other task's teacher, chosen with the test labels)")
    for col in ("Method", "Task Accuracy", "Δ vs base", "Δ vs mean-delta", "Gap to oracle", "Centered Cos",
                "W/L vs base"):  # numbers wrap at a narrow terminal instead of being cut, header words stay whole
        t.add_column(col, justify="left" if col == "Method" else "right", no_wrap=col == "Method",
                     overflow="fold", min_width=max(len(w) for w in col.split()) if col != "Method" else None)
    for s in r["summary"]:
        if s.get("reference"):
            t.add_row(s["method"], ci(s, "accuracy"), "", "", "", "", "", style="dim")
            continue
        t.add_row(s["method"], ci(s, "accuracy"), ci(s, "accuracy_vs_base", signed), ci(s, "vs_mean_delta", signed),
                  ci(s, "gap_to_oracle", signed), ci(s, "centered_cosine"),
                  f"{s['wins_vs_base']}/{s['losses_vs_base']}")
    c.print(t)
    c.print(f"folds run: {', '.join(r['ran']) or 'none'}; already done: {', '.join(r['skipped']) or 'none'}")
    _render_fold_checks(c, r.get("checks") or {}, r["folds"])
    pngs = [p for p in r.get("plots") or [] if p.endswith(".png")]
    c.print(f"results: {r['files'].get('md')} (json, csv beside it); per-question scores: "
            f"{r['out']}/folds/<fold>/questions.json; each fold's evaluation and figures: {r['out']}/folds/<fold>/eval/"
            + (f"; plot: {', '.join(pngs)} (PDF and SVG beside it)" if pngs else ""))


def _render_fold_checks(c, checks: dict, folds: list) -> None:
    """One line per acceptance check of each fold for a run of a few folds, else a count per fold."""
    from ..evaluation.cv_stats import FEW_FOLDS, check_counts

    style = {"pass": "green", "fail": "bold red", "skip": "dim"}
    for k in folds:
        cs = checks.get(k) or []
        if len(folds) <= FEW_FOLDS:
            for ch in cs:
                c.print(f"[{style.get(ch['status'], '')}]{str(ch['status']).upper():4}[/] "
                        + (f"{k}: " if len(folds) > 1 else "") + f"{ch['name']}: {ch['detail']}")
        elif cs:
            passed, failed = check_counts(cs)
            c.print(f"checks {k}: {passed} pass, {len(failed)} fail" + (f" ({'; '.join(failed)})" if failed else ""))


def _cv(ctx: typer.Context, folds: str, method, out, force: bool, ov: dict, flags: dict) -> None:
    from ..services.cv import run_cv

    resolved = state(ctx).load_config(ov, flags=flags)
    with progress(ctx) as rep:
        result = run_cv(resolved, folds=folds, methods=method, out=out, force=force, overrides=ov, progress=rep)
    if not result.is_main:  # under accelerate launch the main process reports and writes
        return
    emit(ctx, result.to_dict(), render_cv)


def _checkpoint_param(method: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in method) + "_checkpoint"


def with_checkpoint_options(fn):
    """``fn`` with one ``--<method>-checkpoint`` option per trained method (its descriptor's flag and
    help) in place of its ``**checkpoints``, after ``--test-sample``: what Typer reads."""
    sig = inspect.signature(fn, eval_str=True)
    params = [p for p in sig.parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
    at = [p.name for p in params].index("test_sample") + 1
    extra = [inspect.Parameter(_checkpoint_param(m.name), inspect.Parameter.POSITIONAL_OR_KEYWORD,
                               default=typer.Option(None, m.flag, help=m.checkpoint_help), annotation=Optional[str])
             for m in TRAINED.values()]

    def command(**kwargs):
        return fn(**kwargs)

    command.__signature__ = sig.replace(parameters=params[:at] + extra + params[at:])
    command.__doc__, command.__name__ = fn.__doc__, fn.__name__
    return command


def register(app: typer.Typer) -> None:
    app.command("eval")(with_checkpoint_options(eval_cmd))
