"""`llgbm merge`: merge LoRA adapters (folders or zoo ids) with a named strategy."""

from __future__ import annotations

from typing import Any, List, Optional

import typer

from ..errors import InputError
from ..merging import OPTIONS  # torch-free
from .common import console, emit, progress, state, with_flags
from .config import SET_HELP, overrides_from


def _parse_weights(text: Optional[str]) -> Optional[list[float]]:
    if text is None:
        return None
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{OPTIONS['weights'].flag} {text!r}: expected comma-separated numbers, e.g. 0.5,0.3,0.2")


def _parse_rank(text: Optional[str]):
    if text is None or text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{OPTIONS['rank'].flag} {text!r}: expected `auto` or a positive integer")


#: config key -> the flag that sets it here
FLAGS = {**{f"merge.{name}": o.flag for name, o in OPTIONS.items() if o.key}, "merge.full_model": "--full-model"}


def _option(name: str, *aliases: str) -> Any:
    """The flag of merge option ``name``, spelled and explained as merging.MergeOptions declares it;
    None when not given, so the config (and its default) decides."""
    o = OPTIONS[name]
    return typer.Option(None, o.flag, *aliases, help=o.flag_help)


def merge_cmd(
    ctx: typer.Context,
    adapters: Optional[List[str]] = typer.Argument(None, help="Adapter folders or zoo ids."),
    strategy: Optional[str] = _option("strategy", "-s"),
    weights: Optional[str] = _option("weights"),
    density: Optional[float] = _option("density"),
    drop_rate: Optional[float] = _option("drop_rate"),
    seed: Optional[int] = _option("seed"),
    rescale: Optional[str] = _option("rescale"),
    normalize: Optional[bool] = _option("normalize"),
    space: Optional[str] = _option("space"),
    rank: Optional[str] = _option("rank"),
    energy: Optional[float] = _option("energy"),
    max_rank: Optional[int] = _option("max_rank"),
    device: Optional[str] = _option("device"),
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
    # every [merge] key's flag, by option name (ctx.params holds each parameter's value as typed)
    values = {**{name: ctx.params[name] for name, o in OPTIONS.items() if o.key},
              "rank": _parse_rank(rank), "full_model": full_model or None}
    overrides, flags = with_flags(overrides_from(set_),
                                  {f"merge.{n}": (FLAGS[f"merge.{n}"], v) for n, v in values.items()})
    resolved = state(ctx).load_config(overrides, flags=flags)
    from ..services.merge import merge_options, merge_to_folder

    w = _parse_weights(weights)
    opts = merge_options(resolved, weights=(w, OPTIONS["weights"].flag) if w is not None else None)
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
