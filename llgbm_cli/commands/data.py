"""`llgbm data list|show|check`: the registered tasks (shipped presets and the project's own)."""

from __future__ import annotations

from typing import Optional

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


@data_app.command("overlap")
def overlap_cmd(
    ctx: typer.Context,
    names: Optional[list[str]] = typer.Argument(None, metavar="[TASK]...", help="Tasks to compare (default: the "
                                                "project's zoo tasks, [data] datasets, probe tasks and [tasks.*])."),
    examples: int = typer.Option(3, "--examples", min=0, help="Examples shown per pair of tasks."),
) -> None:
    """Find test questions that also occur in a train or validation split: every test split of the
    tasks against every train split of every one of them, exact after normalisation and by shared
    word n-grams ([data] overlap_ngram, overlap_threshold). Exit 1 when anything overlaps."""
    from ..errors import EXIT_FAILED
    from ..services.data import overlap

    res = overlap(state(ctx).load_config(), names or None, examples)

    def render(r):
        from rich.table import Table

        if r["pairs"]:
            t = Table(title=f"test questions found in a train split ({r['ngram']}-grams, threshold {r['threshold']:g})")
            for c in ("test task", "train task", "questions", "of", "exact", "n-gram"):
                t.add_column(c, overflow="fold")
            for p in r["pairs"]:
                t.add_row(p["test_task"], p["train_task"], str(p["questions"]), str(p["of"]), str(p["exact"]),
                          str(p["ngram"]))
            console().print(t)
            for p in r["pairs"]:
                for e in p["examples"]:
                    how = "exact" if e["kind"] == "exact" else f"{e['share']:.0%} of its n-grams"
                    console().print(f"{p['test_task']} {e['test_id']} ~ {p['train_task']} {e['train_id']} ({how}): "
                                    f"{e['test_text']}", markup=False, highlight=False)
        n = sum(v["of"] for v in r["per_task"].values())
        console().print(f"{r['contaminated']} of {n} test questions of {len(r['tasks'])} tasks occur in a train split",
                        markup=False)

    emit(ctx, res, render)
    if res["contaminated"]:
        raise typer.Exit(EXIT_FAILED)


def register(app: typer.Typer) -> None:
    app.add_typer(data_app, name="data")
