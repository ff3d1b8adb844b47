"""Merging LoRA adapters: a registry of strategies and one streaming merge engine.

Why delta space by default: merging A and B factors separately, as the original plans did, gives
``(Σ wᵢBᵢ)(Σ wᵢAᵢ) = Σᵢⱼ wᵢwⱼ BᵢAⱼ``, whose cross terms ``BᵢAⱼ`` belong to no adapter. llgbm merges
``ΔWᵢ = scalingᵢ · Bᵢ · Aᵢ`` per module and factors the result back to a rank (exactly when the
rank allows). ``space="factors"`` keeps the plans' way for comparison.

Two paths, chosen by the strategy:

* ``linear``, ``task_arithmetic``, ``cat`` are linear in ΔW, so no dense ΔW is formed:
  ``Σ cᵢ ΔWᵢ = [B₁…Bₙ] · diag(cᵢ sᵢ) · [A₁; …; Aₙ]`` has rank ≤ Σ rᵢ; a QR of each stacked factor
  and an SVD of the small core give the exact truncated SVD.
* ``ties``, ``dare_linear``, ``dare_ties`` act entry-wise, so each module's ΔWᵢ is formed densely,
  one module at a time (peak memory: the inputs plus one module's n dense ΔWᵢ), merged, and factored
  by an exact truncated SVD (eigen-decomposition of the smaller Gram matrix in float64).

All entry-wise strategies are one generalized task-arithmetic merge with three settings
(sparsify: none | magnitude | random; consensus: none | sign; normalize), as in mergekit.
The registry is torch-free so the CLI can list and validate names without importing torch.
"""

from __future__ import annotations

import difflib
import hashlib
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .adapters import LoraAdapter


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class Param:
    """A strategy parameter: name, default and help."""

    name: str
    default: Any
    help: str


PARAMS: dict[str, Param] = {
    "weights": Param("weights", None, "one weight per adapter (default: 1 each)"),
    "density": Param("density", 0.5, "share of entries kept per tensor by magnitude, in (0, 1]"),
    "drop_rate": Param("drop_rate", 0.9, "probability of dropping each entry, in (0, 1]; kept ones are scaled by 1/(1-p)"),
    "seed": Param("seed", 0, "seed of the drop masks (one independent mask per adapter and module)"),
}


@dataclass(frozen=True)
class Strategy:
    """A merge strategy: a setting of the generalized task-arithmetic merge, or concatenation.

    ``normalize``: with ``consensus="none"`` the weights are divided by their sum (a weighted
    average); with ``consensus="sign"`` each entry is divided by the summed weights of the
    adapters that agree with the elected sign (a weighted disjoint mean).
    """

    name: str
    display: str
    reference: str
    summary: str
    sparsify: Literal["none", "magnitude", "random"] = "none"
    consensus: Literal["none", "sign"] = "none"
    normalize: bool = False
    concat: bool = False

    @property
    def params(self) -> tuple[str, ...]:
        p = ["weights"]
        if self.sparsify == "magnitude":
            p.append("density")
        if self.sparsify == "random":
            p += ["drop_rate", "seed"]
        return tuple(p)

    @property
    def low_rank(self) -> bool:
        """Linear in ΔW: merged exactly from the stacked factors, no dense ΔW."""
        return self.concat or self.sparsify == "none"

    @property
    def weighting(self) -> str:
        if self.concat or not self.normalize:
            return "raw (weighted sum)"
        if self.consensus == "sign":
            return "per entry, divided by the summed weights of the adapters agreeing in sign"
        return "normalized to sum 1 (weighted average)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display": self.display,
            "summary": self.summary,
            "reference": self.reference,
            "params": {p: PARAMS[p].default for p in self.params},
            "weights": self.weighting,
            "sparsify": "concat" if self.concat else self.sparsify,
            "consensus": self.consensus,
        }


STRATEGIES: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    if strategy.name in STRATEGIES:
        raise ValueError(f"merge strategy {strategy.name!r} registered twice")
    STRATEGIES[strategy.name] = strategy
    return strategy


register(Strategy("linear", "Linear (weighted average)", "https://arxiv.org/abs/2203.05482",
                  "weighted average of the adapters' ΔW", normalize=True))
register(Strategy("task_arithmetic", "Task arithmetic (weighted sum)", "https://arxiv.org/abs/2212.04089",
                  "weighted sum of the adapters' ΔW (negative weights subtract)"))
