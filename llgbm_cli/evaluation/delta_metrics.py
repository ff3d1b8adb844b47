"""Delta-space metrics of a method's delta against the task's teacher delta.

Raw cosine flatters: adapters trained on similar answer formats share a large common delta, so a
delta that ignores the task can still point the teacher's way. Two metrics look past that:

* ``centered_cosine``: cosine after subtracting the mean delta of the training adapters from
  both vectors, i.e. the agreement on what is specific to the task;
* ``task_identification``: whether the delta lies nearest (Euclidean) to its own task's teacher
  among every task's teacher. Euclidean distance is unchanged by centering, so the common
  component cannot help a method here either.

All functions take 1-D float tensors ``[D]`` (or ``[n, D]`` where noted) and return floats.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Mapping, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch

EPS = 1e-12


def delta_mse(pred: "torch.Tensor", target: "torch.Tensor") -> float:
    """Mean squared error over the delta's D entries."""
    return float(((pred.double() - target.double()) ** 2).mean())


def delta_cosine(pred: "torch.Tensor", target: "torch.Tensor") -> float:
    """Cosine similarity; 0.0 when either vector is zero (the base model's delta is zero)."""
    p, t = pred.double(), target.double()
    den = float(p.norm() * t.norm())
    return float(p @ t) / den if den > EPS else 0.0


def centered_cosine(pred: "torch.Tensor", target: "torch.Tensor", mean: "torch.Tensor") -> float:
    """Cosine of ``pred - mean`` and ``target - mean`` (``mean``: the training adapters' mean delta)."""
    return delta_cosine(pred.double() - mean.double(), target.double() - mean.double())


def norm_ratio(pred: "torch.Tensor", target: "torch.Tensor") -> float:
    """‖pred‖ / ‖target‖ (1 means the method moves the model as far as the teacher does)."""
    t = float(target.double().norm())
    return float(pred.double().norm()) / t if t > EPS else math.nan


def nearest_task(pred: "torch.Tensor", teachers: Mapping[str, "torch.Tensor"]) -> str:
    """The task whose teacher delta is nearest to ``pred`` (Euclidean; ties: first in sorted order)."""
    best, best_d = None, math.inf
    for task in sorted(teachers):
        d = float((pred.double() - teachers[task].double()).norm())
        if d < best_d:
            best, best_d = task, d
    if best is None:
        raise ValueError("no teacher deltas to compare with")
    return best


def task_identification(cases: list[tuple[str, "torch.Tensor"]], teachers: Mapping[str, "torch.Tensor"]) -> float:
    """Share of ``(task, delta)`` cases whose delta is nearest to its own task's teacher."""
    if not cases:
        return math.nan
    hits = sum(nearest_task(d, teachers) == task for task, d in cases)
    return hits / len(cases)


def delta_metrics(pred: "torch.Tensor", target: Optional["torch.Tensor"], mean: "torch.Tensor",
                  teachers: Mapping[str, "torch.Tensor"], task: str) -> dict[str, object]:
    """Every per-case delta metric of one method on one task. Without a ``target`` (a task with no
    teacher) only the nearest teacher's task is known; the rest is None, not a made-up zero."""
    near = nearest_task(pred, teachers)
    if target is None:
        return {"delta_mse": None, "delta_cosine": None, "centered_cosine": None, "norm_ratio": None,
                "nearest_task": near, "identified": None}
    return {
        "delta_mse": delta_mse(pred, target),
        "delta_cosine": delta_cosine(pred, target),
        "centered_cosine": centered_cosine(pred, target, mean),
        "norm_ratio": norm_ratio(pred, target),
        "nearest_task": near,
        "identified": near == task,
    }


def mean_of(values: list[Optional[float]]) -> float:
    """Mean of the finite values (NaN when there are none)."""
    vals = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(vals) / len(vals) if vals else math.nan


def loo_nearest_task(X: "torch.Tensor", tasks: list[str], groups: Optional[list[str]] = None) -> dict:
    """Leave-one-out nearest-neighbour task accuracy of the rows of ``X`` ``[N, D]`` (cosine).

    Each row's nearest other row (highest cosine) votes for its task; with ``groups`` (e.g. a
    teacher's trajectory) every row of the same group is left out too, so a checkpoint cannot be
    identified by its own trajectory's neighbours. Returns the accuracy, the hits per task, and the
    mean cosine between rows of the same task (other groups where given) and of different tasks.
    """
    import torch

    n = X.shape[0]
    if n != len(tasks) or (groups is not None and len(groups) != n):
        raise ValueError("loo_nearest_task: one task (and group) per row")
    Xn = X.double() / X.double().norm(dim=1, keepdim=True).clamp_min(EPS)
    C = Xn @ Xn.T
    hits: dict[str, list[int]] = {}
    same, diff = [], []
    for i in range(n):
        mask = torch.ones(n, dtype=torch.bool)
        mask[i] = False
        if groups is not None:
            mask &= torch.tensor([g != groups[i] for g in groups])
        if not bool(mask.any()):
            continue
        scores = C[i].masked_fill(~mask, -math.inf)
        j = int(torch.argmax(scores))
        hits.setdefault(tasks[i], []).append(int(tasks[j] == tasks[i]))
        for k in range(i + 1, n):
            if mask[k]:
                (same if tasks[k] == tasks[i] else diff).append(float(C[i, k]))
    total = [h for hs in hits.values() for h in hs]
    return {"accuracy": sum(total) / len(total) if total else math.nan, "n": len(total),
            "per_task": {t: sum(h) / len(h) for t, h in sorted(hits.items())},
            "within_task_cosine": sum(same) / len(same) if same else math.nan,
            "between_task_cosine": sum(diff) / len(diff) if diff else math.nan}
