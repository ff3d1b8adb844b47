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

All entry-wise strategies are one generalized task-arithmetic merge with four settings
(sparsify: none | magnitude | random; consensus: none | sign; normalize; rescale), as in
mergekit, whose registry gives the defaults of ``normalize`` and ``rescale``. The output rank is
chosen per module by retained energy (``rank="auto"``) or fixed; docs/concepts.md states every
formula and where llgbm differs from mergekit and PEFT.
The registry is torch-free so the CLI can list and validate names without importing torch.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Literal, Optional, Sequence, get_args, get_type_hints

from .errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .adapters import LoraAdapter


# --------------------------------------------------------------------------- registry


Space = Literal["delta", "factors"]
Rescale = Literal["l1", "keep_rate", "none"]
RESCALES: tuple[str, ...] = get_args(Rescale)


@dataclass(frozen=True)
class Strategy:
    """A merge strategy: a setting of the generalized task-arithmetic merge, or concatenation.

    ``normalize`` and ``rescale`` are the strategy's defaults (those of mergekit's registry);
    :class:`MergeOptions` may override both. With ``consensus="none"`` normalizing divides the
    weights by their sum (a weighted average); with ``consensus="sign"`` each entry is divided by
    the summed weights of the adapters that agree with the elected sign (a weighted disjoint mean).
    """

    name: str
    display: str
    reference: str
    summary: str
    sparsify: Literal["none", "magnitude", "random"] = "none"
    consensus: Literal["none", "sign"] = "none"
    normalize: bool = False
    rescale: str = "none"
    concat: bool = False

    @property
    def params(self) -> tuple[str, ...]:
        """The options this strategy reads (each option's ``read_by``), group by group in READERS' order."""
        return tuple(name for group, reads in READERS.items() if reads(self)
                     for name, opt in OPTIONS.items() if opt.read_by == group)

    @property
    def low_rank(self) -> bool:
        """Linear in ΔW: merged exactly from the stacked factors, no dense ΔW."""
        return self.concat or self.sparsify == "none"

    def weighting(self, normalize: Optional[bool] = None) -> str:
        norm = self.normalize if normalize is None else normalize
        if self.concat or not norm:
            return "raw (weighted sum)"
        if self.consensus == "sign":
            return "per entry, divided by the summed weights of the adapters agreeing in sign"
        return "normalized to sum 1 (weighted average)"

    def defaults(self) -> dict[str, Any]:
        own = {"normalize": self.normalize, "rescale": self.rescale}
        return {p: own.get(p, OPTIONS[p].default) for p in self.params}

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "display": self.display,
            "summary": self.summary,
            "reference": self.reference,
            "params": self.defaults(),
            "weights": self.weighting(),
            "sparsify": "concat" if self.concat else self.sparsify,
            "consensus": self.consensus,
        }


STRATEGIES: dict[str, Strategy] = {}


def register(strategy: Strategy) -> Strategy:
    if strategy.name in STRATEGIES:
        raise ValueError(f"merge strategy {strategy.name!r} registered twice")
    STRATEGIES[strategy.name] = strategy
    return strategy


# Defaults of `normalize` and `rescale` follow mergekit's registry (linear and ties normalize;
# the DARE strategies do not, and rescale to the tensor's L1 norm).
register(Strategy("linear", "Linear (weighted average)", "https://arxiv.org/abs/2203.05482",
                  "weighted average of the adapters' ΔW", normalize=True))
register(Strategy("task_arithmetic", "Task arithmetic (weighted sum)", "https://arxiv.org/abs/2212.04089",
                  "weighted sum of the adapters' ΔW (negative weights subtract)"))
register(Strategy("ties", "TIES", "https://arxiv.org/abs/2306.01708",
                  "trim each ΔW to its top-`density` magnitudes, elect a sign per entry, disjoint mean",
                  sparsify="magnitude", consensus="sign", normalize=True))
register(Strategy("dare_linear", "DARE + linear", "https://arxiv.org/abs/2311.03099",
                  "drop entries at `drop_rate` with a seeded mask per adapter, rescale, weighted sum",
                  sparsify="random", rescale="l1"))
register(Strategy("dare_ties", "DARE + TIES", "https://arxiv.org/abs/2311.03099",
                  "drop entries at `drop_rate`, rescale, elect a sign per entry, sum the agreeing entries",
                  sparsify="random", consensus="sign", rescale="l1"))