register(Strategy("ties", "TIES", "https://arxiv.org/abs/2306.01708",
                  "trim each ΔW to its top-`density` magnitudes, elect a sign per entry, disjoint mean",
                  sparsify="magnitude", consensus="sign", normalize=True))
register(Strategy("dare_linear", "DARE + linear", "https://arxiv.org/abs/2311.03099",
                  "drop entries at `drop_rate` with a seeded mask per adapter, rescale, weighted average",
                  sparsify="random", normalize=True))
register(Strategy("dare_ties", "DARE + TIES", "https://arxiv.org/abs/2311.03099",
                  "drop entries at `drop_rate`, rescale, elect a sign per entry, disjoint mean",
                  sparsify="random", consensus="sign", normalize=True))
register(Strategy("cat", "Concatenation (exact)", "https://github.com/huggingface/peft",
                  "concatenate the adapters along the rank: exact Σ wᵢΔWᵢ at rank Σ rᵢ", concat=True))


def get_strategy(name: str) -> Strategy:
    """The registered strategy ``name``; an unknown name lists the valid ones."""
    st = STRATEGIES.get(name)
    if st is None:
        guess = difflib.get_close_matches(str(name), list(STRATEGIES), n=1)
        hint = f" (did you mean {guess[0]!r}?)" if guess else ""
        raise InputError(f"unknown merge strategy {name!r}{hint}; valid: {', '.join(STRATEGIES)}")
    return st


def list_strategies() -> list[dict[str, Any]]:
    return [s.to_dict() for s in STRATEGIES.values()]


# --------------------------------------------------------------------------- checks


def check_params(*, density: float, drop_rate: float, space: str, rank: Optional[int]) -> None:
    problems = []
    if not (0 < density <= 1):
        problems.append(f"--density {density}: must be in (0, 1]")
    if not (0 < drop_rate < 1):
        problems.append(f"--drop-rate {drop_rate}: must be in (0, 1); a rate of 1 drops every entry")
    if space not in ("delta", "factors"):
        problems.append(f"--space {space!r}: must be `delta` or `factors`")
    if rank is not None and rank < 1:
        problems.append(f"--rank {rank}: must be a positive integer")
    if problems:
        raise InputError("; ".join(problems))


def check_compatible(adapters: Sequence["LoraAdapter"], labels: Optional[Sequence[str]] = None) -> None:
    """Raise one InputError listing every way the adapters do not fit each other.

    They must share the base model (where recorded), the module set and each module's in/out
    shape. Ranks may differ (delta space handles that; factor space checks it separately).
    """
    if not adapters:
        raise InputError("no adapters to merge; name at least one adapter folder or zoo id")
    labels = list(labels) if labels is not None else [str(a.path or f"adapter {i}") for i, a in enumerate(adapters)]
    problems: list[str] = []
    bases = {lab: a.base_model for lab, a in zip(labels, adapters) if a.base_model}
    if len(set(bases.values())) > 1:
        problems.append("different base models: " + ", ".join(f"{lab}: {b}" for lab, b in bases.items()))
    ref, ref_label = adapters[0], labels[0]
    for lab, ad in zip(labels[1:], adapters[1:]):
        missing = sorted(set(ref.modules) - set(ad.modules))
        extra = sorted(set(ad.modules) - set(ref.modules))
        if missing:
            problems.append(f"{lab} lacks {len(missing)} module(s) of {ref_label} ({_few(missing)})")
        if extra:
            problems.append(f"{lab} has {len(extra)} module(s) that {ref_label} lacks ({_few(extra)})")
        for name in sorted(set(ref.modules) & set(ad.modules)):
            a, b = ref.modules[name], ad.modules[name]
            sa, sb = (a.B.shape[0], a.A.shape[1]), (b.B.shape[0], b.A.shape[1])
            if sa != sb:
                problems.append(f"{lab}: {name} maps {sb[1]}->{sb[0]} but {ref_label} maps {sa[1]}->{sa[0]}")
    if problems:
        shown = problems[:8] + ([f"... and {len(problems) - 8} more"] if len(problems) > 8 else [])
        raise InputError("adapters do not fit each other: " + "; ".join(shown))


def _few(names: list[str], n: int = 3) -> str:
    return ", ".join(names[:n]) + (f", ... {len(names) - n} more" if len(names) > n else "")


