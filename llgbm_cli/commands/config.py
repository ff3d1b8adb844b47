"""`llgbm config validate|show`."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, state

config_app = typer.Typer(help="Check and inspect the project file (llgbm.toml).", no_args_is_help=True)


def overrides_from(sets: Optional[List[str]]) -> dict:
    from ..config import parse_override

    return dict(parse_override(s) for s in (sets or []))


SET_HELP = "Override a config key, e.g. --set train.multitask.lambda_delta=0.5 (repeatable)."


@config_app.command("validate")
def validate_cmd(
    ctx: typer.Context,
    path: Optional[str] = typer.Argument(None, help="Project file (default: --project or ./llgbm.toml)."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
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
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Print the resolved config and where each value came from (default, file or flag)."""
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
            t.add_row(k, repr(v), f"[{style}]{src}[/]")
        console().print(t)

    emit(ctx, shown, render)


@config_app.command("workdir")
def workdir_cmd(ctx: typer.Context) -> None:
    """Print the resolved work folder (absolute), for shell scripts."""
    wd = state(ctx).load_config().workdir
    emit(ctx, {"workdir": str(wd)}, lambda r: typer.echo(r["workdir"]))


def register(app: typer.Typer) -> None:
    app.add_typer(config_app, name="config")