register(Strategy("cat", "Concatenation (exact)", "https://github.com/huggingface/peft",
                  "concatenate the adapters along the rank: exact Σ wᵢΔWᵢ at rank Σ rᵢ", concat=True))


def get_strategy(name: str, source: str = "--strategy") -> Strategy:
    """The registered strategy ``name``; an unknown name lists the valid ones."""
    st = STRATEGIES.get(name)
    if st is None:
        raise InputError(f"{source}: {unknown_strategy(name)}")
    return st


def unknown_strategy(name: Any) -> str:
    guess = difflib.get_close_matches(str(name), list(STRATEGIES), n=1)
    hint = f" (did you mean {guess[0]!r}?)" if guess else ""
    return f"unknown merge strategy {name!r}{hint}; valid: {', '.join(STRATEGIES)}"


def list_strategies() -> list[dict[str, Any]]:
    return [s.to_dict() for s in STRATEGIES.values()]


# --------------------------------------------------------------------------- options

#: Which strategies read a strategy parameter, by the group its ``read_by`` names; the groups' order is
#: the order in which `merge --list`, reports and provenance name a strategy's parameters.
READERS: dict[str, Callable[[Strategy], bool]] = {
    "every": lambda st: True,
    "summing": lambda st: not st.concat,  # every strategy but cat, which concatenates
    "magnitude": lambda st: st.sparsify == "magnitude",  # ties
    "random": lambda st: st.sparsify == "random",  # dare_*
    "sparsifying": lambda st: st.sparsify != "none",  # ties, dare_*
}


@dataclass(frozen=True)
class Option:
    """One merge option as :class:`MergeOptions` declares it (see :data:`OPTIONS`)."""

    name: str
    default: Any
    type: Any  # the field's annotation, resolved: also the ``[merge]`` key's type
    flag: str  # how `llgbm merge` spells it; an error names a value by it unless it came from elsewhere
    help: str  # the ``[merge]`` key's description (docs/config.md)
    flag_help: str  # the flag's help in `llgbm merge --help`
    read_by: Optional[str] = None  # the strategies that read it, a group of READERS (None: the engine, always)
    key: bool = True  # a ``[merge]`` key of the project file (weights are given per merge, never in the file)


def _option(default: Any, flag: str, *, help: str, flag_help: str, read_by: Optional[str] = None,
            key: bool = True) -> Any:
    """A :class:`MergeOptions` field that declares a merge option (everything but its name and type)."""
    return field(default=default, metadata={"option": dict(flag=flag, help=help, flag_help=flag_help,
                                                           read_by=read_by, key=key)})


def option_problems(values: dict[str, Any]) -> list[tuple[str, str]]:
    """Every out-of-range merge option as ``(field, message)``; shared by :class:`MergeOptions` and the
    config check, so the file and the command line obey one rule."""
    v = values.get
    out: list[tuple[str, str]] = []

    def num(name: str) -> Optional[float]:
        x = v(name)
        if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x):
            out.append((name, f"{x!r} is not a finite number"))
            return None
        return float(x)

    if "strategy" in values and v("strategy") not in STRATEGIES:
        out.append(("strategy", unknown_strategy(v("strategy"))))
    if "density" in values and (d := num("density")) is not None and not 0 < d <= 1:
        out.append(("density", f"{d:g} must be in (0, 1] (1 keeps every entry)"))
    if "drop_rate" in values and (p := num("drop_rate")) is not None:
        if p == 1:
            out.append(("drop_rate", "1 drops every entry and the merged adapter would be all zeros; "
                                     "use a value in [0, 1) (0 drops nothing)"))
        elif not 0 <= p < 1:
            out.append(("drop_rate", f"{p:g} must be in [0, 1) (0 drops nothing)"))
    if "energy" in values and (e := num("energy")) is not None and not 0 < e <= 1:
        out.append(("energy", f"{e:g} must be in (0, 1] (the share of the merged ΔW's squared norm kept)"))
    if "seed" in values and (isinstance(v("seed"), bool) or not isinstance(v("seed"), int)):
        out.append(("seed", f"{v('seed')!r} must be an integer"))
    if "space" in values and v("space") not in get_args(Space):
        out.append(("space", f"{v('space')!r} must be `delta` or `factors`"))
    r = v("rank")
    if "rank" in values and r != "auto" and (isinstance(r, bool) or not isinstance(r, int) or r < 1):
        out.append(("rank", f"{r!r} must be `auto` or a positive integer"))
    m = v("max_rank")
    if m is not None and (isinstance(m, bool) or not isinstance(m, int) or m < 1):
        out.append(("max_rank", f"{m!r} must be a positive integer (or unset: no cap)"))
    if v("rescale") is not None and v("rescale") not in RESCALES:
        out.append(("rescale", f"{v('rescale')!r} must be one of {', '.join(RESCALES)}"))
    if v("normalize") is not None and not isinstance(v("normalize"), bool):
        out.append(("normalize", f"{v('normalize')!r} must be true or false"))
    w = v("weights")
    if w is not None and not all(isinstance(x, (int, float)) and math.isfinite(x) for x in w):
        out.append(("weights", f"{list(w)}: every weight must be a finite number"))
    return out