def resolve_weights(weights: Optional[Sequence[float]], n: int, strategy: Strategy) -> list[float]:
    """Per-adapter coefficients as applied: ``linear``/``dare_linear`` normalize to sum 1."""
    if weights is None:
        w = [1.0] * n
    else:
        w = [float(x) for x in weights]
        if len(w) != n:
            raise InputError(f"--weights has {len(w)} value(s) for {n} adapter(s); give one weight per adapter")
        if not all(math.isfinite(x) for x in w):
            raise InputError(f"--weights {w}: every weight must be a finite number")
    if strategy.normalize and strategy.consensus == "none":
        total = sum(w)
        if abs(total) < 1e-12:
            raise InputError(f"--weights {w} sum to 0; `{strategy.name}` divides by their sum (use task_arithmetic)")
        w = [x / total for x in w]
    return w


# --------------------------------------------------------------------------- tensor kernels


def magnitude_trim(t: "torch.Tensor", density: float) -> "torch.Tensor":
    """Keep the top-``density`` share of entries by magnitude (per tensor), zero the rest.

    Uses ``kthvalue`` (linear time, any size): ``torch.quantile`` refuses inputs above 16M elements.
    Entries tied with the threshold are all kept.
    """
    import torch

    n = t.numel()
    k = int(density * n)
    if k >= n:
        return t
    if k <= 0:
        return torch.zeros_like(t)
    mag = t.abs()
    threshold = torch.kthvalue(mag.flatten(), n - k + 1).values
    return t * (mag >= threshold)


