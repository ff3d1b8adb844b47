"""`llgbm data list|show`: the shipped benchmark pack."""

from __future__ import annotations

import typer

from .common import console, emit

data_app = typer.Typer(help="The shipped multiple-choice data pack.", no_args_is_help=True)


@data_app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """List the shipped datasets with their split sizes."""
    from ..data import dataset_info, list_datasets

    rows = [{"name": n, **dataset_info(n)} for n in list_datasets()]

    def render(rows):
        from rich.table import Table

        t = Table(title="shipped datasets (LLM-Adapters release, ODC-By 1.0)")
        for c in ("name", "train", "test", "options", "note"):
            t.add_column(c)
        for r in rows:
            t.add_row(r["name"], str(r["counts"]["train"]), str(r["counts"]["test"]),
                      "/".join(map(str, r["n_options"])), r.get("note", ""))
        console().print(t)

    emit(ctx, {"datasets": rows}, lambda p: render(p["datasets"]))


@data_app.command("show")
def show_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Dataset name."),
    split: str = typer.Option("test", help="train or test."),
    n: int = typer.Option(3, "-n", min=1, help="How many records."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print only the prompts, one {\"text\": ...} JSON line each "
                               "(a prompts file for `retrieve --prompts-file` or `generate --prompts-file`)."),
) -> None:
    """Print a few records of a dataset."""
    import json

    from ..data import load_dataset

    recs = load_dataset(name, split)[:n]
    if jsonl:
        for r in recs:
            typer.echo(json.dumps({"text": r.prompt}))
        return
    payload = [{"id": r.id, "prompt": r.prompt, "options": list(r.options), "answer": r.answer} for r in recs]

    def render(p):
        for r in p["records"]:
            console().print(f"[bold]{r['id']}[/]\n{r['prompt']}\n→ {r['options'][r['answer']]}\n")

    emit(ctx, {"records": payload}, render)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