@dataclass(frozen=True)
class MergeOptions:
    """Every option of one merge, validated once when built; the one declaration of each option.

    Each field declares its default, flag, help texts and the strategies that read it; :data:`OPTIONS`
    reads them back, and the ``[merge]`` config section and `llgbm merge`'s flags are built from it.
    The fields are in the order of the ``[merge]`` section (docs/config.md, `llgbm config show`).

    ``sources`` maps a field to how the user gave it (``--density``, ``llgbm.toml: merge.density``,
    ``--set merge.density=0.3``), so an error names the place to fix; a field without an entry is
    named by its flag. ``normalize`` and ``rescale`` left at None take the strategy's defaults.
    ``rank``: an integer (every module gets that rank) or ``auto`` (per module: the smallest rank
    that keeps ``energy`` of the merged ΔW's squared norm, capped by ``max_rank``; exact for the
    strategies that are linear in ΔW).
    """

    strategy: str = _option(
        "linear", "--strategy",
        help="Merge strategy name (see `llgbm merge --list`).",
        flag_help="Strategy name (see --list); default: the config key merge.strategy.")
    weights: Optional[tuple[float, ...]] = _option(
        None, "--weights", read_by="every", key=False,
        help="One weight per adapter (default: 1 each).",
        flag_help="One weight per adapter, comma-separated (e.g. 0.5,0.3,0.2).")
    space: Space = _option(
        "delta", "--space",
        help="`delta`: merge ΔW=B·A then SVD to rank; `factors`: merge A and B separately.",
        flag_help="`delta` (ΔW, then SVD to rank) or `factors` (A, B separately).")
    density: float = _option(
        0.5, "--density", read_by="magnitude",
        help="TIES density: share of entries kept per tensor by magnitude, in (0, 1].",
        flag_help="ties: share of entries kept per tensor, in (0, 1].")
    drop_rate: float = _option(
        0.9, "--drop-rate", read_by="random",
        help="DARE drop rate, in [0, 1) (0 drops nothing).",
        flag_help="dare_*: drop probability, in [0, 1).")
    rescale: Optional[Rescale] = _option(
        None, "--rescale", read_by="sparsifying",
        help="After sparsifying: `l1` restores each tensor's total absolute magnitude (mergekit), "
        "`keep_rate` divides by 1 - drop_rate (the DARE paper, PEFT), `none`. Unset: the strategy's default "
        "(dare_*: `l1`; ties: `none`).",
        flag_help="ties/dare_*: `l1`, `keep_rate` or `none` after sparsifying (default per strategy).")
    normalize: Optional[bool] = _option(
        None, "--normalize/--no-normalize", read_by="summing",
        help="Divide by the summed weights (per entry over the sign-agreeing adapters for ties/dare_ties). "
        "Unset: the strategy's default (linear, ties: on; task_arithmetic, dare_*: off), as in mergekit.",
        flag_help="Divide by the summed weights (default per strategy: linear, ties on).")
    rank: int | Literal["auto"] = _option(
        "auto", "--rank",
        help="Output rank: `auto` (per module; linear, task_arithmetic, cat: exact; ties, dare_*: the "
        "smallest rank keeping `energy` of the merged ΔW) or an integer for every module.",
        flag_help="Output rank: `auto` (default; per module, by --energy) or an integer.")
    energy: float = _option(
        0.99, "--energy",
        help="With rank `auto`: share of each module's merged ‖ΔW‖² the kept rank must reach, in (0, 1].",
        flag_help="rank auto: share of each module's ‖ΔW‖² to keep (default 0.99).")
    max_rank: Optional[int] = _option(
        None, "--max-rank",
        help="With rank `auto`: cap on any module's rank (unset: no cap).",
        flag_help="rank auto: cap on any module's rank.")
    seed: int = _option(
        0, "--seed", read_by="random",
        help="Seed for DARE masks (one independent mask per adapter and module).",
        flag_help="dare_*: seed of the drop masks.")
    device: str = _option(
        "cpu", "--device",
        help="Where the merge arithmetic runs: `cpu` or `cuda`.",
        flag_help="`cpu` or `cuda`.")
    sources: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self) -> None:
        if self.weights is not None and not isinstance(self.weights, tuple):
            object.__setattr__(self, "weights", tuple(self.weights))
        values = {k: getattr(self, k) for k in OPTIONS}
        if isinstance(self.rank, str) and self.rank.isdigit():
            object.__setattr__(self, "rank", int(self.rank))
            values["rank"] = self.rank
        problems = option_problems(values)
        if problems:
            raise InputError("; ".join(f"{self.source(k)}: {msg}" for k, msg in problems))

    def source(self, name: str) -> str:
        """Where the value of ``name`` came from, as the user would write it."""
        return self.sources.get(name) or (OPTIONS[name].flag if name in OPTIONS else name)

    def replace(self, **changes: Any) -> "MergeOptions":
        """A copy with ``changes`` (validated again); a changed field given as ``(value, source)``
        records its source."""
        sources = dict(self.sources)
        for k, val in list(changes.items()):
            if isinstance(val, tuple) and len(val) == 2 and isinstance(val[1], str):
                changes[k], sources[k] = val
            else:
                sources.pop(k, None)
        return replace(self, sources=sources, **changes)

    @property
    def spec(self) -> Strategy:
        return STRATEGIES[self.strategy]

    @property
    def normalized(self) -> bool:
        st = self.spec
        return False if st.concat else (st.normalize if self.normalize is None else self.normalize)

    @property
    def rescaling(self) -> str:
        st = self.spec
        if st.sparsify == "none":
            return "none"
        return st.rescale if self.rescale is None else self.rescale

    def parameters(self) -> dict[str, Any]:
        """The strategy's parameters as applied (weights aside)."""
        applied = {"normalize": self.normalized, "rescale": self.rescaling}  # None: the strategy's default
        return {p: applied[p] if p in applied else getattr(self, p) for p in self.spec.params if p != "weights"}


