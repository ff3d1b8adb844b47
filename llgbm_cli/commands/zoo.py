"""`llgbm zoo build|add|score|list`: the teacher zoo."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, force_option, overrides_from, progress, set_option, state, with_flags

zoo_app = typer.Typer(help="Teacher LoRA zoo: build trajectories, register adapters, score them.",
                      no_args_is_help=True)


def _split(values: Optional[List[str]]) -> Optional[list[str]]:
    if not values:
        return None
    return [t.strip() for v in values for t in v.split(",") if t.strip()]


@zoo_app.command("build")
def build_cmd(
    ctx: typer.Context,
    tasks: Optional[List[str]] = typer.Option(None, "--tasks", help="Tasks to train teachers on: presets or "
                                              "[tasks.NAME] tables (comma separated or repeated; default: [zoo] tasks)."),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="Optimizer steps per teacher ([zoo] steps)."),
    checkpoints: Optional[int] = typer.Option(None, "--checkpoints", min=1,
                                              help="Checkpoints kept per teacher after warm-up ([zoo] checkpoints)."),
    force: bool = force_option("Retrain and overwrite finished checkpoints."),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Train one LoRA teacher trajectory per task; a rerun resumes and skips finished checkpoints.

    Runs sharded under `accelerate launch -m llgbm_cli zoo build ...`: whole trajectories per
    process, the same zoo as one process; only the main process writes zoo.jsonl and reports.
    """
    from ..services.zoo import build_zoo

    ov, flags = with_flags(overrides_from(set_), {"zoo.tasks": ("--tasks", _split(tasks)),
                                                  "zoo.steps": ("--steps", steps),
                                                  "zoo.checkpoints": ("--checkpoints", checkpoints)})
    resolved = state(ctx).load_config(ov, flags=flags)
    with progress(ctx) as rep:
        result = build_zoo(resolved, force=force, progress=rep)
    if not result.is_main:
        return

    def render(r):
        d = r.to_dict()
        for t in d["tasks"]:
            sps = f", {t['seconds_per_step']:.3f} s/step" if t["seconds_per_step"] else ""
            resumed = f", resumed from step {t['resumed_from']}" if t["resumed_from"] else ""
            console().print(f"{t['task']}: {len(t['built'])} built, {len(t['skipped'])} already done"
                            f"{resumed} ({t['steps_run']} steps in {t['seconds']:.1f} s{sps})")
        procs = f", {d['processes']} processes" if d["processes"] > 1 else ""
        console().print(f"zoo: {d['zoo']} ({d['built']} built, {d['skipped']} skipped, {d['seconds']:.1f} s{procs})")
        for note in d["notes"]:
            console().print(f"note: {note}", markup=False, highlight=False)

    emit(ctx, result, render)


@zoo_app.command("add")
def add_cmd(
    ctx: typer.Context,
    paths: List[str] = typer.Argument(..., help="PEFT LoRA adapter folders."),
    task: str = typer.Option(..., "--task", help="Task the adapters are for: a preset or a [tasks.NAME] table "
                             "(see `llgbm data list`); condition prompts come from its train split."),
    force: bool = force_option("Replace manifest rows with the same id."),
) -> None:
    """Register existing PEFT adapters in the zoo after checking they fit the base model."""
    from ..services.zoo import add_adapters

    resolved = state(ctx).load_config()
    result = add_adapters(resolved, paths, task, force=force)

    def render(r):
        for a in r.added:
            console().print(f"added {a['id']} ({a['task']}): {a['path']}")

    emit(ctx, result, render)


