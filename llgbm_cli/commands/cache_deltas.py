"""`llgbm cache-deltas`: the delta of every adapter, cached and kept up to date."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, overrides_from, progress, set_option, state, with_flags


def cache_deltas_cmd(
    ctx: typer.Context,
    adapters: Optional[List[str]] = typer.Option(
        None, "--adapters", "-a", help="Adapter folders or globs to cache instead of the zoo (repeatable)."
    ),
    rebuild: bool = typer.Option(False, "--rebuild", help="Discard the existing cache and start over."),
    probes: Optional[str] = typer.Option(None, "--probes", help="Probe set (`generic`, `task:<name>` of any registered task) or a .txt/.jsonl file."),
    probe_count: Optional[int] = typer.Option(None, "--probe-count", help="Use only the first N probes."),
    layers: Optional[str] = typer.Option(None, "--layers", help="Hidden-state layers, comma-separated (e.g. -1 or 6,-1)."),
    pool: Optional[str] = typer.Option(None, "--pool", help="`last_token` or `mean`."),
    batch: Optional[int] = typer.Option(None, "--adapters-per-batch", help="Adapters sharing one forward."),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Compute each adapter's delta on the probes; only new or changed adapters are computed.

    Runs sharded under `accelerate launch -m llgbm_cli cache-deltas ...` (the main process writes).
    """
    from ..errors import CheckFailed, InputError
    from ..services.cache_deltas import run_cache_deltas

    layer_list = None
    if layers is not None:
        try:
            layer_list = [int(x) for x in layers.split(",") if x.strip()]
        except ValueError:
            raise InputError(f"--layers {layers}: expected comma-separated integers, e.g. -1 or 6,-1")
    ov, flags = with_flags(overrides_from(set_), {
        "delta.layers": ("--layers", layer_list), "probes.source": ("--probes", probes),
        "probes.count": ("--probe-count", probe_count), "delta.pool": ("--pool", pool),
        "delta.adapters_per_batch": ("--adapters-per-batch", batch)})
    resolved = state(ctx).load_config(ov, flags=flags)
    with progress(ctx) as rep:
        result = run_cache_deltas(resolved, adapters=adapters, rebuild=rebuild, progress=rep)
    if not result.is_main:
        return

    def render(r):
        console().print(f"{r.cache}: {r.rows} rows of dim {r.dim} (computed {r.computed}, reused {r.reused}, "
                        f"failed {len(r.failed)}) in {r.seconds:.1f} s")
        for f in r.failed:
            console(stderr=True).print(f"skipped {f['id']}: {f['error']}")

    emit(ctx, result, render)
    if result.failed:
        raise CheckFailed(f"{len(result.failed)} adapter(s) could not be cached: "
                          + ", ".join(f["id"] for f in result.failed[:10]) + "; the others are cached")


def register(app: typer.Typer) -> None:
    app.command("cache-deltas")(cache_deltas_cmd)