def _declared_options() -> dict[str, Option]:
    hints = get_type_hints(MergeOptions)
    out = {f.name: Option(f.name, f.default, hints[f.name], **f.metadata["option"])
           for f in fields(MergeOptions) if "option" in f.metadata}
    for o in out.values():
        if o.read_by is not None and o.read_by not in READERS:
            raise ValueError(f"merge option {o.name!r}: read_by {o.read_by!r} is none of {', '.join(READERS)}")
    return out


#: Every merge option, name -> :class:`Option`, in the order :class:`MergeOptions` declares them.
OPTIONS: dict[str, Option] = _declared_options()


def as_options(options: "MergeOptions | str | None", weights: Optional[Sequence[float]] = None,
               **fields: Any) -> MergeOptions:
    """``options`` as :class:`MergeOptions`: a strategy name is built into one with ``fields``."""
    if isinstance(options, MergeOptions):
        if weights is not None:
            fields["weights"] = weights
        return options.replace(**fields) if fields else options
    return MergeOptions(strategy=options or OPTIONS["strategy"].default, weights=weights, **fields)


# --------------------------------------------------------------------------- checks


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


#: Summed weights below this in magnitude are not divided by (mergekit's threshold): ties and
#: dare_ties leave such an entry's sum as it is, linear with normalize refuses the weights.
NORMALIZE_EPS = 1e-8


def resolve_weights(opts: MergeOptions, n: int) -> list[float]:
    """Per-adapter coefficients as applied: with ``normalize`` and no sign election, divided by their sum."""
    if opts.weights is None:
        w = [1.0] * n
    else:
        w = [float(x) for x in opts.weights]
        if len(w) != n:
            raise InputError(f"{opts.source('weights')}: {len(w)} value(s) for {n} adapter(s); "
                             "give one weight per adapter")
    if opts.normalized and opts.spec.consensus == "none":
        total = sum(w)
        if abs(total) < NORMALIZE_EPS:
            raise InputError(f"{opts.source('weights')} {w} sum to 0; `{opts.strategy}` with normalize divides "
                             "by their sum (use task_arithmetic or --no-normalize)")
        w = [x / total for x in w]
    return w


# --------------------------------------------------------------------------- tensor kernels


