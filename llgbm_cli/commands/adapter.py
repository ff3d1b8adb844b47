"""`llgbm adapter check`: validate PEFT LoRA folders against the project's base model."""

from __future__ import annotations

from typing import List

import typer

from .common import console, emit, state

adapter_app = typer.Typer(help="Inspect and validate PEFT LoRA adapter folders.", no_args_is_help=True)


@adapter_app.command("check")
def check_cmd(
    ctx: typer.Context,
    paths: List[str] = typer.Argument(..., help="Adapter folders."),
    no_base: bool = typer.Option(False, "--no-base", help="Only check the files, not the fit to [model] base."),
) -> None:
    """Load adapters, check their files and that their shapes fit the base model."""
    from ..errors import InputError
    from ..services.adapter import check_adapters, to_dicts

    cfg = state(ctx).load_config().config
    reports = check_adapters(paths, None if no_base else cfg.model.base, device="cpu")

    def render(p):
        for r in p["adapters"]:
            if not r["ok"]:
                continue  # the failures are listed in the error line
            console().print(f"{r['path']}: ok (rank {r['rank']}, alpha {r['alpha']}, {r['modules']} modules, "
                            f"{r['parameters']} parameters)")

    bad = [r for r in reports if not r.ok]
    if not (bad and state(ctx).json):  # with --json a failure prints the one error object instead
        emit(ctx, {"adapters": to_dicts(reports)}, render)
    if bad:
        raise InputError(f"{len(bad)} of {len(reports)} adapter(s) failed the check: " + "; ".join(r.error for r in bad))


def register(app: typer.Typer) -> None:
    app.add_typer(adapter_app, name="adapter")
