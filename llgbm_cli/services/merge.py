"""`llgbm merge`: resolve inputs (folders or zoo ids), merge with a named strategy, write a PEFT folder.

Everything is checked before any work: every input exists, the adapters fit each other, the
parameters are in range and ``out`` is free (or ``force``) and is not one of the inputs. Inputs are
only read. The output carries provenance: each input with the sha256 of its weights, the strategy,
its parameters, the weights as applied, each module's rank, the retained energy and the resolved
config. With ``full_model`` the folder also holds ``merged-model/``: the base model with the merge
added to its weights, written in the same atomic step.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import InputError
from ..merging import OPTIONS, MergeOptions, as_options, list_strategies

__all__ = ["MergeResult", "merge_to_folder", "merge_options", "resolve_inputs", "list_strategies"]

#: The ``[merge]`` keys that are merge options (the rest say what to write).
OPTION_KEYS = tuple(name for name, o in OPTIONS.items() if o.key)


def merge_options(resolved: Any, *, strategy: Optional[tuple[str, str]] = None,
                  weights: Optional[tuple[Sequence[float], str]] = None) -> MergeOptions:
    """The merge options of a resolved config (``[merge]`` with flags and ``--set`` on top), each
    remembering where it came from; ``strategy`` and ``weights``, as ``(value, source)``, replace
    the config's (``retrieve --merge``, an eval method, similarity scores)."""
    m = resolved.config.merge
    values: dict[str, Any] = {k: getattr(m, k) for k in OPTION_KEYS}
    sources = {k: resolved.origin(f"merge.{k}") for k in OPTION_KEYS}
    for name, given in (("strategy", strategy), ("weights", weights)):
        if given is not None:
            values[name], sources[name] = given
    return MergeOptions(**values, sources=sources)


@dataclass
class MergeResult:
    out: str
    strategy: str
    space: str
    rank: int
    rank_range: list[int]
    weights: list[float]
    weighting: str
    parameters: dict[str, Any]
    inputs: list[dict[str, Any]]
    modules: int
    retained_energy: Optional[float]
    truncation_error: Optional[float]
    exact: bool
    seconds: float
    full_model: Optional[str] = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def resolve_inputs(inputs: Sequence[str | Path], zoo: Any = None) -> list[tuple[str, Path]]:
    """Map each input to (label, folder): an existing path is a folder, anything else a zoo id.

    ``zoo`` is a :class:`~llgbm_cli.zoo_manifest.Zoo`, a zoo folder, or None. Every unresolved input is
    reported in one error.
    """
    from ..zoo_manifest import MANIFEST, Zoo

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


def refuse_repeats(resolved: Sequence[tuple[str, Path]]) -> None:
    """Refuse an adapter given twice: (label, folder) pairs, as :func:`resolve_inputs` returns them."""
    seen: dict[Path, str] = {}
    for label, folder in resolved:
        key = Path(folder).resolve()
        if key in seen:
            same = f"{seen[key]} and {label}" if seen[key] != label else f"{label} twice"
            raise InputError(f"{same}: the same adapter ({key}) is named more than once; name each adapter once "
                             "(use --weights to weigh one more)")
        seen[key] = label


def merge_to_folder(
    inputs: Sequence[str | Path],
    out: str | Path,
    options: MergeOptions | str | None = None,
    weights: Optional[Sequence[float]] = None,
    *,
    force: bool = False,
    zoo: Any = None,
    config: Optional[dict[str, Any]] = None,
    full_model: Optional[str | Path] = None,
    progress: Any = None,
    min_inputs: int = 1,
    **fields: Any,
) -> MergeResult:
    """Merge adapter folders or zoo ids into a PEFT LoRA folder ``out`` (see merging.merge_with_report).

    ``options`` is a :class:`~llgbm_cli.merging.MergeOptions` (see :func:`merge_options`) or a
    strategy name completed by ``weights`` and ``fields``. ``full_model``: a base model folder
    whose weights, with the merge added, are also written to ``out/merged-model``.
    ``progress`` is an optional reporter with ``add(description, total)`` and ``advance(task)``.
    An adapter named twice (the same folder, however written) is refused, and so are fewer than
    ``min_inputs`` adapters (`llgbm merge` asks for two).
    """
    from ..adapters import load_adapter, save_adapter, weights_sha256
    from ..io import check_output, output_lock, provenance
    from ..merging import merge_with_report

    t0 = time.perf_counter()
    opts = as_options(options, weights, **fields)
    if not inputs:
        raise InputError("no adapters to merge; name at least one adapter folder or zoo id")
    if opts.weights is not None and len(opts.weights) != len(inputs):
        raise InputError(f"{opts.source('weights')}: {len(opts.weights)} value(s) for {len(inputs)} adapter(s); "
                         "give one weight per adapter")
    resolved = resolve_inputs(inputs, zoo)
    refuse_repeats(resolved)
    if len(resolved) < min_inputs:
        raise InputError(f"{', '.join(label for label, _ in resolved)}: merging needs at least {min_inputs} "
                         f"different adapters, {len(resolved)} given; name every adapter to merge")
    out = Path(out).expanduser()
    check_output(out, "adapter", force=force, inputs=[folder for _, folder in resolved])
    base_folder = None
    if full_model is not None:
        from ..merging import base_weight_files

        base_folder = Path(full_model)
        base_weight_files(base_folder)  # fails now, before any work, when the base has no safetensors

    adapters, records = [], []
    for label, folder in resolved:
        ad = load_adapter(folder)
        adapters.append(ad)
        records.append({"input": label, "path": str(folder), "sha256": weights_sha256(folder),
                        "rank": ad.r, "base_model": ad.base_model})

    task = progress.add(f"merge ({opts.strategy})", total=len(adapters[0].modules)) if progress else None
    merged, report = merge_with_report(
        adapters, opts, labels=[label for label, _ in resolved],
        on_module=(lambda _name: progress.advance(task)) if progress else None,
    )
    summary = {k: getattr(report, k) for k in ("strategy", "space", "rank", "rank_range", "parameters", "weights",
                                               "weighting", "retained_energy", "truncation_error")}
    prov = provenance("merge", config, inputs=records, ranks=report.ranks, **summary)
    written_model = None
    with output_lock(out, f"the merged adapter {out}"):
        if base_folder is not None:
            from ..io import atomic_dir
            from ..merging import write_merged_model

            with atomic_dir(out, force=force) as tmp:
                save_adapter(tmp, merged, provenance=prov, force=True)
                written_model = str(out / "merged-model")
                write_merged_model(base_folder, merged, tmp / "merged-model", provenance=prov)
        else:
            save_adapter(out, merged, provenance=prov, force=force)
    return MergeResult(
        out=str(out),
        inputs=records,
        modules=report.modules,
        exact=report.exact,
        seconds=round(time.perf_counter() - t0, 3),
        full_model=written_model,
        notes=report.notes,
        **summary,
    )