@zoo_app.command("score")
def score_cmd(
    ctx: typer.Context,
    tasks: Optional[List[str]] = typer.Option(None, "--tasks", help="Tasks to score (default: every zoo task)."),
    test_sample: Optional[int] = typer.Option(None, "--test-sample", min=1,
                                              help="Held-out questions per task ([data] test_sample)."),
    checkpoints: str = typer.Option("all", "--checkpoints", help="`all` checkpoints or only the `last` per task."),
    scoring: Optional[str] = typer.Option(None, "--scoring", help="Multiple-choice scoring: `label` or `choice` "
                                          "(option text; reports acc and acc_norm) ([data] scoring)."),
    split: str = typer.Option("test", "--split", help="`test`: the task's test split; `heldout`: the train records "
                              "the task's first trajectory did not train on (zoo.data_fraction < 1), a validation "
                              "set for choosing teacher settings; scores run 0's checkpoints only."),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Each task's metric for the base model and every teacher on a seeded held-out sample of its task."""
    from ..services.zoo import score_zoo

    ov, flags = with_flags(overrides_from(set_), {"data.test_sample": ("--test-sample", test_sample),
                                                  "data.scoring": ("--scoring", scoring)})
    resolved = state(ctx).load_config(ov, flags=flags)
    with progress(ctx) as rep:
        report = score_zoo(resolved, tasks=_split(tasks), checkpoints=checkpoints, split=split, progress=rep)

    def render(r):
        from rich.table import Table

        d = r.to_dict()
        width = max((len(t["adapters"]) for t in d["tasks"].values()), default=0)
        where = ("held-out questions" if d["split"] == "test"
                 else "train records run 0 did not train on (--split heldout)")
        table = Table(title=f"metric on up to {d['test_sample']} {where} per task (seed {d['seed']})")
        for c in ["task", "metric", "n", "base"] + [f"ckpt {i + 1}" for i in range(width)] + ["best"]:
            table.add_column(c, justify="left" if c in ("task", "metric") else "right")
        for task, t in d["tasks"].items():
            names = [m for m in t["metrics"]["base"]] if t.get("metrics") else [t.get("metric", "acc")]
            for k, name in enumerate(names):
                def val(key):
                    return t["metrics"][key][name] if t.get("metrics") else (t["base"] if key == "base" else t["adapters"][key])
                cells = [f"{val(a):.3f}" for a in t["adapters"]] + [""] * (width - len(t["adapters"]))
                best = ("" if t["best"] is None or k else f"{t['best_accuracy']:.3f} ({t['best']})")
                label = name + (f" ({t['scoring']})" if t.get("scoring") else "")
                table.add_row(task if k == 0 else "", label, str(t["n"]), f"{val('base'):.3f}", *cells, best)
        console().print(table)
        b = d["beats_base"]
        console().print(f"teachers beat the base model on {b['count']} of {b['of']} tasks"
                        + (f": {', '.join(b['tasks'])}" if b["tasks"] else ""))
        if d["reused"]:
            console().print(f"{d['reused']} score(s) reused from the zoo's earlier report (same questions, weights "
                            "and scoring)")
        s = d["teacher_beats_base_2se"]
        console().print(f"the last checkpoint is ahead of base by >= 2 paired standard errors on {s['count']} of "
                        f"{s['of']} tasks" + (f": {', '.join(s['tasks'])}" if s["tasks"] else ""))
        x = d["teacher_beats_base_exact"]
        console().print(f"the last checkpoint beats base by the exact paired test (Holm-adjusted p < 0.05 over "
                        f"{x['of']} tasks) on {x['count']}" + (f": {', '.join(x['tasks'])}" if x["tasks"] else ""))
        line = across_line(d.get("teacher_vs_base_across_tasks"))
        if line:
            console().print(line)

    emit(ctx, report, render)


def across_line(a: Optional[dict]) -> Optional[str]:
    """`zoo score`'s line on the teachers as a group (one difference to base per task), or None where
    there is no interval (fewer than two tasks)."""
    if not a or a.get("low") is None:
        return None
    sign = "—" if a.get("sign_p") is None else f"{a['sign_p']:.3g}"
    wil = "—" if a.get("wilcoxon_p") is None else f"{a['wilcoxon_p']:.3g}"
    return (f"across the {a['n']} tasks the last checkpoint is {a['mean']:+.3f} [{a['low']:+.3f}, {a['high']:+.3f}] "
            f"above base (above on {a['above']}, below on {a['below']}; Wilcoxon p {wil}, sign test p {sign})")


@zoo_app.command("separation")
def separation_cmd(ctx: typer.Context, set_: Optional[List[str]] = set_option()) -> None:
    """Leave-one-out nearest-neighbour task accuracy of the teachers' cached deltas (raw and centered)."""
    from ..services.separation import zoo_separation

    report = zoo_separation(state(ctx).load_config(overrides_from(set_)))

    def render(d):
        from rich.table import Table

        table = Table(title=f"{d['adapters']} teacher deltas of {d['tasks']} tasks, probes {d['probes']}")
        for c in ("deltas", "left out", "NN task accuracy", "within-task cos", "between-task cos"):
            table.add_column(c, justify="left" if c in ("deltas", "left out") else "right")
        for kind in ("raw", "centered"):
            for lo, label in (("leave_one_checkpoint_out", "the checkpoint"), ("leave_one_trajectory_out", "its trajectory")):
                r = d[kind][lo]
                table.add_row(kind, label, f"{r['accuracy']:.3f} ({r['n']})", f"{r['within_task_cosine']:.3f}",
                              f"{r['between_task_cosine']:.3f}")
        console().print(table)

    emit(ctx, report, render)


@zoo_app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """List the zoo's adapters (id, task, step, source)."""
    from ..services.zoo import zoo_dir
    from ..zoo_manifest import Zoo

    zoo = Zoo.load(zoo_dir(state(ctx).load_config()))
    rows = [{"id": e.id, "task": e.task, "step": e.step, "source": e.source, "path": str(zoo.path_of(e)),
             "condition_prompts": len(e.condition)} for e in zoo.entries]

    def render(p):
        for r in p["adapters"]:
            console().print(f"{r['id']}\t{r['task']}\tstep {r['step']}\t{r['source']}\t{r['path']}")

    emit(ctx, {"zoo": str(zoo.folder), "adapters": rows}, render)


def register(app: typer.Typer) -> None:
    app.add_typer(zoo_app, name="zoo")
