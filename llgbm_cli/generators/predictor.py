"""B2: the DeltaPredictor, frozen sentence encoder -> MLP -> delta vector.

The encoder is frozen, so training works on precomputed prompt embeddings: a condition is the
mean of the (normalized) embeddings of a handful of a task's prompts, and each epoch draws a
fresh subset per adapter (augmentation at no encoder cost). Targets are standardized per
dimension with the training set's mean and std (kept as buffers in the checkpoint): cached deltas
share a large common component, and without it MSE spends its capacity on that mean.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..errors import CheckFailed, InputError

WEIGHTS = "predictor.safetensors"
META = "predictor.json"


class DeltaPredictor(nn.Module):
    """condition embedding [n, cond_dim] -> delta [n, delta_dim] (3 linear layers, GELU, dropout)."""

    def __init__(self, cond_dim: int, delta_dim: int, hidden: int = 2048, dropout: float = 0.1):
        super().__init__()
        self.cond_dim, self.delta_dim, self.hidden, self.dropout = int(cond_dim), int(delta_dim), int(hidden), float(dropout)
        self.net = nn.Sequential(
            nn.Linear(cond_dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, delta_dim),
        )
        self.register_buffer("target_mean", torch.zeros(delta_dim))
        self.register_buffer("target_std", torch.ones(delta_dim))

    def set_target_stats(self, targets: torch.Tensor) -> None:
        self.target_mean.copy_(targets.mean(0))
        std = targets.std(0, unbiased=False) if targets.shape[0] > 1 else torch.ones_like(self.target_std)
        # Dimensions that never vary would divide by ~0; their scale is irrelevant to the loss.
        self.target_std.copy_(torch.where(std > 1e-8, std, torch.ones_like(std)))

    def forward_standardized(self, cond: torch.Tensor) -> torch.Tensor:
        return self.net(cond)

    def forward(self, cond: torch.Tensor) -> torch.Tensor:
        """The predicted delta in the cache's units."""
        return self.net(cond) * self.target_std + self.target_mean

    def options(self) -> dict[str, Any]:
        return {"cond_dim": self.cond_dim, "delta_dim": self.delta_dim, "hidden": self.hidden, "dropout": self.dropout}


# --------------------------------------------------------------------------- conditions


