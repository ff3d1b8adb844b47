"""`llgbm config validate|show`."""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from .common import SET_HELP, console, emit, overrides_from, set_option, state  # noqa: F401  (re-exported)

config_app = typer.Typer(help="Check and inspect the project file (llgbm.toml).", no_args_is_help=True)


@config_app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    path: Optional[str] = typer.Argument(None, help="Project file (default: --project or ./llgbm.toml)."),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Validate a project file without running anything; every problem is listed as section.key."""
    from ..services.config import validate

    st = state(ctx)
    p = path or st.project
    resolved = validate(p, overrides_from(set_), explicit=p is not None)
    where = str(resolved.path) if resolved.path else "built-in defaults (no llgbm.toml here)"
    emit(ctx, {"ok": True, "path": str(resolved.path) if resolved.path else None},
         lambda r: console().print(f"{where}: ok"))


@config_app.command("show")
def show_cmd(
    ctx: typer.Context,
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Print the resolved config and where each value came from (default, file, the file it extends, or flag)."""
    from ..services.config import show

    st = state(ctx)
    shown = show(st.load_config(overrides_from(set_)))

    def render(s):
        from rich.table import Table

        t = Table(title=f"config: {s.path or 'built-in defaults'}")
        t.add_column("key")
        t.add_column("value")
        t.add_column("source")
        for k, v in s.values.items():
            src = s.sources[k]
            style = {"flag": "bold magenta", "file": "cyan"}.get(src, "dim")
            shown_src = f"file ({Path(s.inherited[k]).name})" if k in s.inherited else src
            t.add_row(k, repr(v), f"[{style}]{shown_src}[/]")
        c = console()
        c.print(t)
        h = Table(title="held-out tasks")
        h.add_column("key")
        h.add_column("tasks")
        h.add_column("meaning")
        for k, row in s.holdout.items():
            h.add_row(k, ", ".join(row["tasks"]) or "[dim]none[/]", row["means"])
        c.print(h)
        for n in s.holdout_notes:
            c.print(f"note: {n}")

    emit(ctx, shown, render)


@config_app.command("workdir")
def workdir_cmd(ctx: typer.Context) -> None:
    """Print the resolved work folder (absolute), for shell scripts."""
    wd = state(ctx).load_config().workdir
    emit(ctx, {"workdir": str(wd)}, lambda r: typer.echo(r["workdir"]))


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
