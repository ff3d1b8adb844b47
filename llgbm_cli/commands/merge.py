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


def _parse_rank(text: Optional[str]):
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise InputError(f"--rank {text!r}: expected `auto` or a positive integer")


#: config key -> the flag that sets it here
FLAGS = {"merge.strategy": "--strategy", "merge.density": "--density", "merge.drop_rate": "--drop-rate",
         "merge.seed": "--seed", "merge.space": "--space", "merge.rank": "--rank", "merge.energy": "--energy",
         "merge.max_rank": "--max-rank", "merge.normalize": "--normalize/--no-normalize",
         "merge.rescale": "--rescale", "merge.device": "--device", "merge.full_model": "--full-model"}


def merge_cmd(
    ctx: typer.Context,
    adapters: Optional[List[str]] = typer.Argument(None, help="Adapter folders or zoo ids."),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="Strategy name (see --list); default: the config key merge.strategy."),
    weights: Optional[str] = typer.Option(None, "--weights", help="One weight per adapter, comma-separated (e.g. 0.5,0.3,0.2)."),
    density: Optional[float] = typer.Option(None, "--density", help="ties: share of entries kept per tensor, in (0, 1]."),
    drop_rate: Optional[float] = typer.Option(None, "--drop-rate", help="dare_*: drop probability, in [0, 1)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="dare_*: seed of the drop masks."),
    rescale: Optional[str] = typer.Option(None, "--rescale", help="ties/dare_*: `l1`, `keep_rate` or `none` after sparsifying (default per strategy)."),
    normalize: Optional[bool] = typer.Option(None, "--normalize/--no-normalize", help="Divide by the summed weights (default per strategy: linear, ties on)."),
    space: Optional[str] = typer.Option(None, "--space", help="`delta` (ΔW, then SVD to rank) or `factors` (A, B separately)."),
    rank: Optional[str] = typer.Option(None, "--rank", help="Output rank: `auto` (default; per module, by --energy) or an integer."),
    energy: Optional[float] = typer.Option(None, "--energy", help="rank auto: share of each module's ‖ΔW‖² to keep (default 0.99)."),
    max_rank: Optional[int] = typer.Option(None, "--max-rank", help="rank auto: cap on any module's rank."),
    device: Optional[str] = typer.Option(None, "--device", help="`cpu` or `cuda`."),
    full_model: bool = typer.Option(False, "--full-model", help="Also write the base model with the merge added (OUT/merged-model); default: merge.full_model."),
    out: Optional[str] = typer.Option(None, "--out", "-o", help="Output adapter folder."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing --out folder."),
    list_: bool = typer.Option(False, "--list", help="List the strategies, their parameters and references."),
    set_: Optional[List[str]] = typer.Option(None, "--set", help=SET_HELP),
) -> None:
    """Merge adapters in delta space (ΔW = scaling·B·A, then truncated SVD) into a PEFT LoRA folder.

    Weights: linear normalizes them to sum 1; ties divides each entry by the weights of the adapters
    agreeing in sign; task_arithmetic, dare_* and cat use them as given (--normalize/--no-normalize
    overrides). Rank `auto`: linear, task_arithmetic and cat are exact; ties and dare_* keep per module
    the smallest rank reaching --energy of the merged ΔW.
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
    flagged = given({
        "merge.strategy": strategy, "merge.density": density, "merge.drop_rate": drop_rate, "merge.seed": seed,
        "merge.space": space, "merge.rank": _parse_rank(rank), "merge.energy": energy, "merge.max_rank": max_rank,
        "merge.normalize": normalize, "merge.rescale": rescale, "merge.device": device, "merge.full_model": full_model or None,
    })
    overrides.update(flagged)
    resolved = state(ctx).load_config(overrides, flags={k: FLAGS[k] for k in flagged})
    from ..services.merge import merge_options, merge_to_folder

    w = _parse_weights(weights)
    opts = merge_options(resolved, weights=(w, "--weights") if w is not None else None)
    base = None
    if resolved.config.merge.full_model:
        from ..models import resolve_model_path

        base = resolve_model_path(resolved.config.model.base)
    with progress(ctx) as rep:
        result = merge_to_folder(adapters, out, opts, force=force, zoo=resolved.resolve_path(resolved.config.zoo.path),
                                 config=resolved.to_dict(), full_model=base, progress=rep, min_inputs=2)

    def render(r):
        c = console()
        lo, hi = r.rank_range
        ranks = f"rank {r.rank}" if lo == hi else f"rank {r.rank}, modules {lo} to {hi}"
        c.print(f"{r.out}: merged {len(r.inputs)} adapters with {r.strategy} ({r.space} space, {ranks}, "
                f"{r.modules} modules) in {r.seconds:.2f}s")
        c.print(f"  weights {', '.join(f'{w:.4g}' for w in r.weights)}: {r.weighting}")
        if r.parameters:
            c.print("  " + ", ".join(f"{k}={v}" for k, v in r.parameters.items()))
        if r.truncation_error is not None:
            c.print(f"  kept {100 * r.retained_energy:.2f}% of the merged ΔW's squared norm (truncation error "
                    f"{r.truncation_error:.3g}){'; exact' if r.exact else ''}")
        if r.full_model:
            c.print(f"  merged model: {r.full_model}")
        for n in r.notes:
            c.print(f"  note: {n}")

    emit(ctx, result, render)


def register(app: typer.Typer) -> None:
    app.command("merge")(merge_cmd)