def magnitude_trim(t: "torch.Tensor", density: float) -> "torch.Tensor":
    """Keep exactly ``k = max(1, ⌊density·n⌋)`` entries of largest magnitude (per tensor), zero the rest.

    Entries tied at the threshold are kept in order of their flat index (lowest first), so exactly
    k survive whatever the values. Linear time via ``kthvalue``: ``torch.quantile`` refuses inputs
    above 16M elements.
    """
    import torch

    n = t.numel()
    k = max(1, int(density * n))
    if k >= n:
        return t
    mag = t.abs().flatten()
    threshold = torch.kthvalue(mag, n - k + 1).values
    keep = mag > threshold
    need = k - int(keep.sum())
    if need > 0:
        keep[(mag == threshold).nonzero().flatten()[:need]] = True
    return t * keep.view(t.shape)


def mask_seed(seed: int, index: int, key: str) -> int:
    """Seed of one DARE mask: depends on (seed, adapter index, module name), not on module order."""
    import hashlib  # here, not at the top: `llgbm --help` imports this module for the merge flags

    h = hashlib.sha256(f"{int(seed)}/{int(index)}/{key}".encode()).digest()
    return int.from_bytes(h[:8], "little") & ((1 << 63) - 1)


def rescale_kept(original: "torch.Tensor", kept: "torch.Tensor", how: str, keep_rate: float) -> "torch.Tensor":
    """Scale a sparsified tensor back: ``l1`` restores ``Σ|original|`` (left as is when nothing
    non-zero survived), ``keep_rate`` divides by the share kept (DARE's paper), ``none`` leaves it."""
    if how == "keep_rate":
        return kept / keep_rate
    if how == "l1":
        after = kept.abs().sum()
        if float(after) > 0:
            return kept * (original.abs().sum() / after)
    return kept


def random_drop(t: "torch.Tensor", drop_rate: float, seed: int, rescale: str = "l1") -> "torch.Tensor":
    """DARE: drop each entry with probability ``drop_rate``, then :func:`rescale_kept`.

    The mask is drawn on the CPU from its own generator, so results do not depend on the device.
    """
    import torch

    if drop_rate <= 0:
        return t
    keep = 1.0 - drop_rate
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(t.shape, generator=g) < keep
    return rescale_kept(t, t * mask.to(t.device), rescale, keep)


def general_merge(tensors: Sequence["torch.Tensor"], weights: Sequence[float], opts: MergeOptions,
                  key: str = "") -> "torch.Tensor":
    """Generalized task arithmetic over same-shaped tensors (one per adapter).

    ``weights`` are applied as given (see :func:`resolve_weights` for the normalized ones). With sign
    consensus the elected sign of an entry is that of its weighted sum (``+`` when the sum is 0, as
    in the references); entries of the other sign, and zeros, are left out; with ``normalize`` the
    sum of the agreeing entries is divided by the agreeing weights' sum (left as is where that is
    below :data:`NORMALIZE_EPS` in magnitude).
    """
    import torch

    st = opts.spec
    parts = []
    for i, t in enumerate(tensors):
        if st.sparsify == "magnitude":
            t = rescale_kept(t, magnitude_trim(t, opts.density), opts.rescaling, opts.density)
        elif st.sparsify == "random":
            t = random_drop(t, opts.drop_rate, mask_seed(opts.seed, i, key), opts.rescaling)
        parts.append(t)
    x = torch.stack(parts)
    del parts
    w = torch.tensor(list(weights), dtype=x.dtype, device=x.device).view(-1, *([1] * (x.dim() - 1)))
    x.mul_(w)
    if st.consensus == "sign":
        elected = torch.where(x.sum(0) >= 0, 1.0, -1.0).to(x.dtype)
        agree = torch.sign(x) == elected
        merged = (x * agree).sum(0)
        if opts.normalized:  # as mergekit: a divisor below NORMALIZE_EPS in magnitude counts as 1
            div = (w * agree).sum(0)
            merged = merged / torch.where(div.abs() >= NORMALIZE_EPS, div, torch.ones_like(div))
        return merged
    return x.sum(0)


# --------------------------------------------------------------------------- rank


