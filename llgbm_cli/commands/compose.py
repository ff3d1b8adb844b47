"""`llgbm compose`: few-shot composition of zoo adapters for a task (CMA-ES over merge weights)."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, force_option, out_option, progress, state


def compose_cmd(
    ctx: typer.Context,
    task: str = typer.Option(..., "--task", help="The task to compose for (any registered task with a train split; "
                             "see `llgbm data list`)."),
    out: str = out_option("Adapter folder to write.", required=True),
    adapters: Optional[List[str]] = typer.Argument(None, help="Zoo adapter ids to compose (default: the latest "
                                                   "teacher of every other task)."),
    examples: Optional[int] = typer.Option(None, "--examples", "-k", min=1, help="Labelled train examples of the task "
                                           "(default: compose.examples)."),
    top_n: Optional[int] = typer.Option(None, "--top-n", min=0, help="Keep the N candidates with the lowest loss "
                                        "alone on the examples (0: all; default: compose.top_n)."),
    budget: Optional[int] = typer.Option(None, "--budget", min=3, help="Loss evaluations of the search "
                                         "(default: compose.budget)."),
    force: bool = force_option("Overwrite --out if it exists."),
) -> None:
    """Search merge weights over zoo adapters on k labelled train examples of a task (few-shot, as LoraHub)."""
    from ..services.compose import run_compose

    resolved = state(ctx).load_config()
    with progress(ctx) as rep:
        result = run_compose(resolved, task=task, out=out, adapters=adapters, k=examples, top_n=top_n,
                             budget=budget, force=force, progress=rep)

    def render(r):
        c = console()
        chosen = [x for x in r.candidates if x["chosen"]]
        c.print(f"{r.out}: {len(chosen)} adapters composed for {r.task} (few-shot: {len(r.examples)} labelled train "
                f"examples, rank {r.rank}) in {r.seconds:.1f}s, {r.evaluations} loss evaluations")
        c.print(f"  loss {r.loss:.4f} (cross-entropy {r.cross_entropy:.4f}); uniform start {r.start_loss:.4f}; "
                f"base model {r.zero_loss:.4f}")
        for x in sorted(chosen, key=lambda x: -abs(x["weight"])):
            c.print(f"  {x['weight']:+.3f}  {x['id']} ({x['task']}; loss alone {x['loss_alone']:.4f})")
        for n in r.notes:
            c.print(f"  note: {n}")

    emit(ctx, result, render)


def register(app: typer.Typer) -> None:
    app.command("compose")(compose_cmd)
