"""`llgbm index build|info`: a FAISS index over the cached deltas."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, force_option, overrides_from, progress, set_option, state, with_flags

index_app = typer.Typer(help="Build and inspect the delta-space retrieval index.", no_args_is_help=True)


@index_app.command("build")
def build_cmd(
    ctx: typer.Context,
    kind: Optional[str] = typer.Option(None, "--kind", help="Index kind: flat (exact), hnsw, ivf, ivfpq (compressed) (default: index.kind)."),
    device: Optional[str] = typer.Option(None, "--device", help="cpu or cuda (default: index.device)."),
    force: bool = force_option("Replace an existing index."),
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Index the cached deltas of the zoo's adapters (L2-normalized, inner product = cosine) under <workdir>/index."""
    from ..services.index import build_index

    ov, flags = with_flags(overrides_from(set_), {"index.kind": ("--kind", kind), "index.device": ("--device", device)})
    resolved = state(ctx).load_config(ov, flags=flags)
    with progress(ctx) as rep:
        result = build_index(resolved, force=force, progress=rep)

    def render(r):
        c = console()
        c.print(f"{r.path}: {r.kind} index over {r.count} deltas of dimension {r.dim} "
                f"({r.device}, built in {r.build_seconds:.2f} s)")
        for n in r.notes:
            c.print(f"note: {n}")

    emit(ctx, result, render)


@index_app.command("info")
def info_cmd(
    ctx: typer.Context,
    set_: Optional[List[str]] = set_option(),
) -> None:
    """Print what the saved index holds and which delta cache it was built from."""
    from ..services.index import index_info

    result = index_info(state(ctx).load_config(overrides_from(set_)))
    emit(ctx, result, lambda r: console().print_json(data=r))


def register(app: typer.Typer) -> None:
    app.add_typer(index_app, name="index")