def mask_seed(seed: int, index: int, key: str) -> int:
    """Seed of one DARE mask: depends on (seed, adapter index, module name), not on module order."""
    h = hashlib.sha256(f"{int(seed)}/{int(index)}/{key}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def random_drop(t: "torch.Tensor", drop_rate: float, seed: int) -> "torch.Tensor":
    """DARE: drop each entry with probability ``drop_rate``, scale the kept ones by 1/(1 - drop_rate).

    The mask is drawn on the CPU from its own generator, so results do not depend on the device.
    """
    import torch

    keep = 1.0 - drop_rate
    if keep <= 0:
        return torch.zeros_like(t)
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(t.shape, generator=g) < keep
    return t * mask.to(t.device) / keep


def general_merge(
    tensors: Sequence["torch.Tensor"],
    weights: Sequence[float],
    strategy: Strategy,
    *,
    density: float = 0.5,
    drop_rate: float = 0.9,
    seed: int = 0,
    key: str = "",
) -> "torch.Tensor":
    """Generalized task arithmetic over same-shaped tensors (one per adapter).

    ``weights`` are applied as given (see :func:`resolve_weights` for the normalized ones);
    with sign consensus and ``normalize`` each entry is divided by the agreeing weights' sum.
    """
    import torch

    parts = []
    for i, t in enumerate(tensors):
        if strategy.sparsify == "magnitude":
            t = magnitude_trim(t, density)
        elif strategy.sparsify == "random":
            t = random_drop(t, drop_rate, mask_seed(seed, i, key))
        parts.append(t)
    x = torch.stack(parts)
    del parts
    w = torch.tensor(list(weights), dtype=x.dtype, device=x.device).view(-1, *([1] * (x.dim() - 1)))
    x.mul_(w)
    if strategy.consensus == "sign":
        elected = torch.sign(x.sum(0))
        agree = torch.sign(x) == elected
        merged = (x * agree).sum(0)
        if strategy.normalize:
            div = (w * agree).sum(0)
            merged = merged / torch.where(div.abs() > 1e-12, div, torch.ones_like(div))
        return merged
    return x.sum(0)


def truncated_factors(m: "torch.Tensor", rank: int) -> tuple["torch.Tensor", "torch.Tensor", float, float]:
    """Best rank-``rank`` factors ``B [out, k]``, ``A [k, in]`` of ``m`` (k = min(rank, out, in)).

    The top singular vectors come from the eigen-decomposition of the smaller Gram matrix (several
    times cheaper than an SVD of ``m``). Singular values are then taken as ``‖m·vᵢ‖`` rather than
    from the eigenvalues, and the factors are ``B = m·V/√σ``, ``A = √σ·Vᵀ``, so ``B·A = m·V·Vᵀ`` is the
    orthogonal projection of ``m`` onto the kept subspace: exact at full rank whatever the
    eigenvalues' rounding. Returns the kept and total squared Frobenius norms too.
    """
    import torch

    out_f, in_f = m.shape
    wide = out_f < in_f
    mt = m.T if wide else m  # [big, small]: right singular vectors of mt
    gram = mt.T @ mt
    evals, evecs = torch.linalg.eigh(gram)
    k = min(rank, evals.numel())
    v = evecs.flip(1)[:, :k]  # [small, k], orthonormal
    md = mt.double()
    mv = md @ v.double()  # [big, k] = U·S, in float64 so ‖ΔW‖² − Σσ² does not cancel to noise
    sigma = mv.norm(dim=0)
    total = float(md.pow(2).sum())
    kept = total if k == evals.numel() else float(sigma.pow(2).sum())
    live = sigma > sigma.max().clamp(min=1e-300) * 1e-9
    root = torch.where(live, sigma, torch.ones_like(sigma)).sqrt()
    left = (mv / root * live).to(m.dtype)  # [big, k]
    right = (v.double().T * root[:, None] * live[:, None]).to(m.dtype)  # [k, small]
    if wide:  # m = mtᵀ ≈ (left·right)ᵀ = rightᵀ·leftᵀ
        B, A = right.T, left.T
    else:
        B, A = left, right
    return B.contiguous(), A.contiguous(), min(kept, total), total


def lowrank_factors(
    Bs: Sequence["torch.Tensor"], As: Sequence["torch.Tensor"], rank: int
) -> tuple["torch.Tensor", "torch.Tensor", float, float]:
    """Best rank-``rank`` factors of ``Σ Bᵢ Aᵢ`` without forming it: QR of the stacked factors,
    SVD of the small core. Exact (to float precision) when ``rank`` reaches the sum's rank."""
    import torch

    Bc = torch.cat(list(Bs), dim=1).double()  # [out, R]
    Ac = torch.cat(list(As), dim=0).double()  # [R, in]
    qb, rb = torch.linalg.qr(Bc)  # qb [out, kb], rb [kb, R]
    qa, ra = torch.linalg.qr(Ac.T)  # qa [in, ka], ra [ka, R]
    core = rb @ ra.T  # [kb, ka]
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    total = float((s * s).sum())
    k = min(rank, s.numel())
    kept = float((s[:k] * s[:k]).sum())
    root = s[:k].sqrt()
    B = (qb @ u[:, :k]) * root
    A = root[:, None] * (vh[:k] @ qa.T)
    dtype = Bs[0].dtype
    return B.to(dtype), A.to(dtype), kept, total


def _pad_rank(B: "torch.Tensor", A: "torch.Tensor", rank: int) -> tuple["torch.Tensor", "torch.Tensor"]:
    """Zero-pad factors to ``rank`` so every module has the requested rank (ΔW unchanged)."""
    import torch

    k = A.shape[0]
    if k >= rank:
        return B, A
    B = torch.cat([B, B.new_zeros(B.shape[0], rank - k)], dim=1)
    A = torch.cat([A, A.new_zeros(rank - k, A.shape[1])], dim=0)
    return B, A


# --------------------------------------------------------------------------- the merge


@dataclass
class MergeReport:
    """What a merge did, beyond the adapter itself."""

    strategy: str
    space: str
    rank: int
    weights: list[float]  # coefficients as applied (normalized where the strategy normalizes)
    weighting: str
    parameters: dict[str, Any]
    modules: int
    truncation_error: Optional[float]  # ‖ΔW − ΔW_r‖/‖ΔW‖ over all modules (delta space), else None
    exact: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def merge_adapters(
    adapters: Sequence["LoraAdapter"],
    strategy: str = "linear",
    weights: Optional[Sequence[float]] = None,
    *,
    density: float = 0.5,
    drop_rate: float = 0.9,
    seed: int = 0,
    space: str = "delta",
    rank: Optional[int] = None,
    device: str = "cpu",
) -> "LoraAdapter":
    """Merge adapters into one :class:`LoraAdapter` (scaling 1: the scales live in the factors).

    See :func:`merge_with_report` for the parameters; this returns only the adapter.
    """
    return merge_with_report(adapters, strategy, weights, density=density, drop_rate=drop_rate, seed=seed,
                             space=space, rank=rank, device=device)[0]


def merge_with_report(
    adapters: Sequence["LoraAdapter"],
    strategy: str = "linear",
    weights: Optional[Sequence[float]] = None,
    *,
    density: float = 0.5,
    drop_rate: float = 0.9,
    seed: int = 0,
    space: str = "delta",
    rank: Optional[int] = None,
    device: str = "cpu",
    labels: Optional[Sequence[str]] = None,
    on_module: Optional[Callable[[str], None]] = None,
) -> tuple["LoraAdapter", MergeReport]:
    """Merge ``adapters`` module by module with the named strategy.

    * ``weights``: one per adapter (default 1 each); ``linear``/``dare_linear`` normalize them to
      sum 1, ``ties``/``dare_ties`` normalize per entry over the agreeing adapters,
      ``task_arithmetic``/``cat`` use them as given.
    * ``density`` (ties), ``drop_rate`` and ``seed`` (dare_*): see :data:`PARAMS`.
    * ``space``: ``delta`` (ΔW, then truncated SVD to ``rank``) or ``factors`` (A and B merged
      separately, the original plans' way; needs equal ranks).
    * ``rank``: output rank; default the inputs' largest rank (``cat``: the sum of ranks).
    * ``device``: where the arithmetic runs (``cuda`` when present); the result is on the CPU.
    """
    import torch

    from .adapters import LoraAdapter, LoraModule
    from .models import resolve_device

    st = get_strategy(strategy)
    check_params(density=density, drop_rate=drop_rate, space=space, rank=rank)
    check_compatible(adapters, labels)
    dev = resolve_device(device)
    coefs = resolve_weights(weights, len(adapters), st)
    names = list(adapters[0].modules)
    ranks = [max(m.rank for m in a.modules.values()) for a in adapters]
    notes: list[str] = []

    if st.concat:
        total_rank = sum(ranks)
        if rank is not None and rank < total_rank:
            raise InputError(f"--rank {rank}: `cat` is exact only at the sum of the input ranks ({total_rank}); "
                             "use linear or task_arithmetic to reach a lower rank")
        out_rank = rank or total_rank
    elif space == "factors":
        per_module = {n: {a.modules[n].rank for a in adapters} for n in names}
        uneven = sorted(n for n, rs in per_module.items() if len(rs) > 1)
        if uneven:
            raise InputError(f"--space factors needs equal ranks per module, but {_few(uneven)} differ "
                             f"(ranks {sorted(per_module[uneven[0]])}); use --space delta")
        out_rank = max(ranks)
        if rank is not None and rank != out_rank:
            raise InputError(f"--rank {rank}: --space factors keeps the inputs' rank ({out_rank}); use --space delta")
        notes.append("factor space: A and B merged separately (cross terms Bᵢ·Aⱼ included)")
    else:
        out_rank = rank or max(ranks)

    kept_sum = total_sum = 0.0
    merged: dict[str, LoraModule] = {}
    with torch.no_grad():
        for name in names:
            mods = [a.modules[name] for a in adapters]
            As = [m.A.to(dev, torch.float32) for m in mods]
            sBs = [m.B.to(dev, torch.float32) * m.scaling for m in mods]
            if st.concat:
                B = torch.cat([c * b for c, b in zip(coefs, sBs)], dim=1)
                A = torch.cat(As, dim=0)
            elif space == "factors":
                kw = dict(density=density, drop_rate=drop_rate, seed=seed)
                A = general_merge(As, coefs, st, key=name + ".lora_A", **kw)
                B = general_merge(sBs, coefs, st, key=name + ".lora_B", **kw)
            elif st.low_rank:
                B, A, kept, total = lowrank_factors([c * b for c, b in zip(coefs, sBs)], As, out_rank)
                kept_sum, total_sum = kept_sum + kept, total_sum + total
            else:
                deltas = [b @ a for b, a in zip(sBs, As)]
                dw = general_merge(deltas, coefs, st, density=density, drop_rate=drop_rate, seed=seed, key=name)
                del deltas
                B, A, kept, total = truncated_factors(dw, out_rank)
                del dw
                kept_sum, total_sum = kept_sum + kept, total_sum + total
            B, A = _pad_rank(B, A, out_rank)
            merged[name] = LoraModule(A.detach().cpu().contiguous(), B.detach().cpu().contiguous(), 1.0)
            if on_module is not None:
                on_module(name)

    if space == "factors" and not st.concat:
        trunc = None
    elif st.concat:
        trunc = 0.0
    else:
        trunc = math.sqrt(max(total_sum - kept_sum, 0.0) / total_sum) if total_sum > 0 else 0.0
    bases = [a.base_model for a in adapters if a.base_model]
    targets = sorted({t for a in adapters for t in a.target_modules})
    out = LoraAdapter(merged, out_rank, float(out_rank), targets, base_model=bases[0] if bases else None)
    params = {p: {"density": density, "drop_rate": drop_rate, "seed": seed}[p] for p in st.params if p != "weights"}
    report = MergeReport(
        strategy=st.name,
        space="delta" if st.concat else space,
        rank=out_rank,
        weights=coefs,
        weighting=st.weighting,
        parameters=params,
        modules=len(merged),
        truncation_error=trunc,
        exact=trunc is not None and trunc < 1e-6,
        notes=notes,
    )
    return out, report
