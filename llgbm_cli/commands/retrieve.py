"""`llgbm retrieve`: the adapters whose deltas are nearest to a text's predicted delta."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, force_option, out_option, overrides_from, progress, set_option, state


def retrieve_cmd(
    ctx: typer.Context,
    text: Optional[str] = typer.Argument(None, help="Condition text (a prompt of the task, or a description)."),
    prompts_file: Optional[str] = typer.Option(None, "--prompts-file", help="Prompts of one task (.txt lines or "
                                               ".jsonl with a text field), taken together as one condition."),
    adapter_delta: Optional[str] = typer.Option(None, "--adapter-delta", help="Query with the delta of this "
                                                "indexed adapter id (its nearest neighbours)."),
    top_k: Optional[int] = typer.Option(None, "--top-k", "-k", help="Adapters returned (default: retrieve.top_k)."),
    merge: Optional[str] = typer.Option(None, "--merge", help="Merge the top-k with this strategy (e.g. ties, "
                                        "linear), weighted by similarity; needs --out."),
    out: Optional[str] = out_option("Folder for the merged PEFT adapter."),
    force: bool = force_option("Replace an existing --out folder."),
    rank: Optional[str] = typer.Option(None, "--rank", help="predicted (by the predicted delta) or behaviour (the "
                                       "retrieve.candidates best re-ranked by how each acts on the query prompts); "
                                       "default: retrieve.rank."),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Predict a delta for TEXT with the B2 predictor and list the nearest adapters of the index."""
    from ..services.retrieve import read_prompts_file, retrieve

    ov = overrides_from(set_)
    if rank is not None:
        ov["retrieve.rank"] = rank
    resolved = state(ctx).load_config(ov, flags={"retrieve.rank": "--rank"} if rank is not None else None)
    prompts = read_prompts_file(prompts_file) if prompts_file else None
    with progress(ctx) as rep:
        result = retrieve(resolved, text=text, prompts=prompts, adapter_id=adapter_delta, k=top_k, merge=merge,
                          out=out, force=force, progress=rep)

    def render(r):
        from rich.table import Table

        c = console()
        behaviour = r.rank == "behaviour"
        t = Table(title=f"retrieve: {r.query}  ({r.index_kind} index{', re-ranked by behaviour' if behaviour else ''})")
        cols = ("rank", "adapter", "task", "score") + (("predicted", "predicted rank") if behaviour else ())
        for col in cols:
            t.add_column(col, justify="left" if col in ("adapter", "task") else "right")
        for h in r.hits:
            extra = (f"{h['predicted_score']:.4f}", str(h["predicted_rank"])) if behaviour else ()
            t.add_row(str(h["rank"]), h["id"], str(h["task"] or "-"), f"{h['score']:.4f}", *extra)
        c.print(t)
        if r.merged:
            w = ", ".join(f"{x:.3f}" for x in r.merged["weights"])
            c.print(f"merged ({r.merged['strategy']}, weights {w}) -> {r.merged['out']}")
        for n in r.notes:
            c.print(f"note: {n}")

    emit(ctx, result, render)


def register(app: typer.Typer) -> None:
    app.command("retrieve")(retrieve_cmd)