def choose_rank(sq: "torch.Tensor", energy: float, cap: int) -> int:
    """Smallest k whose leading squared singular values ``sq`` (descending) reach ``energy`` of their
    sum, at most ``cap`` and at least 1. A shortfall below 1e-6 of the sum counts as reached: that is
    the rounding of float32 eigenvalues, so ``energy=1`` stops at the numerical rank."""
    import torch

    sq = sq.double().clamp(min=0)
    total = float(sq.sum())
    if total <= 0:
        return 1
    reached = torch.cumsum(sq, 0) >= (energy - 1e-6) * total
    k = int(reached.nonzero()[0]) + 1 if bool(reached.any()) else sq.numel()
    return max(1, min(k, cap))


def numerical_rank(s: "torch.Tensor") -> int:
    """Singular values above 1e-9 of the largest: the rank of a merge computed in float64."""
    if s.numel() == 0 or float(s[0]) <= 0:
        return 1
    return max(1, int((s > s[0] * 1e-9).sum()))


def truncated_factors(m: "torch.Tensor", rank: Optional[int], energy: float = 1.0,
                      cap: Optional[int] = None) -> tuple["torch.Tensor", "torch.Tensor", float, float]:
    """Best rank-k factors ``B [out, k]``, ``A [k, in]`` of ``m``: k = ``rank`` (at most min(out, in)),
    or with ``rank=None`` the smallest k keeping ``energy`` of ``‖m‖²`` (at most ``cap``).

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
    evals, evecs = torch.linalg.eigh(mt.T @ mt)
    evals, evecs = evals.flip(0), evecs.flip(1)
    full = evals.numel()
    k = min(rank, full) if rank is not None else choose_rank(evals, energy, min(cap or full, full))
    v = evecs[:, :k].double()  # [small, k], orthonormal
    md = mt.double()
    mv = md @ v  # [big, k] = U·S, in float64 so ‖ΔW‖² − Σσ² does not cancel to noise
    sigma = mv.norm(dim=0)
    total = float(md.pow(2).sum())
    kept = total if k == full else float(sigma.pow(2).sum())
    live = sigma > sigma.max().clamp(min=1e-300) * 1e-9
    root = torch.where(live, sigma, torch.ones_like(sigma)).sqrt()
    left = (mv / root * live).to(m.dtype)  # [big, k]
    right = (v.T * root[:, None] * live[:, None]).to(m.dtype)  # [k, small]
    if wide:  # m = mtᵀ ≈ (left·right)ᵀ = rightᵀ·leftᵀ
        B, A = right.T, left.T
    else:
        B, A = left, right
    return B.contiguous(), A.contiguous(), min(kept, total), total


def lowrank_factors(Bs: Sequence["torch.Tensor"], As: Sequence["torch.Tensor"], rank: Optional[int],
                    cap: Optional[int] = None) -> tuple["torch.Tensor", "torch.Tensor", float, float]:
    """Best rank-k factors of ``Σ Bᵢ Aᵢ`` without forming it: QR of the stacked factors, SVD of the
    small core. k = ``rank``, or with ``rank=None`` the sum's own (numerical) rank, at most ``cap``:
    exact to float precision whenever k reaches the sum's rank."""
    import torch

    Bc = torch.cat(list(Bs), dim=1).double()  # [out, R]
    Ac = torch.cat(list(As), dim=0).double()  # [R, in]
    qb, rb = torch.linalg.qr(Bc)  # qb [out, kb], rb [kb, R]
    qa, ra = torch.linalg.qr(Ac.T)  # qa [in, ka], ra [ka, R]
    core = rb @ ra.T  # [kb, ka]
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    total = float((s * s).sum())
    k = min(rank, s.numel()) if rank is not None else min(numerical_rank(s), cap or s.numel())
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
    rank: int  # the adapter's `r` (the most common module rank); others are in `ranks`
    rank_range: list[int]  # [smallest, largest] module rank
    ranks: dict[str, int]  # module -> rank
    weights: list[float]  # coefficients as applied (normalized where the strategy normalizes)
    weighting: str
    parameters: dict[str, Any]
    modules: int
    retained_energy: Optional[float]  # ‖ΔW_r‖²/‖ΔW‖² over all modules (delta space), else None
    truncation_error: Optional[float]  # ‖ΔW − ΔW_r‖/‖ΔW‖ over all modules (delta space), else None
    exact: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def merge_adapters(adapters: Sequence["LoraAdapter"], options: "MergeOptions | str | None" = None,
                   weights: Optional[Sequence[float]] = None, **fields: Any) -> "LoraAdapter":
    """Merge adapters into one :class:`LoraAdapter` (scaling 1: the scales live in the factors).

    ``options`` is a :class:`MergeOptions` or a strategy name completed by ``fields``; see
    :func:`merge_with_report`, of which this returns only the adapter.
    """
    return merge_with_report(adapters, options, weights, **fields)[0]


