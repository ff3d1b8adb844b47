"""`llgbm data list|show|check`: the registered tasks (shipped presets and the project's own)."""

from __future__ import annotations

import typer

from .common import console, emit, state

data_app = typer.Typer(help="Tasks: the shipped presets and the project's [tasks.NAME] tables.", no_args_is_help=True)


@data_app.command("list")
def list_cmd(ctx: typer.Context) -> None:
    """List every registered task with its kind, metric, split sizes and source."""
    from ..services.data import list_tasks

    rows = list_tasks(state(ctx).load_config())

    def render(rows):
        from rich.table import Table

        t = Table(title="tasks (shipped presets: LLM-Adapters release, ODC-By 1.0)")
        for c in ("name", "kind", "metric", "scoring", "train", "test", "source"):
            t.add_column(c, overflow="fold")
        for r in rows:
            t.add_row(r["name"], r["kind"], r["metric"], r.get("scoring") or "", str(r["sizes"].get("train", "")),
                      str(r["sizes"].get("test", "")), r["source"] + ("" if r["origin"] == "built-in" else f" ({r['origin']})"))
        console().print(t)
        for r in rows:
            for k in ("note", "error"):
                if r.get(k):
                    console().print(f"{r['name']}: {r[k]}", markup=False, highlight=False)

    emit(ctx, {"tasks": rows}, lambda p: render(p["tasks"]))


@data_app.command("show")
def show_cmd(
    ctx: typer.Context,
    name: str = typer.Argument(..., help="Task name."),
    split: str = typer.Option("test", help="train or test."),
    n: int = typer.Option(3, "-n", min=1, help="How many records."),
    jsonl: bool = typer.Option(False, "--jsonl", help="Print only the prompts, one {\"text\": ...} JSON line each "
                               "(a prompts file for `retrieve --prompts-file` or `generate --prompts-file`)."),
) -> None:
    """Print a task's definition and a few records, as the model sees them in its scoring form."""
    import json

    from ..services.data import show_task

    payload = show_task(state(ctx).load_config(), name, split, n)
    if jsonl:
        for r in payload["records"]:
            typer.echo(json.dumps({"text": r["prompt"]}))
        return

    def render(p):
        d = p["task"]
        console().print(f"[bold]{d['name']}[/] ({d['kind']}, metric {d['metric']}"
                        + (f", scoring {d['scoring']}" if d.get("scoring") else "") + f") from {d['source']}")
        console().print(f"sizes: {p['sizes']}" + (f"; {p['note']}" if p.get("note") else "")
                        + ("; input shown before the chat template" if d.get("chat_template") else ""), markup=False)
        if p.get("skipped"):
            console().print(f"skipped {len(p['skipped'])} bad record(s), first: {p['skipped'][0]}")
        for r in p["records"]:
            console().print(f"\n{r['id']}", style="bold", markup=False)
            console().print(r["input"], markup=False, highlight=False)
            console().print(f"→ {r['target']}", markup=False, highlight=False)

    emit(ctx, payload, render)


@data_app.command("check")
def check_cmd(ctx: typer.Context, name: str = typer.Argument(..., help="Task name.")) -> None:
    """Load every record of a task and list every bad one (exit 1 when there are any)."""
    from ..errors import EXIT_FAILED
    from ..services.data import check_task

    res = check_task(state(ctx).load_config(), name)

    def render(r):
        for b in r["bad"]:
            console().print(b, markup=False, highlight=False)
        console().print(f"{r['task']}: {r['sizes']} records read, {len(r['bad'])} bad"
                        + (f"; {r['note']}" if r.get("note") else ""), markup=False)

    emit(ctx, res, render)
    if res["bad"]:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