def condition_vector(embs: torch.Tensor, k: Optional[int] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """Mean of ``k`` randomly chosen prompt embeddings (all of them when k is None), L2-normalized."""
    if embs.shape[0] == 0:
        raise InputError("a condition needs at least one prompt")
    if k is not None and k < embs.shape[0]:
        embs = embs[torch.randperm(embs.shape[0], generator=generator)[:k]]
    return F.normalize(embs.mean(0), dim=-1)


def encode_conditions(encoder, prompt_sets: Sequence[Sequence[str]], max_length: int = 256) -> list[torch.Tensor]:
    """Encode each set of prompts once: a list of [k_i, d] normalized embeddings."""
    flat = [p for s in prompt_sets for p in s]
    embs = encoder.encode(flat, normalize=True, max_length=max_length) if flat else torch.zeros(0, encoder.dim)
    out, i = [], 0
    for s in prompt_sets:
        out.append(embs[i : i + len(s)])
        i += len(s)
    return out


# --------------------------------------------------------------------------- training


@dataclass
class FitResult:
    model: DeltaPredictor
    history: list[dict[str, float]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)


def _loss(kind: str, model: DeltaPredictor, cond: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if kind == "mse":
        z = (target - model.target_mean) / model.target_std
        return F.mse_loss(model.forward_standardized(cond), z)
    if kind == "cosine":
        return (1 - F.cosine_similarity(model(cond), target, dim=-1)).mean()
    raise InputError(f"train.b2.loss: unknown loss {kind!r}; valid: mse, cosine")


@torch.no_grad()
def evaluate(model: DeltaPredictor, conds: torch.Tensor, targets: torch.Tensor, baseline: Optional[torch.Tensor] = None) -> dict[str, float]:
    """Held-out figures: MSE, mean cosine to the teacher deltas, and the mean-delta baseline's cosine."""
    was = model.training
    model.eval()
    pred = model(conds)
    model.train(was)
    out = {
        "mse": float(F.mse_loss(pred, targets)),
        "cosine": float(F.cosine_similarity(pred, targets, dim=-1).mean()),
        # Cosine after removing the training mean: how much of the task-specific direction is right.
        "centered_cosine": float(F.cosine_similarity(pred - model.target_mean, targets - model.target_mean, dim=-1).mean()),
    }
    if baseline is not None:
        out["mean_delta_cosine"] = float(F.cosine_similarity(baseline.expand_as(targets), targets, dim=-1).mean())
    return out


def fit_predictor(
    train_embs: Sequence[torch.Tensor],
    train_targets: torch.Tensor,
    *,
    val_embs: Sequence[torch.Tensor] = (),
    val_targets: Optional[torch.Tensor] = None,
    hidden: int = 2048,
    dropout: float = 0.1,
    learning_rate: float = 1e-3,
    weight_decay: float = 0.01,
    epochs: int = 200,
    batch_size: int = 32,
    prompts_per_condition: Optional[int] = 8,
    loss: str = "mse",
    seed: int = 0,
    log_interval: int = 10,
    on_epoch: Optional[Callable[[int, dict], None]] = None,
) -> FitResult:
    """Train a DeltaPredictor on (prompt-embedding sets, delta) pairs.

    ``train_embs[i]`` is a [k_i, d] tensor of adapter i's prompt embeddings; each epoch a subset of
    ``prompts_per_condition`` is averaged per adapter. Validation uses every prompt (deterministic).
    Raises CheckFailed when the loss turns NaN/Inf.
    """
    if len(train_embs) == 0:
        raise InputError("no training pairs for the delta predictor: the zoo and the delta cache share no adapter")
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    targets = train_targets.float()
    model = DeltaPredictor(train_embs[0].shape[-1], targets.shape[1], hidden, dropout)
    model.set_target_stats(targets)
    opt = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    n = len(train_embs)
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * steps_per_epoch)
    val_cond = torch.stack([condition_vector(e) for e in val_embs]) if len(val_embs) else None
    history: list[dict[str, float]] = []
    model.train()
    for epoch in range(1, epochs + 1):
        perm = torch.randperm(n, generator=g)
        total = 0.0
        for s in range(0, n, batch_size):
            idx = perm[s : s + batch_size]
            cond = torch.stack([condition_vector(train_embs[i], prompts_per_condition, g) for i in idx.tolist()])
            lv = _loss(loss, model, cond, targets[idx])
            if not torch.isfinite(lv):
                raise CheckFailed(f"delta predictor loss became {float(lv)} at epoch {epoch}; "
                                  "lower train.b2.learning_rate")
            opt.zero_grad(set_to_none=True)
            lv.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            sched.step()
            total += float(lv.detach()) * len(idx)
        if epoch % log_interval == 0 or epoch == epochs:
            rec = {"epoch": epoch, "loss": total / n}
            if val_cond is not None and val_targets is not None:
                rec.update({f"val_{k}": v for k, v in evaluate(model, val_cond, val_targets.float(), model.target_mean).items()})
            history.append(rec)
            if on_epoch is not None:
                on_epoch(epoch, rec)
    model.eval()
    final = dict(history[-1]) if history else {}
    return FitResult(model, history, final)


# --------------------------------------------------------------------------- checkpoints


def save_predictor(folder: str | Path, model: DeltaPredictor, meta: dict[str, Any]) -> None:
    """Write weights + ``predictor.json`` into an existing (temporary) folder."""
    from ..io import save_safetensors as save_file

    from ..io import atomic_write_json

    folder = Path(folder)
    save_file({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}, str(folder / WEIGHTS))
    atomic_write_json(folder / META, {**meta, "predictor": model.options()})


def load_predictor(folder: str | Path, device: str = "cpu") -> tuple[DeltaPredictor, dict[str, Any]]:
    """Rebuild a trained predictor: ``(model, meta)``; a missing checkpoint names the command that makes it."""
    from safetensors.torch import load_file

    folder = Path(folder)
    mp, wp = folder / META, folder / WEIGHTS
    if not mp.exists() or not wp.exists():
        raise InputError(
            f"{folder}: no delta predictor checkpoint (needs {META} and {WEIGHTS}); "
            "train it with `llgbm train delta-only --variant b2`"
        )
    retrain = "retrain with `llgbm train delta-only --variant b2 --force`"
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{mp}: corrupt JSON ({e}); {retrain}")
    try:
        model = DeltaPredictor(**meta["predictor"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise InputError(f"{mp}: not a usable predictor description ({type(e).__name__}: {e}); {retrain}")
    try:
        model.load_state_dict(load_file(str(wp)))
    except Exception as e:  # safetensors header errors, missing or misshapen tensors
        raise InputError(f"{wp}: corrupt or mismatched predictor weights ({str(e).splitlines()[0][:160]}); {retrain}")
    model.to(device).eval()
    return model, meta
