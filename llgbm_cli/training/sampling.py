"""Batch sampling of training adapters."""

from __future__ import annotations

from typing import Sequence


def task_stratified_batch(rng, tasks: Sequence[str], size: int) -> list[int]:
    """``size`` distinct indices into ``tasks`` (each index's task label), spread over as many tasks
    as possible: tasks are visited in a random order, round after round, each round taking one
    adapter not taken yet from every task that has one left. With at least ``size`` tasks every
    adapter of the batch is from a different task. ``rng`` is a numpy Generator."""
    if size > len(tasks):
        raise ValueError(f"batch of {size} from {len(tasks)} adapters")
    groups: dict[str, list[int]] = {}
    for i, t in enumerate(tasks):
        groups.setdefault(t, []).append(i)
    names = sorted(groups)
    pools = [[groups[names[j]][k] for k in rng.permutation(len(groups[names[j]]))] for j in rng.permutation(len(names))]
    out: list[int] = []
    while len(out) < size:
        for pool in pools:
            if pool and len(out) < size:
                out.append(pool.pop(0))
    return out
