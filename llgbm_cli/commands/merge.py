"""`llgbm merge`: merge LoRA adapters (folders or zoo ids) with a named strategy."""

from __future__ import annotations

from typing import List, Optional

import typer

from ..errors import InputError
from .common import console, emit, given, progress, state
from .config import SET_HELP, overrides_from


def _parse_weights(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"--weights {text!r}: expected comma-separated numbers, e.g. 0.5,0.3,0.2")


def merge_cmd(
    ctx: typer.Context,
    adapters: Optional[List[str]] = typer.Argument(None, help="Adapter folders or zoo ids."),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="Strategy name (see --list); default: the config key merge.strategy."),
    weights: Optional[str] = typer.Option(None, "--weights", help="One weight per adapter, comma-separated (e.g. 0.5,0.3,0.2)."),
    density: Optional[float] = typer.Option(None, "--density", help="ties: share of entries kept per tensor, in (0, 1]."),
    drop_rate: Optional[float] = typer.Option(None, "--drop-rate", help="dare_*: drop probability, in (0, 1]."),
    seed: Optional[int] = typer.Option(None, "--seed", help="dare_*: seed of the drop masks."),
    space: Optional[str] = typer.Option(None, "--space", help="`delta` (ΔW, then SVD to rank) or `factors` (A, B separately)."),
    rank: Optional[int] = typer.Option(None, "--rank", help="Output rank (default: the inputs' largest; cat: their sum)."),
    device: Optional[str] = typer.Option(None, "--device", help="`cpu` or `cuda`."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output adapter folder."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out folder."),
    list_: bool = typer.Option(False, "--list", help="List the strategies, their parameters and references."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Merge adapters in delta space (ΔW = scaling·B·A, then truncated SVD) into a PEFT LoRA folder.

    Weights: linear and dare_linear normalize them to sum 1; ties and dare_ties divide each entry by
    the weights of the adapters agreeing in sign; task_arithmetic and cat use them as given.
    """
    if list_:
        from ..merging import list_strategies

        rows = list_strategies()

        def render_list(d):
            from rich.table import Table

            t = Table(title="merge strategies")
            for col in ("name", "what it does", "parameters (defaults)", "weights", "reference"):
                t.add_column(col)
            for s in d["strategies"]:
                params = ", ".join(f"{k}={v}" for k, v in s["params"].items() if k != "weights") or "-"
                t.add_row(s["name"], s["summary"], params, s["weights"], s["reference"])
            console().print(t)

        emit(ctx, {"strategies": rows}, render_list)
        return
    if not adapters:
        raise InputError("name the adapters to merge (folders or zoo ids), or pass --list")
    if out is None:
        raise InputError("--out DIR is required: the folder the merged adapter is written to")
    overrides = overrides_from(set_)
    overrides.update(given({
        "merge.strategy": strategy, "merge.density": density, "merge.drop_rate": drop_rate,
        "merge.seed": seed, "merge.space": space, "merge.rank": rank, "merge.device": device,
    }))
    resolved = state(ctx).load_config(overrides)
    m = resolved.config.merge
    from ..services.merge import merge_to_folder

    with progress(ctx) as rep:
        result = merge_to_folder(
            adapters, out, m.strategy, _parse_weights(weights), density=m.density, drop_rate=m.drop_rate,
            seed=m.seed, space=m.space, rank=m.rank, device=m.device, force=force,
            zoo=resolved.resolve_path(resolved.config.zoo.path), config=resolved.to_dict(), progress=rep,
        )

    def render(r):
        c = console()
        c.print(f"{r.out}: merged {len(r.inputs)} adapters with {r.strategy} ({r.space} space, rank {r.rank}, "
                f"{r.modules} modules) in {r.seconds:.2f}s")
        c.print(f"  weights {', '.join(f'{w:.4g}' for w in r.weights)}: {r.weighting}")
        if r.parameters:
            c.print("  " + ", ".join(f"{k}={v}" for k, v in r.parameters.items()))
        if r.truncation_error is not None:
            c.print(f"  truncation error {r.truncation_error:.3g} (relative Frobenius norm of the merged ΔW lost "
                    f"to rank {r.rank}){'; exact' if r.exact else ''}")
        for n in r.notes:
            c.print(f"  note: {n}")

    emit(ctx, result, render)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_cmd)
