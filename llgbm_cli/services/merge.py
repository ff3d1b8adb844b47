"""`llgbm merge`: resolve inputs (folders or zoo ids), merge with a named strategy, write a PEFT folder.

Everything is checked before any work: every input exists, the adapters fit each other, the
parameters are in range and ``out`` is free (or ``force``) and is not one of the inputs. Inputs are
only read. The output carries provenance: each input with the sha256 of its weights, the strategy,
its parameters, the weights as applied and the resolved config.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import InputError
from ..merging import check_params, get_strategy, list_strategies

__all__ = ["MergeResult", "merge_to_folder", "resolve_inputs", "list_strategies"]


@dataclass
class MergeResult:
    out: str
    strategy: str
    space: str
    rank: int
    weights: list[float]
    weighting: str
    parameters: dict[str, Any]
    inputs: list[dict[str, Any]]
    modules: int
    truncation_error: Optional[float]
    exact: bool
    seconds: float
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resolve_inputs(inputs: Sequence[str | Path], zoo: Any = None) -> list[tuple[str, Path]]:
    """Map each input to (label, folder): an existing path is a folder, anything else a zoo id.

    ``zoo`` is a :class:`~llgbm_cli.zoo.Zoo`, a zoo folder, or None. Every unresolved input is
    reported in one error.
    """
    from ..zoo import MANIFEST, Zoo

    resolved: list[tuple[str, Path]] = []
    missing: list[str] = []
    zoo_obj = None
    for item in inputs:
        p = Path(item).expanduser()
        if p.exists():
            resolved.append((str(item), p.resolve()))
            continue
        if zoo is not None and zoo_obj is None:
            zoo_obj = zoo if isinstance(zoo, Zoo) else Zoo.load(zoo, must_exist=False)
        entry = next((e for e in zoo_obj.entries if e.id == str(item)), None) if zoo_obj is not None else None
        if entry is None:
            missing.append(str(item))
            continue
        resolved.append((str(item), zoo_obj.path_of(entry).resolve()))
    if missing:
        where = f"an id in {zoo_obj.manifest_path}" if zoo_obj is not None else f"an id of a zoo ({MANIFEST})"
        raise InputError(f"{', '.join(missing)}: no such adapter folder, nor {where}; "
                         "pass adapter folders or ids listed by the zoo")
    return resolved


def merge_to_folder(
    inputs: Sequence[str | Path],
    out: str | Path,
    strategy: str = "linear",
    weights: Optional[Sequence[float]] = None,
    *,
    density: float = 0.5,
    drop_rate: float = 0.9,
    seed: int = 0,
    space: str = "delta",
    rank: Optional[int] = None,
    device: str = "cpu",
    force: bool = False,
    zoo: Any = None,
    config: Optional[dict[str, Any]] = None,
    progress: Any = None,
) -> MergeResult:
    """Merge adapter folders or zoo ids into a PEFT LoRA folder ``out`` (see merging.merge_with_report).

    ``progress`` is an optional reporter with ``add(description, total)`` and ``advance(task)``.
    """
    from ..adapters import load_adapter, save_adapter, weights_sha256
    from ..io import check_output, provenance
    from ..merging import merge_with_report

    t0 = time.perf_counter()
    get_strategy(strategy)
    check_params(density=density, drop_rate=drop_rate, space=space, rank=rank)
    if not inputs:
        raise InputError("no adapters to merge; name at least one adapter folder or zoo id")
    if weights is not None and len(weights) != len(inputs):
        raise InputError(f"--weights has {len(weights)} value(s) for {len(inputs)} adapter(s); "
                         "give one weight per adapter")
    resolved = resolve_inputs(inputs, zoo)
    out = Path(out).expanduser()
    check_output(out, "adapter", force=force, inputs=[folder for _, folder in resolved])

    adapters, records = [], []
    for label, folder in resolved:
        ad = load_adapter(folder)
        adapters.append(ad)
        records.append({"input": label, "path": str(folder), "sha256": weights_sha256(folder),
                        "rank": ad.r, "base_model": ad.base_model})

    if rank is not None:  # a rank above a module's smaller side cannot be represented
        small = {n: min(m.A.shape[1], m.B.shape[0]) for n, m in adapters[0].modules.items()}
        too = sorted((v, n) for n, v in small.items() if rank > v)
        if too:
            raise InputError(f"--rank {rank}: above the size of module {too[0][1]} ({too[0][0]}); "
                             f"use at most {min(small.values())}")
    task = progress.add(f"merge ({strategy})", total=len(adapters[0].modules)) if progress else None
    merged, report = merge_with_report(
        adapters, strategy, weights, density=density, drop_rate=drop_rate, seed=seed, space=space,
        rank=rank, device=device, labels=[label for label, _ in resolved],
        on_module=(lambda _name: progress.advance(task)) if progress else None,
    )
    prov = provenance(
        "merge",
        config,
        inputs=records,
        strategy=report.strategy,
        space=report.space,
        rank=report.rank,
        parameters=report.parameters,
        weights=report.weights,
        weighting=report.weighting,
        truncation_error=report.truncation_error,
    )
    save_adapter(out, merged, alpha=float(report.rank), provenance=prov, force=force)
    return MergeResult(
        out=str(out),
        strategy=report.strategy,
        space=report.space,
        rank=report.rank,
        weights=report.weights,
        weighting=report.weighting,
        parameters=report.parameters,
        inputs=records,
        modules=report.modules,
        truncation_error=report.truncation_error,
        exact=report.exact,
        seconds=round(time.perf_counter() - t0, 3),
        notes=report.notes,
    )
