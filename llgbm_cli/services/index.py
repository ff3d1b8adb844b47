"""`index build`: a FAISS index over the delta cache, saved with the cache spec it came from."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..commands.common import NULL_PROGRESS
from ..config import ResolvedConfig
from ..errors import InputError


@dataclass
class IndexBuildResult:
    path: str
    kind: str
    device: str
    count: int
    dim: int
    params: dict[str, Any]
    build_seconds: float
    cache: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cache_folder(resolved: ResolvedConfig) -> Path:
    return resolved.resolve_path(resolved.config.delta.cache)


def index_folder(resolved: ResolvedConfig) -> Path:
    return resolved.resolve_path(resolved.config.index.path)


def open_cache(folder: Path):
    """Open the delta cache, refusing a missing or empty one with the command that fills it."""
    try:
        from ..deltas.cache import DeltaCache
    except ImportError:  # pragma: no cover - the cache module ships with llgbm
        raise InputError("the delta cache module is not available in this installation")
    if not folder.exists():
        raise InputError(f"{folder}: no delta cache; compute it with `llgbm cache-deltas`")
    cache = DeltaCache.open(folder)
    if len(cache.ids) == 0:
        raise InputError(f"{folder}: the delta cache is empty; compute deltas with `llgbm cache-deltas`")
    return cache


def zoo_tasks(resolved: ResolvedConfig) -> dict[str, str]:
    """Adapter id -> task from the zoo manifest (empty when there is no zoo)."""
    from ..zoo import Zoo

    try:
        zoo = Zoo.load(resolved.resolve_path(resolved.config.zoo.path), must_exist=False)
    except InputError:
        return {}
    return {e.id: e.task for e in zoo.entries}


def build_index(
    resolved: ResolvedConfig,
    *,
    force: bool = False,
    out: Optional[Path] = None,
    progress=NULL_PROGRESS,
) -> IndexBuildResult:
    """Build the ``[index]`` kind over every cached delta and save it under ``<workdir>/<index.path>``."""
    from ..index import DeltaIndex, get_kind, params_from_config
    from ..io import FileLock, check_output, provenance

    cfg = resolved.config
    get_kind(cfg.index.kind)  # fail on a bad kind before touching the cache
    src = cache_folder(resolved)
    folder = Path(out) if out is not None else index_folder(resolved)
    check_output(folder, "delta index", force=force, inputs=[src], roots=[resolved.workdir, resolved.root])
    cache = open_cache(src)
    task = progress.add("index: reading cache", total=None)
    ids = list(cache.ids)
    matrix = cache.matrix().numpy()
    tasks_by_id = zoo_tasks(resolved)
    excluded = set(cfg.index.exclude_tasks)
    if excluded:
        unknown = excluded - set(tasks_by_id.values())
        if unknown:
            raise InputError(f"index.exclude_tasks: {sorted(unknown)} not among the zoo's tasks "
                             f"{sorted(set(tasks_by_id.values()))}")
        keep = [i for i, a in enumerate(ids) if tasks_by_id.get(a) not in excluded]
        if not keep:
            raise InputError("index.exclude_tasks: every adapter is excluded; keep at least one task")
        ids = [ids[i] for i in keep]
        matrix = matrix[keep]
    progress.update(task, description=f"index: building {cfg.index.kind} over {len(ids)} deltas")
    t0 = time.perf_counter()
    idx = DeltaIndex.build(
        matrix,
        ids,
        kind=cfg.index.kind,
        params=params_from_config(cfg.index),
        tasks=[tasks_by_id.get(i) for i in ids],
        source=dict(cache.header),
        device=cfg.index.device,
        seed=cfg.project.seed,
    )
    seconds = time.perf_counter() - t0
    idx.meta["cache"] = str(src)
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(folder.parent / f".{folder.name}.lock", what="this index"):
        prov = provenance("index build", resolved.to_dict(), cache=str(src), count=len(ids),
                          excluded_tasks=sorted(excluded))
        idx.save(folder, force=force, extra_files={"llgbm.json": prov})
    progress.update(task, description=f"index: {len(ids)} deltas", total=1, completed=1)
    return IndexBuildResult(
        path=str(folder),
        kind=idx.kind,
        device=idx.device,
        count=len(ids),
        dim=idx.dim,
        params=idx.meta["params"],
        build_seconds=round(seconds, 4),
        cache=str(src),
        notes=list(idx.meta.get("notes", [])),
    )


def index_info(resolved: ResolvedConfig) -> dict[str, Any]:
    """The saved index's metadata: kind, parameters, size, and the cache header it came from."""
    from ..index import DeltaIndex

    folder = index_folder(resolved)
    idx = DeltaIndex.load(folder)
    return {"path": str(folder), **idx.meta, "tasks": sorted({t for t in idx.tasks if t})}
