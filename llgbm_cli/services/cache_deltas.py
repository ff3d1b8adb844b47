"""`cache-deltas`: compute the delta of every adapter of the zoo (or of given folders) once.

Incremental: a row is reused when the cache already holds the adapter's id with the same
sha256 of its weights; new or changed adapters are computed. The cache header (base-model
fingerprint, probe fingerprint, delta spec) must match the current run, else the run is refused
(``rebuild`` starts over). Adapters are streamed ``delta.adapters_per_batch`` at a time, grouped by
the lowest layer they adapt so that each batch runs only the layers from there up, on the base
model's activations below it (computed once per run; their fingerprint is in the cache header).
The cache is committed at least every ``delta.flush_seconds`` and on the way out of an interrupted run.

Under ``accelerate launch`` the work is sharded: every process computes its slice of each round
and the main process gathers the rows and alone writes the cache.
"""

from __future__ import annotations

import glob
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Optional

from ..progress import NULL_PROGRESS
from .. import workdir
from ..distributed import ProcessGroup as _Dist
from ..errors import InputError


@dataclass
class CacheDeltasResult:
    cache: str
    computed: int = 0
    reused: int = 0
    failed: list[dict[str, str]] = field(default_factory=list)
    rows: int = 0
    dim: int = 0
    seconds: float = 0.0
    processes: int = 1
    rebuilt: bool = False
    is_main: bool = True
    probes: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache": self.cache,
            "computed": self.computed,
            "reused": self.reused,
            "failed": self.failed,
            "rows": self.rows,
            "dim": self.dim,
            "seconds": round(self.seconds, 3),
            "processes": self.processes,
            "rebuilt": self.rebuilt,
            "probes": self.probes,
        }


@dataclass
class _Item:
    id: str
    path: Path
    sha256: Optional[str] = None
    error: Optional[str] = None


def collect_inputs(resolved, adapters: Optional[list[str]] = None) -> list[_Item]:
    """(id, folder) of every adapter to cache: the zoo manifest, or ``--adapters`` paths/globs."""
    from ..adapters import CONFIG_FILE
    from ..zoo_manifest import Zoo

    items: list[_Item] = []
    if adapters:
        for pat in adapters:
            pat = os.path.expanduser(pat)
            hits = sorted(glob.glob(pat, recursive=True)) if glob.has_magic(pat) else [pat]
            if glob.has_magic(pat):
                hits = [h for h in hits if (Path(h) / CONFIG_FILE).exists()]
            if not hits:
                raise InputError(f"--adapters {pat}: matches no adapter folder")
            for h in hits:
                p = Path(h)
                if not p.exists():
                    raise InputError(f"--adapters {h}: no such folder")
                items.append(_Item(p.resolve().name, p.resolve()))
    else:
        zoo = Zoo.load(workdir.path(resolved, "zoo"))
        items = [_Item(e.id, zoo.path_of(e).resolve()) for e in zoo.entries]
        if not items:
            raise InputError(f"{zoo.manifest_path}: the zoo is empty; add adapters or pass --adapters")
    seen: dict[str, Path] = {}
    for it in items:
        if it.id in seen and seen[it.id] != it.path:
            raise InputError(f"two adapters share the id {it.id!r} ({seen[it.id]} and {it.path}); "
                             "an adapter's id is its folder name: rename one")
        seen[it.id] = it.path
    uniq = {it.id: it for it in items}
    return list(uniq.values())


