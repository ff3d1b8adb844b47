"""`index build`: a FAISS index over the delta cache, saved with the cache spec it came from."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..progress import NULL_PROGRESS
from .. import holdout, workdir
from ..config import ResolvedConfig
from ..deltas.context import open_cache
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


def zoo_tasks(resolved: ResolvedConfig) -> dict[str, str]:
    """Adapter id -> task from the zoo manifest (empty when there is no zoo)."""
    from ..zoo_manifest import Zoo

    try:
        zoo = Zoo.load(workdir.path(resolved, "zoo"), must_exist=False)
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
    """Build the ``[index]`` kind over the cached deltas of the zoo's adapters (every cached delta when there
    is no zoo) and save it under ``<workdir>/<index.path>``."""
    from ..index import DeltaIndex, get_kind, params_from_config
    from ..io import FileLock, check_output, provenance

    cfg = resolved.config
    get_kind(cfg.index.kind)  # fail on a bad kind before touching the cache
    src = workdir.path(resolved, "deltas")
    folder = Path(out) if out is not None else workdir.path(resolved, "index")
    check_output(folder, "delta index", force=force, inputs=[src], roots=[resolved.workdir, resolved.root])
    cache = open_cache(src)
    task = progress.add("index: reading cache", total=None)
    ids = list(cache.ids)
    matrix = cache.matrix().numpy()
    tasks_by_id = zoo_tasks(resolved)
    notes: list[str] = []
    if tasks_by_id:
        # With a zoo, the index holds its adapters only: the cache may still hold deltas of checkpoints
        # that `zoo build --force` removed, and a retrieval hit on one could not be merged.
        keep = [i for i, a in enumerate(ids) if a in tasks_by_id]
        if len(keep) < len(ids):
            gone = [a for a in ids if a not in tasks_by_id]
            notes.append(f"{len(gone)} cached delta(s) of adapters no longer in the zoo left out "
                         f"({', '.join(gone[:3])}{', ...' if len(gone) > 3 else ''})")
            ids = [ids[i] for i in keep]
            matrix = matrix[keep]
    excluded = set(cfg.index.exclude_tasks)
    if excluded:
        keep, _ = holdout.split(list(range(len(ids))), cfg.index.exclude_tasks, key="index.exclude_tasks",
                                task_of=lambda i: tasks_by_id.get(ids[i]), known=tasks_by_id.values())
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
        notes=notes + list(idx.meta.get("notes", [])),
    )


def index_info(resolved: ResolvedConfig) -> dict[str, Any]:
    """The saved index's metadata: kind, parameters, size, and the cache header it came from."""
    from ..index import DeltaIndex

    folder = workdir.path(resolved, "index")
    idx = DeltaIndex.load(folder)
    return {"path": str(folder), **idx.meta, "tasks": sorted({t for t in idx.tasks if t})}
