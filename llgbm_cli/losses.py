"""Losses of generator training: weight losses, the delta loss, and the multi-task λ schedule.

* weight loss ``tokens``: masked MSE between generated and teacher token grids (DnD's loss);
  ``delta_w``: MSE between ΔW = scaling·B·A of generated and teacher adapters, which does not
  depend on how ΔW is factorized into A and B.
* :class:`DeltaLoss`: generated vs teacher delta, ``mse`` | ``cosine`` | ``combined``,
  optionally on L2-normalized deltas.
* :class:`MultiTaskLoss`: ``loss_weights + λ(step) · loss_delta`` with λ ramping to
  ``max_lambda`` over ``warmup_steps`` (``constant``: 0 during warm-up, then ``max_lambda``).
"""

from __future__ import annotations

import math
from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

LAMBDA_SCHEDULES = ("constant", "linear", "cosine")
DELTA_LOSS_TYPES = ("mse", "cosine", "combined")


def masked_token_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the real cells of token grids ``[n, H, T, D]`` (mask ``[H, T, D]``)."""
    m = mask.to(pred.dtype).expand_as(pred)
    return (((pred - target) ** 2) * m).sum() / m.sum().clamp_min(1.0)


def delta_w_mse(
    pred: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    target: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
    scaling: float,
    target_scaling: float | None = None,
) -> torch.Tensor:
    """MSE of ΔW = scaling·B·A over all modules (each module's ``[n, out, in]`` counted by size)."""
    ts = scaling if target_scaling is None else target_scaling
    total, count = 0.0, 0
    for name, (A, B) in pred.items():
        tA, tB = target[name]
        d = scaling * torch.bmm(B, A) - ts * torch.bmm(tB, tA)
        total = total + (d**2).sum()
        count += d.numel()
    return total / max(count, 1)


def lambda_at(step: int, max_lambda: float, schedule: str = "linear", warmup_steps: int = 0) -> float:
    """λ after ``step`` completed optimizer steps (0-based)."""
    if schedule not in LAMBDA_SCHEDULES:
        raise ValueError(f"unknown lambda schedule {schedule!r}; valid: {', '.join(LAMBDA_SCHEDULES)}")
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(max_lambda)
    frac = step / warmup_steps
    if schedule == "constant":
        return 0.0
    if schedule == "linear":
        return float(max_lambda) * frac
    return float(max_lambda) * 0.5 * (1.0 - math.cos(math.pi * frac))


class DeltaLoss(nn.Module):
    """Generated ``[n, D]`` vs teacher ``[n, D]`` deltas."""

    def __init__(self, kind: str = "mse", normalize: bool = False):
        super().__init__()
        if kind not in DELTA_LOSS_TYPES:
            raise ValueError(f"unknown delta loss {kind!r}; valid: {', '.join(DELTA_LOSS_TYPES)}")
        self.kind = kind
        self.normalize = normalize

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if self.normalize:
            pred, target = F.normalize(pred, dim=-1), F.normalize(target, dim=-1)
        loss = pred.new_zeros(())
        if self.kind in ("mse", "combined"):
            loss = loss + F.mse_loss(pred, target)
        if self.kind in ("cosine", "combined"):
            loss = loss + (1.0 - F.cosine_similarity(pred, target, dim=-1, eps=1e-8)).mean()
        return loss


class MultiTaskLoss(nn.Module):
    """``loss_weights + λ(step) · loss_delta``; returns ``(total, λ)``."""

    def __init__(self, max_lambda: float = 1.0, schedule: str = "linear", warmup_steps: int = 500):
        super().__init__()
        lambda_at(0, max_lambda, schedule, warmup_steps)  # validates the schedule name
        self.max_lambda = float(max_lambda)
        self.schedule = schedule
        self.warmup_steps = int(warmup_steps)

    def lambda_at(self, step: int) -> float:
        return lambda_at(step, self.max_lambda, self.schedule, self.warmup_steps)

    def forward(self, loss_weights: torch.Tensor, loss_delta: torch.Tensor | None, step: int):
        lam = self.lambda_at(step)
        if loss_delta is None:
            return loss_weights, lam
        return loss_weights + lam * loss_delta, lam


def lora_norm_penalty(loras: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean squared entry of the generated factors A and B over all modules (size-independent)."""
    total, count = 0.0, 0
    for A, B in loras.values():
        total = total + (A.float() ** 2).sum() + (B.float() ** 2).sum()
        count += A.numel() + B.numel()
    return total / max(count, 1)


def lora_batch_variance(loras: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """Mean variance of each factor entry across the batch of generated adapters (0 for one adapter)."""
    first = next(iter(loras.values()))[0]
    if first.shape[0] < 2:
        return first.new_zeros(())
    total, count = 0.0, 0
    for A, B in loras.values():
        total = total + A.float().var(0, unbiased=False).sum() + B.float().var(0, unbiased=False).sum()
        count += A[0].numel() + B[0].numel()
    return total / max(count, 1)


class DeltaOnlyLoss(nn.Module):
    """B1's objective: the delta loss plus regularizers that keep a delta-only generator honest.

    ``loss = delta + norm_weight·‖θ̂‖² − variance_weight·Var_batch(θ̂) + kl_weight·KL(base ‖ adapted)``:
    the norm penalty (mean squared factor entry) keeps the LoRA from blowing up, the *negative*
    batch variance rewards different adapters for different conditions (against collapse), and the
    optional KL tether keeps the adapted model's probe next-token distribution near the base's.
    Returns a dict of the total ``loss`` and each term (``loss_delta``, ``loss_norm``,
    ``loss_variance`` (the negative-variance term), ``loss_kl``).
    """

    def __init__(
        self,
        kind: str = "mse",
        normalize: bool = False,
        norm_weight: float = 0.01,
        variance_weight: float = 0.001,
        kl_weight: float = 0.0,
    ):
        super().__init__()
        self.delta = DeltaLoss(kind, normalize)
        self.norm_weight = float(norm_weight)
        self.variance_weight = float(variance_weight)
        self.kl_weight = float(kl_weight)

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        loras: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        logits: torch.Tensor | None = None,
        base_logits: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        ld = self.delta(pred, target)
        norm = lora_norm_penalty(loras)
        neg_var = -lora_batch_variance(loras)
        total = ld + self.norm_weight * norm + self.variance_weight * neg_var
        out = {"loss_delta": ld, "loss_norm": norm, "loss_variance": neg_var}
        if self.kl_weight > 0:
            if logits is None or base_logits is None:
                raise ValueError("DeltaOnlyLoss: kl_weight > 0 needs the adapted and base probe logits")
            lp = F.log_softmax(logits.float(), dim=-1)
            lb = F.log_softmax(base_logits.float(), dim=-1)
            lb = lb.repeat(lp.shape[0] // lb.shape[0], 1)  # base rows for every adapter's block
            kl = F.kl_div(lp, lb, log_target=True, reduction="batchmean")
            total = total + self.kl_weight * kl
            out["loss_kl"] = kl
        out["loss"] = total
        return out