def _output_rank(opts: MergeOptions, adapters: Sequence["LoraAdapter"], names: list[str]) -> Optional[int]:
    """The fixed output rank (None: chosen per module), after every check that needs the adapters."""
    st = opts.spec
    ranks = [max(m.rank for m in a.modules.values()) for a in adapters]
    fixed = opts.rank if opts.rank != "auto" else None
    if fixed is not None:
        shape = {n: tuple(adapters[0].modules[n].B.shape[:1]) + tuple(adapters[0].modules[n].A.shape[1:]) for n in names}
        small = min(names, key=lambda n: min(shape[n]))
        if fixed > min(shape[small]):
            raise InputError(f"{opts.source('rank')}: {fixed} is above the size of module {small} "
                             f"({shape[small][0]}x{shape[small][1]}: at most {min(shape[small])}); "
                             "lower it or use `auto`")
    if st.concat:
        total_rank = sum(ranks)
        cap = fixed if fixed is not None else opts.max_rank
        if cap is not None and cap < total_rank:
            what = opts.source("rank") if fixed is not None else opts.source("max_rank")
            raise InputError(f"{what}: {cap} is below the sum of the input ranks ({total_rank}), where `cat` "
                             "is exact; use linear or task_arithmetic to reach a lower rank")
        return fixed or total_rank
    if opts.space == "factors":
        per_module = {n: {a.modules[n].rank for a in adapters} for n in names}
        uneven = sorted(n for n, rs in per_module.items() if len(rs) > 1)
        if uneven:
            raise InputError(f"{opts.source('space')} factors needs equal ranks per module, but {_few(uneven)} "
                             f"differ (ranks {sorted(per_module[uneven[0]])}); use --space delta")
        if fixed is not None and fixed != max(ranks):
            raise InputError(f"{opts.source('rank')}: {fixed}, but --space factors keeps the inputs' rank "
                             f"({max(ranks)}); use --space delta")
        return max(ranks)
    return fixed


def merge_with_report(
    adapters: Sequence["LoraAdapter"],
    options: "MergeOptions | str | None" = None,
    weights: Optional[Sequence[float]] = None,
    *,
    labels: Optional[Sequence[str]] = None,
    on_module: Optional[Callable[[str], None]] = None,
    **fields: Any,
) -> tuple["LoraAdapter", MergeReport]:
    """Merge ``adapters`` module by module as ``options`` say (see :class:`MergeOptions`).

    * weights: one per adapter (default 1 each); with ``normalize`` (default for linear and ties)
      they are divided by their sum (linear, task_arithmetic, dare_linear) or, per entry, by the
      sum over the adapters agreeing in sign (ties, dare_ties); otherwise used as given.
    * ``space``: ``delta`` (ΔW, then truncated SVD) or ``factors`` (A and B merged separately, the
      original plans' way; needs equal ranks).
    * ``rank``: see :class:`MergeOptions`; ``cat`` is always exact (rank Σ rᵢ).
    * ``device``: where the arithmetic runs (``cuda`` when present); the result is on the CPU.
    """
    import collections

    import torch

    from .adapters import LoraAdapter, LoraModule
    from .models import resolve_device

    opts = as_options(options, weights, **fields)
    st = opts.spec
    check_compatible(adapters, labels)
    dev = resolve_device(opts.device)
    coefs = resolve_weights(opts, len(adapters))
    names = list(adapters[0].modules)
    fixed = _output_rank(opts, adapters, names)
    notes: list[str] = []
    if opts.space == "factors" and not st.concat:
        notes.append("factor space: A and B merged separately (cross terms Bᵢ·Aⱼ included)")

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
            elif opts.space == "factors":
                A = general_merge(As, coefs, opts, key=name + ".lora_A")
                B = general_merge(sBs, coefs, opts, key=name + ".lora_B")
            elif st.low_rank:
                B, A, kept, total = lowrank_factors([c * b for c, b in zip(coefs, sBs)], As, fixed, opts.max_rank)
                kept_sum, total_sum = kept_sum + kept, total_sum + total
            else:
                deltas = [b @ a for b, a in zip(sBs, As)]
                dw = general_merge(deltas, coefs, opts, key=name)
                del deltas
                B, A, kept, total = truncated_factors(dw, fixed, opts.energy, opts.max_rank)
                del dw
                kept_sum, total_sum = kept_sum + kept, total_sum + total
            if fixed is not None:
                B, A = _pad_rank(B, A, fixed)
            merged[name] = LoraModule(A.detach().cpu().contiguous(), B.detach().cpu().contiguous(), 1.0)
            if on_module is not None:
                on_module(name)

    if opts.space == "factors" and not st.concat:
        energy = trunc = None
    elif st.concat:
        energy, trunc = 1.0, 0.0
    else:
        energy = kept_sum / total_sum if total_sum > 0 else 1.0
        trunc = math.sqrt(max(total_sum - kept_sum, 0.0) / total_sum) if total_sum > 0 else 0.0
    ranks = {n: m.rank for n, m in merged.items()}
    common = collections.Counter(ranks.values()).most_common(1)[0][0]
    bases = [a.base_model for a in adapters if a.base_model]
    targets = sorted({t for a in adapters for t in a.target_modules})
    out = LoraAdapter(merged, common, float(common), targets, base_model=bases[0] if bases else None)
    report = MergeReport(
        strategy=st.name,
        space="delta" if st.concat else opts.space,
        rank=common,
        rank_range=[min(ranks.values()), max(ranks.values())],
        ranks=ranks,
        weights=coefs,
        weighting=st.weighting(opts.normalized),
        parameters=opts.parameters(),
        modules=len(merged),
        retained_energy=energy,
        truncation_error=trunc,
        exact=trunc is not None and trunc < 1e-6,
        notes=notes,
    )
    return out, report