def run_cache_deltas(
    resolved,
    *,
    adapters: Optional[list[str]] = None,
    rebuild: bool = False,
    progress=NULL_PROGRESS,
    stop_after: Optional[int] = None,
) -> CacheDeltasResult:
    """Bring the delta cache up to date with the zoo (or ``adapters``). See the module doc.

    ``stop_after`` ends the run after that many computed batches, as an interruption would
    (used by tests to check that finished rows survive).
    """
    import contextlib

    from ..adapters import adapter_module_names, weights_sha256
    from ..anatomy import lowest_adapted_layer
    from ..io import check_output, provenance
    from ..models import load_base_model
    from ..deltas.cache import CacheRow, DeltaCache, cache_lock
    from ..deltas.compute import base_activations, base_states, iter_deltas
    from ..deltas.context import DeltaContext
    from ..tasks.registry import registry_for

    t0 = time.perf_counter()
    cfg = resolved.config
    dist = _Dist(cfg.model.device)
    if not dist.is_main:
        progress = NULL_PROGRESS  # one progress bar, the main process's
    folder = workdir.path(resolved, "deltas")
    items = collect_inputs(resolved, adapters)
    check_output(folder, "delta cache", flag="delta.cache", incremental=True, roots=[resolved.workdir, resolved.root],
                 inputs=[workdir.path(resolved, "zoo"), *(it.path for it in items)])
    model, tok = load_base_model(cfg.model.base, dtype=cfg.delta.dtype, device=dist.device(cfg.model.device))
    ctx = DeltaContext.build(resolved, model, tok, tasks=registry_for(resolved), device=False)
    spec, probes, header = ctx.spec, ctx.probes, ctx.header
    result = CacheDeltasResult(cache=str(folder), processes=dist.world, is_main=dist.is_main,
                               probes=probes.describe(), rebuilt=bool(rebuild))
    prov = provenance("cache-deltas", resolved.to_dict(), base_fingerprint=header["base_fingerprint"],
                      probe_fingerprint=probes.fingerprint, spec=spec.to_dict())

    lock = cache_lock(folder) if dist.is_main else contextlib.nullcontext()
    with lock:
        # Every process reads the cache before the main one first writes (at the first gather).
        if DeltaCache.exists(folder) and not rebuild:
            cache = DeltaCache.open(folder)
            ctx.check_cache(cache, fix=f"pass --rebuild to start over (its {len(cache)} rows are discarded) or "
                                       "set delta.cache to another folder")
        else:
            cache = DeltaCache(folder, header)
        cache.header["activations_fingerprint"] = header["activations_fingerprint"]
        todo: list[_Item] = []
        for it in items:
            try:
                it.sha256 = weights_sha256(it.path)
            except OSError:
                it.error = f"{it.path}: no adapter weights file here"
                if dist.is_main:
                    result.failed.append({"id": it.id, "path": str(it.path), "error": it.error})
                continue
            row = cache.entry(it.id)
            if row is not None and row.sha256 == it.sha256:
                result.reused += 1
            else:
                todo.append(it)
        dist.barrier()

        task = progress.add("deltas", total=len(todo))
        acts = base = None
        if todo:
            acts = base_activations(model, probes, pack=cfg.delta.pack, dtype=spec.dtype)
            if acts.fingerprint != header["activations_fingerprint"]:
                raise RuntimeError("the base activations in memory are not those of this base model and probe set")
            base = base_states(model, probes, spec, acts=acts)
        apb = cfg.delta.adapters_per_batch
        per_round = apb * dist.world
        # Rounds never mix adapters whose lowest adapted layer differs: each starts as deep as it can.
        groups: dict[int, list[_Item]] = {}
        for it in todo:
            groups.setdefault(lowest_adapted_layer(model, adapter_module_names(it.path)), []).append(it)
        rounds = [g[s:s + per_round] for _, g in sorted(groups.items()) for s in range(0, len(g), per_round)]
        last_flush = time.monotonic()
        dirty = bool(rebuild) or not DeltaCache.exists(folder)
        batches = 0
        try:
            for rnd in rounds:
                mine = rnd[dist.rank * apb: (dist.rank + 1) * apb]
                local: list[tuple] = []
                loaded = list(_load_valid(mine, model, local))  # at most adapters_per_batch held
                if loaded:
                    _, deltas = next(iter_deltas(model, iter([a for _, a in loaded]), probes, spec, len(loaded),
                                                 base=base, pack=cfg.delta.pack, acts=acts))
                    for (it, _), d in zip(loaded, deltas):
                        if not bool(d.isfinite().all()):  # never store a NaN/Inf row
                            local.append((it.id, str(it.path), it.sha256, None,
                                          f"{it.path}: its delta is NaN or Inf on these probes; not cached"))
                            continue
                        local.append((it.id, str(it.path), it.sha256, d.tolist(), None))
                gathered = dist.gather(local)
                if dist.is_main:
                    for id_, path, sha, vec, err in gathered:
                        if err is not None:
                            result.failed.append({"id": id_, "path": path, "error": err})
                            continue
                        import torch

                        cache.put(CacheRow(id_, path, sha), torch.tensor(vec, dtype=torch.float32))
                        result.computed += 1
                        dirty = True
                    if time.monotonic() - last_flush >= cfg.delta.flush_seconds:
                        cache.save(prov)
                        dirty = False
                        last_flush = time.monotonic()
                progress.advance(task, len(rnd))
                batches += 1
                if stop_after is not None and batches >= stop_after:
                    raise KeyboardInterrupt
        finally:
            if dist.is_main and dirty:
                cache.save(prov)
    dist.barrier()
    result.rows = len(cache)
    result.dim = cache.dim or header["dim"]
    result.seconds = time.perf_counter() - t0
    return result


def _load_valid(items: list[_Item], model, failed: list[tuple]) -> Iterator[tuple[_Item, Any]]:
    """Load and check each adapter lazily; a broken or misfitting one is recorded and skipped."""
    from ..adapters import load_adapter, validate_against

    for it in items:
        try:
            ad = load_adapter(it.path)
            validate_against(ad, model)
        except InputError as e:
            failed.append((it.id, str(it.path), it.sha256, None, e.message))
            continue
        yield it, ad
