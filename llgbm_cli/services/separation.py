"""`llgbm zoo separation`: do the teachers' cached deltas carry their task?

Reads the delta cache of the project's probe settings and the zoo manifest, and reports the
leave-one-out nearest-neighbour task accuracy of the teacher deltas (cosine), raw and centered on
the mean delta, twice: leaving out only the checkpoint itself, and leaving out its whole trajectory
(every checkpoint of the same run of its task, as ``trajectory_of`` tells them apart), which
checkpoints of one trajectory cannot pass by resembling each other. With the within- and between-task mean cosines beside each.
"""

from __future__ import annotations

from typing import Any


def zoo_separation(resolved) -> dict[str, Any]:
    import torch

    from .. import workdir
    from ..deltas.context import open_cache
    from ..errors import InputError
    from ..evaluation.delta_metrics import loo_nearest_task
    from ..zoo_manifest import Zoo
    from .zoo import trajectory_of

    cache = open_cache(workdir.path(resolved, "deltas"))
    zoo = Zoo.load(workdir.path(resolved, "zoo"))
    entries = [e for e in zoo.entries if e.id in cache]
    if len({e.task for e in entries}) < 2:
        raise InputError(f"{cache.folder}: deltas of at least two tasks are needed; "
                         f"{workdir.hint('deltas', None)} after `llgbm zoo build`")
    X = torch.stack([cache.row(e.id).double() for e in entries])
    tasks = [e.task for e in entries]
    groups = [trajectory_of(e) for e in entries]
    out: dict[str, Any] = {"cache": str(cache.folder), "probes": cache.header.get("probes", {}).get("source"),
                           "adapters": len(entries), "tasks": len(set(tasks))}
    for name, M in (("raw", X), ("centered", X - X.mean(0, keepdim=True))):
        out[name] = {"leave_one_checkpoint_out": loo_nearest_task(M, tasks),
                     "leave_one_trajectory_out": loo_nearest_task(M, tasks, groups)}
    return out