# --------------------------------------------------------------------------- a full merged model


def base_weight_files(folder: Path) -> list[str]:
    """The safetensors files of a Hugging Face model folder, in the order its index lists them."""
    import json

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            files = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
        except (OSError, ValueError, KeyError) as e:
            raise InputError(f"{index}: not a readable safetensors index ({e}); check the base model folder")
        missing = [f for f in files if not (folder / f).exists()]
        if missing:
            raise InputError(f"{folder}: the index lists {_few(missing)}, which are missing; re-download the base")
        return files
    if (folder / "model.safetensors").exists():
        return ["model.safetensors"]
    raise InputError(f"{folder}: no model.safetensors (nor a sharded index); a full merged model is written "
                     "from safetensors weights only")


def write_merged_model(base: Path, adapter: "LoraAdapter", out: Path,
                       provenance: Optional[dict[str, Any]] = None) -> Path:
    """Write the base model of folder ``base`` with ``adapter``'s ΔW added to its weights into the new
    folder ``out``: the same shards, tensor names and dtypes; every other top-level file copied.

    One shard is in memory at a time. Every module of the adapter must be found among the base's
    ``<module>.weight`` tensors with ΔW's shape, else nothing is written.
    """
    import shutil

    from safetensors import safe_open
    from .io import save_safetensors as save_file

    from .io import write_provenance

    base, out = Path(base), Path(out)
    files = base_weight_files(base)
    wanted = {f"{name}.weight": name for name in adapter.modules}
    found: dict[str, str] = {}
    for f in files:
        with safe_open(str(base / f), framework="pt") as sf:
            for key in sf.keys():
                if key in wanted:
                    found[key] = f
    missing = sorted(set(wanted) - set(found))
    if missing:
        raise InputError(f"{base}: has no weight for {len(missing)} merged module(s) ({_few(missing)}); "
                         "is this the base model the adapters were trained on?")
    out.mkdir(parents=True, exist_ok=False)
    for item in base.iterdir():
        if item.is_file() and item.suffix != ".safetensors":
            shutil.copy2(item, out / item.name)
    for f in files:
        tensors, meta = {}, None
        with safe_open(str(base / f), framework="pt") as sf:
            meta = sf.metadata()
            for key in sf.keys():
                t = sf.get_tensor(key)
                if key in wanted:
                    dw = adapter.modules[wanted[key]].delta_weight()
                    if tuple(dw.shape) != tuple(t.shape):
                        raise InputError(f"{base / f}: {key} is {tuple(t.shape)}, the merged ΔW is "
                                         f"{tuple(dw.shape)}; the adapters belong to another base model")
                    t = (t.float() + dw).to(t.dtype)
                tensors[key] = t.contiguous()
        save_file(tensors, str(out / f), metadata=meta or {"format": "pt"})
        del tensors
    if provenance is not None:
        write_provenance(out, provenance)
    return out
