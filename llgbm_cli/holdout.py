"""Held-out tasks: one splitter for every place that leaves tasks out.

A task is held out in four places, each with its own config key (they stay separate because a
study may want, say, an index without a task while the generator saw it):

* ``train.multitask.holdout_tasks``: the multitask generator is not trained on its adapters;
* ``train.delta_only.holdout_tasks``: neither B1 nor the B2 predictor is trained on them;
* ``index.exclude_tasks``: the retrieval index holds none of their adapters;
* ``eval.holdout`` (or ``eval --holdout``): evaluated as held out; eval refuses a generator,
  predictor or index that saw them, so a mismatch with the keys above is an error, not a footnote.

:func:`split` is the only place that divides adapters into kept and held out; ``llgbm config show``
prints :func:`where_held_out`, so the project says in one table which task is held out where.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Optional, Sequence, TypeVar

from .errors import InputError

T = TypeVar("T")

# config key -> what holding a task out there means
KEYS: dict[str, str] = {
    "train.multitask.holdout_tasks": "the multitask generator is not trained on it",
    "train.delta_only.holdout_tasks": "B1 and the B2 predictor are not trained on it",
    "index.exclude_tasks": "the retrieval index holds none of its adapters",
    "eval.holdout": "eval reports it as held out and refuses a method that saw it",
}


def _task(e: Any) -> Optional[str]:
    return e.task


def split(
    items: Sequence[T],
    holdout: Iterable[str],
    *,
    key: str,
    task_of: Callable[[T], Optional[str]] = _task,
    known: Optional[Iterable[str]] = None,
) -> tuple[list[T], list[T]]:
    """(kept, held out) in ``items`` order. Every held-out name must be a known task (default: the
    items' tasks) and at least one item must be kept; errors name ``key``, the config key or flag."""
    held_set = list(dict.fromkeys(holdout))
    tasks = sorted({t for t in (known if known is not None else (task_of(i) for i in items)) if t})
    bad = [t for t in held_set if t not in tasks]
    if bad:
        raise InputError(f"{key}: {', '.join(bad)} not among the zoo's tasks ({', '.join(tasks) or 'none'})")
    kept = [i for i in items if task_of(i) not in held_set]
    held = [i for i in items if task_of(i) in held_set]
    if held_set and not kept:
        raise InputError(f"{key}: every task is held out; keep at least one")
    return kept, held


def split_entries(entries: Sequence[T], holdout: Sequence[str], val_fraction: float, seed: int, *,
                  key: str = "train.delta_only.holdout_tasks") -> tuple[list[T], list[T]]:
    """Held-out tasks when named (leave-task-out, :func:`split`), else a seeded random share of the
    adapters (validation of the B2 predictor when no task is held out)."""
    import random

    if holdout:
        return split(entries, holdout, key=key)
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    n_val = int(round(val_fraction * len(entries))) if len(entries) > 1 else 0
    n_val = min(n_val, len(entries) - 1)
    val_idx = set(order[:n_val])
    return [e for i, e in enumerate(entries) if i not in val_idx], [e for i, e in enumerate(entries) if i in val_idx]


def where_held_out(config) -> dict[str, dict[str, Any]]:
    """Per config key, the tasks it holds out and what that means (for ``config show``)."""
    values = {
        "train.multitask.holdout_tasks": config.train.multitask.holdout_tasks,
        "train.delta_only.holdout_tasks": config.train.delta_only.holdout_tasks,
        "index.exclude_tasks": config.index.exclude_tasks,
        "eval.holdout": config.eval.holdout,
    }
    return {k: {"tasks": list(values[k]), "means": KEYS[k]} for k in KEYS}


def disagreements(config) -> list[str]:
    """Tasks eval holds out that a training key or the index still uses (each one line)."""
    out = []
    ev = set(config.eval.holdout)
    for k, tasks in where_held_out(config).items():
        if k == "eval.holdout" or not ev:
            continue
        missing = sorted(ev - set(tasks["tasks"]))
        if missing:
            out.append(f"eval.holdout has {', '.join(missing)} but {k} does not; eval will refuse the method it feeds")
    return out
