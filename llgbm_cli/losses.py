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


MATCH_SPACES = ("delta", "delta_w")


def pairwise_cosines(x: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``[n, n]`` of the rows of ``x`` ``[n, D]``, in float64 (so that 1 − cos
    keeps its precision for nearly parallel rows)."""
    xn = F.normalize(x.double(), dim=-1, eps=1e-12)
    return xn @ xn.T


def delta_w_gram(loras: Mapping[str, tuple[torch.Tensor, torch.Tensor]], scaling: float) -> torch.Tensor:
    """Gram matrix ``[n, n]`` of the adapters' flattened ΔW = scaling·B·A over all modules, without
    forming ΔW: ⟨B_i A_i, B_j A_j⟩_F = Σ (B_iᵀB_j) ⊙ (A_i A_jᵀ), r×r per pair; in float64."""
    total = None
    for A, B in loras.values():
        bb = torch.einsum("ioa,joc->ijac", B.double(), B.double())
        aa = torch.einsum("iak,jck->ijac", A.double(), A.double())
        g = (bb * aa).sum((-1, -2))
        total = g if total is None else total + g
    return float(scaling) ** 2 * total


def gram_cosines(gram: torch.Tensor) -> torch.Tensor:
    """Cosines ``[n, n]`` from a Gram matrix."""
    d = gram.diagonal().clamp_min(1e-24).sqrt()
    return gram / (d[:, None] * d[None, :])


def relational_loss(gen_cos: torch.Tensor, teacher_cos: torch.Tensor) -> torch.Tensor:
    """Mismatch of two pairwise-cosine matrices ``[n, n]``: the mean over pairs i<j of
    ``(s_ij − t_ij)²`` with ``s = √((1 − cos)/2)`` (the half chord between unit vectors, ``sin(θ/2)``),
    0 exactly when the two cosine matrices agree. On the chord rather than the cosine, the pull
    apart of nearly identical outputs does not fade as they approach each other (d cos/dθ → 0 at θ = 0,
    d sin(θ/2)/dθ → ½). Computed in float64, returned in float32. 0 for fewer than two adapters."""
    n = gen_cos.shape[0]
    if n < 2:
        return gen_cos.new_zeros((), dtype=torch.float32)
    iu = torch.triu_indices(n, n, offset=1, device=gen_cos.device)
    half_chord = lambda c: ((1.0 - c[iu[0], iu[1]].double()).clamp_min(0.0) / 2.0 + 1e-24).sqrt()  # noqa: E731
    return ((half_chord(gen_cos) - half_chord(teacher_cos.to(gen_cos))) ** 2).mean().float()


def log_norm_match(gen_sq_norms: torch.Tensor, teacher_sq_norms: torch.Tensor) -> torch.Tensor:
    """Mean over adapters of ``(log‖g_i‖ − log‖t_i‖)²`` from squared norms ``[n]``: scale-free, and
    growing without bound as a generated norm falls toward 0 (against norm collapse)."""
    lg = gen_sq_norms.double().clamp_min(1e-30).log() / 2
    lt = teacher_sq_norms.to(lg).clamp_min(1e-30).log() / 2
    return ((lg - lt) ** 2).mean().float()


class DeltaOnlyLoss(nn.Module):
    """B1's objective: the delta loss plus regularizers that keep a delta-only generator honest.

    ``loss = delta + norm_weight·‖θ̂‖² − variance_weight·Var_batch(θ̂) + kl_weight·KL(base ‖ adapted)``:
    the norm penalty (mean squared factor entry) keeps the LoRA from blowing up, the *negative*
    batch variance rewards different adapters for different conditions (against collapse), and the
    optional KL tether keeps the adapted model's probe next-token distribution near the base's.
    Returns a dict of the total ``loss`` and each term (``loss_delta``, ``loss_norm``,
    ``loss_variance`` (the negative-variance term), ``loss_kl``).

    Optional terms (off at weight 0, and then not computed): ``relational_weight·R`` with
    :func:`relational_loss` between the generated and the teachers' pairwise cosines within the
    batch (``loss_relational``), and ``norm_match_weight·N`` with :func:`log_norm_match`
    (``loss_norm_match``); ``space`` says what they compare: the deltas (``delta``) or the flattened
    ΔW (``delta_w``, needs ``teacher_loras`` and ``scaling``). ``center`` (a ``[D]`` delta, e.g. the
    mean training delta) is subtracted from generated and teacher deltas before the delta loss and
    the delta-space terms. ``kind = "kl"``: the delta term is the answer-level KL the caller computed
    (:class:`~llgbm_cli.training.answer_kl.AnswerKL`), passed as ``delta_term``.
    """

    def __init__(
        self,
        kind: str = "mse",
        normalize: bool = False,
        norm_weight: float = 0.01,
        variance_weight: float = 0.001,
        kl_weight: float = 0.0,
        relational_weight: float = 0.0,
        norm_match_weight: float = 0.0,
        space: str = "delta",
        center: torch.Tensor | None = None,
    ):
        super().__init__()
        if space not in MATCH_SPACES:
            raise ValueError(f"unknown match space {space!r}; valid: {', '.join(MATCH_SPACES)}")
        # kind "kl": the delta term is answer-level KL, computed by the caller and passed as ``delta_term``
        self.delta = None if kind == "kl" else DeltaLoss(kind, normalize)
        self.norm_weight = float(norm_weight)
        self.variance_weight = float(variance_weight)
        self.kl_weight = float(kl_weight)
        self.relational_weight = float(relational_weight)
        self.norm_match_weight = float(norm_match_weight)
        self.space = space
        self.center = center

    def forward(
        self,
        pred: torch.Tensor,
        target: torch.Tensor,
        loras: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
        logits: torch.Tensor | None = None,
        base_logits: torch.Tensor | None = None,
        teacher_loras: Mapping[str, tuple[torch.Tensor, torch.Tensor]] | None = None,
        scaling: float | None = None,
        delta_term: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if self.center is not None:
            c = self.center.to(pred)
            pred, target = pred - c, target - c
        if self.delta is None:
            if delta_term is None:
                raise ValueError("DeltaOnlyLoss: kind 'kl' needs the answer-level KL as delta_term")
            ld = delta_term
        else:
            ld = self.delta(pred, target)
        norm = lora_norm_penalty(loras)
        neg_var = -lora_batch_variance(loras)
        total = ld + self.norm_weight * norm + self.variance_weight * neg_var
        out = {"loss_delta": ld, "loss_norm": norm, "loss_variance": neg_var}
        if self.relational_weight > 0 or self.norm_match_weight > 0:
            if self.space == "delta":
                g_cos, t_cos = pairwise_cosines(pred), pairwise_cosines(target.detach())
                g_sq, t_sq = pred.double().pow(2).sum(-1), target.detach().double().pow(2).sum(-1)
            else:
                if teacher_loras is None or scaling is None:
                    raise ValueError("DeltaOnlyLoss: space 'delta_w' needs the teacher LoRAs and the scaling")
                g_gram = delta_w_gram(loras, scaling)
                with torch.no_grad():
                    t_gram = delta_w_gram(teacher_loras, scaling)
                g_cos, t_cos = gram_cosines(g_gram), gram_cosines(t_gram)
                g_sq, t_sq = g_gram.diagonal(), t_gram.diagonal()
            if self.relational_weight > 0:
                rel = relational_loss(g_cos, t_cos)
                total = total + self.relational_weight * rel
                out["loss_relational"] = rel
            if self.norm_match_weight > 0:
                nm = log_norm_match(g_sq, t_sq)
                total = total + self.norm_match_weight * nm
                out["loss_norm_match"] = nm
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


# --------------------------------------------------------------------------- weight-loss options

WEIGHT_LOSSES = ("tokens", "delta_w", "factors")
WEIGHT_NORMS = ("mse", "l1")
TOKEN_WEIGHTINGS = ("none", "spread")


def token_spread_weights(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token weights ``[H, T]`` from teacher token grids ``[N, H, T, D]`` (DnD's criterion weight).

    A token's weight is the mean, over its real cells, of the cells' spread (std across the N
    teachers), divided by the mean spread of all real cells: tokens that vary across checkpoints
    count more, constant ones (padding-like) less; the mean weight over real cells is 1.
    """
    m = mask.to(tokens.dtype)
    std = tokens.std(0, unbiased=False) * m if tokens.shape[0] > 1 else m.clone()
    per_token = std.sum(-1) / m.sum(-1).clamp_min(1.0)
    overall = std.sum() / m.sum().clamp_min(1.0)
    return per_token / overall.clamp_min(1e-12)


def _err(d: torch.Tensor, norm: str) -> torch.Tensor:
    return d.abs() if norm == "l1" else d**2


class WeightLoss:
    """The weight loss of generator training, built once from the training teachers.

    * ``tokens``: masked error on the normalized token grids, optionally weighted per token by the
      teachers' spread (``weighting = "spread"``, DnD);
    * ``delta_w``: MSE on ΔW = scaling·B·A (independent of how ΔW is factorized);
    * ``factors``: error on A and B element by element, both z-scored with the training teachers'
      per-element mean and std (T2L's reconstruction target; its own loss is L1).

    ``norm`` (``mse`` | ``l1``) is the error of ``tokens`` and ``factors``. ``target_noise`` adds
    Gaussian noise of that std to the ``tokens``/``factors`` target every step (DnD's augmentation).
    """

    def __init__(self, kind: str, norm: str, layout, mask: torch.Tensor, scaling: float,
                 teacher_tokens: torch.Tensor, teacher_ab: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                 n_train: int, weighting: str = "none", target_noise: float = 0.0):
        if kind not in WEIGHT_LOSSES:
            raise ValueError(f"unknown weight loss {kind!r}; valid: {', '.join(WEIGHT_LOSSES)}")
        if norm not in WEIGHT_NORMS:
            raise ValueError(f"unknown weight-loss norm {norm!r}; valid: {', '.join(WEIGHT_NORMS)}")
        if weighting not in TOKEN_WEIGHTINGS:
            raise ValueError(f"unknown token weighting {weighting!r}; valid: {', '.join(TOKEN_WEIGHTINGS)}")
        self.kind, self.norm, self.layout, self.mask, self.scaling = kind, norm, layout, mask, float(scaling)
        self.tokens, self.ab = teacher_tokens, teacher_ab
        self.noise = float(target_noise)
        self.cell_weights = mask
        if kind == "tokens" and weighting == "spread":
            w = token_spread_weights(teacher_tokens[:n_train], mask)
            self.cell_weights = mask * w.unsqueeze(-1)
        self.stats: dict[str, tuple[torch.Tensor, ...]] = {}
        if kind == "factors":
            for k, (A, B) in teacher_ab.items():
                a, b = A[:n_train], B[:n_train]
                self.stats[k] = (a.mean(0), _safe_std(a), b.mean(0), _safe_std(b))

    def _noise(self, like: torch.Tensor, rng) -> torch.Tensor:
        if self.noise <= 0 or rng is None:
            return torch.zeros_like(like)
        return torch.from_numpy(rng.standard_normal(tuple(like.shape))).to(like) * self.noise

    def __call__(self, g, idx: torch.Tensor, rng=None) -> torch.Tensor:
        """Loss of the generated batch ``g`` (a GeneratedLora) against teachers ``idx``; ``rng``
        (numpy Generator) draws the target noise."""
        if self.kind == "delta_w":
            tgt = {k: (A[idx], B[idx]) for k, (A, B) in self.ab.items()}
            return delta_w_mse(g.loras, tgt, self.scaling)
        if self.kind == "tokens":
            pred = g.tokens if g.tokens is not None else self.layout.tokenize(g.loras)
            tgt = self.tokens[idx]
            if self.norm == "mse" and self.cell_weights is self.mask and self.noise <= 0:
                return masked_token_mse(pred, tgt, self.mask)  # the plain loss, computed as it always was
            tgt = tgt + self._noise(tgt, rng) * self.mask
            w = self.cell_weights.to(pred.dtype).expand_as(pred)
            return (_err(pred - tgt, self.norm) * w).sum() / self.mask.sum().clamp_min(1.0) / pred.shape[0]
        total, count = 0.0, 0
        for k in self.layout.module_names:
            A, B = g.loras[k]
            mA, sA, mB, sB = self.stats[k]
            tA, tB = self.ab[k][0][idx], self.ab[k][1][idx]
            zt_A, zt_B = (tA - mA) / sA, (tB - mB) / sB
            zt_A, zt_B = zt_A + self._noise(zt_A, rng), zt_B + self._noise(zt_B, rng)
            total = total + _err((A - mA) / sA - zt_A, self.norm).sum() + _err((B - mB) / sB - zt_B, self.norm).sum()
            count += A.numel() + B.numel()
        return total / max(count, 1)


def _safe_std(x: torch.Tensor) -> torch.Tensor:
    """Per-element std over dim 0; 1 where it is ~0 (one teacher, or an element that never varies)."""
    if x.shape[0] < 2:
        return torch.ones_like(x[0])
    s = x.std(0, unbiased=False)
    return torch.where(s > 1e-8, s, torch.ones_like(s))


# --------------------------------------------------------------------------- multitask levers


class CenteredDeltaLoss(DeltaLoss):
    """The delta loss on centered deltas: ``DeltaLoss(pred − μ, target − μ)`` with ``μ`` the mean
    training teacher delta ``[D]``. The part every teacher shares cancels out, so only the
    task-specific part is compared; adding one vector to every delta leaves the loss unchanged."""

    def __init__(self, mean: torch.Tensor, kind: str = "mse", normalize: bool = False):
        super().__init__(kind, normalize)
        self.register_buffer("mean", mean.detach().reshape(-1).clone())

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        mu = self.mean.to(device=pred.device, dtype=pred.dtype)
        return super().forward(pred - mu, target - mu.to(target.dtype))


def grad_norm(loss: torch.Tensor, params) -> torch.Tensor:
    """‖∂loss/∂params‖₂ over all ``params`` (the graph is kept for the real backward)."""
    params = list(params)
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    sq = [g.detach().float().pow(2).sum() for g in grads if g is not None]
    return torch.stack(sq).sum().sqrt() if sq else loss.new_zeros(()).float()


def gradnorm_scale(loss_weights: torch.Tensor, loss_delta: torch.Tensor, params, eps: float = 1e-12):
    """GradNorm-style balance of two terms: ``c = ‖∇L_w‖ / ‖∇L_d‖`` (a constant, no gradient), so
    that ``c·L_d`` has the weight term's gradient norm. Returns ``(c, ‖∇L_w‖, ‖∇L_d‖)``."""
    params = list(params)
    gw = grad_norm(loss_weights, params)
    gd = grad_norm(loss_delta, params)
    c = gw / gd.clamp_min(eps) if float(gd) > eps else gw.new_zeros(())
    return c.detach(), gw, gd


class UncertaintyWeights(nn.Module):
    """Learned homoscedastic task weights (Kendall, Gal & Cipolla): one log-variance ``s_i`` per
    term, starting at 0; ``term_i = exp(−s_i)·L_i + s_i``. Trained by the run's optimizer (no
    weight decay) and saved with every checkpoint."""

    TERMS = ("weights", "delta")

    def __init__(self):
        super().__init__()
        self.log_vars = nn.Parameter(torch.zeros(len(self.TERMS)))

    def term(self, name: str, loss: torch.Tensor) -> torch.Tensor:
        s = self.log_vars[self.TERMS.index(name)]
        return torch.exp(-s) * loss + s

    def weight(self, name: str) -> float:
        return float(torch.exp(-self.log_vars[self.TERMS.index(name)]).detach())
