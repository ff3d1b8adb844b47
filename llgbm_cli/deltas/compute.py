"""Deltas: how much an adapter moves the base model's hidden states on the probes.

Δ(B+θ, B) = mean over probes of pool(h_θ) − mean over probes of pool(h_B), where h is the hidden
state of the chosen layers (concatenated) and pool is the last token (default) or the mean over
the probe's tokens. Layers follow the indexing of Hugging Face's ``output_hidden_states``: 0 is the
embeddings, ``i`` the output of decoder layer ``i-1``, and ``-1`` (= num_layers) the final,
normalized state.

Why this is fast, and exact:

* only the backbone runs (no LM head), and it stops at the deepest layer the spec reads (a hook
  raises out of the forward once that layer's output is captured);
* the probes are *packed* into one sequence: their shared prefix (the chat template's system
  turn) is computed once, each probe's own tokens follow it with their own positions and an
  attention mask that lets them see the prefix and themselves only. Every probe token sees
  exactly the keys and positions it would see alone, so the result equals the padded forward
  to float rounding, without padding and without repeating the prefix;
* ``n`` adapters share a forward through :class:`~llgbm_cli.lora.patch.LoraPatch` (row block
  ``i`` = adapter ``i``); the base weights are never copied or re-wrapped.

The same functions run under autograd (training's differentiable delta) and under ``no_grad``
(``cache-deltas``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..adapters import LoraAdapter
    from ..lora.patch import StackedLora
    from .probes import ProbeSet

POOLS = ("last_token", "mean")
DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class DeltaSpec:
    """What a delta measures: hidden-state ``layers`` (concatenated), ``pool`` and compute ``dtype``."""

    layers: tuple = (-1,)
    pool: str = "last_token"
    dtype: str = "float32"

    def __init__(self, layers: Sequence[int] = (-1,), pool: str = "last_token", dtype: str = "float32"):
        if not layers:
            raise ValueError("delta.layers: give at least one layer")
        if pool not in POOLS:
            raise ValueError(f"delta.pool: unknown pool {pool!r}; valid: {', '.join(POOLS)}")
        if dtype not in DTYPES:
            raise ValueError(f"delta.dtype: unknown dtype {dtype!r}; valid: {', '.join(DTYPES)}")
        object.__setattr__(self, "layers", tuple(int(x) for x in layers))
        object.__setattr__(self, "pool", pool)
        object.__setattr__(self, "dtype", dtype)

    @classmethod
    def from_config(cls, section) -> "DeltaSpec":
        """From the ``[delta]`` config section (or any object with layers/pool/dtype)."""
        return cls(list(section.layers), section.pool, section.dtype)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "DeltaSpec":
        return cls(d.get("layers", [-1]), d.get("pool", "last_token"), d.get("dtype", "float32"))

    def to_dict(self) -> dict[str, Any]:
        return {"layers": list(self.layers), "pool": self.pool, "dtype": self.dtype}

    def fingerprint(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def dim(self, model) -> int:
        """D = hidden_size × len(layers)."""
        return int(model.config.hidden_size) * len(self.layers)


# --------------------------------------------------------------------------- the backbone forward


def _backbone(model):
    """The decoder stack (embeddings, layers, final norm) of a causal LM, or the model itself."""
    for cand in (getattr(model, getattr(model, "base_model_prefix", "model"), None), getattr(model, "model", None), model):
        if cand is not None and all(hasattr(cand, a) for a in ("embed_tokens", "layers", "norm")):
            return cand
    raise TypeError(
        f"{type(model).__name__}: expected a decoder-only causal LM with embed_tokens, layers and norm "
        "(Llama/Mistral/Qwen-style)"
    )


def resolve_layers(model, spec: DeltaSpec) -> list[int]:
    """The spec's layers as hidden-state indices in [0, num_layers]."""
    L = len(_backbone(model).layers)
    out = []
    for x in spec.layers:
        i = x if x >= 0 else L + 1 + x
        if not 0 <= i <= L:
            raise ValueError(f"delta.layers: {x} is out of range for a model with {L} layers (valid: {-L - 1}..{L})")
        out.append(i)
    return out


class _Stop(Exception):
    """Raised by the capture hook of the deepest needed layer: nothing after it is computed."""


def _forward_states(model, input_ids, attention_mask, position_ids, idxs: list[int]) -> list["torch.Tensor"]:
    """Run the backbone until the deepest of ``idxs``; return those hidden states [B, T, H]."""
    bb = _backbone(model)
    L = len(bb.layers)
    deepest = max(idxs)
    captured: dict[int, Any] = {}

    def module_of(i: int):
        return bb.embed_tokens if i == 0 else (bb.norm if i == L else bb.layers[i - 1])

    def make_hook(i: int):
        def hook(mod, inputs, output):
            captured[i] = output[0] if isinstance(output, tuple) else output
            if i == deepest:
                raise _Stop

        return hook

    handles = [module_of(i).register_forward_hook(make_hook(i)) for i in sorted(set(idxs))]
    try:
        bb(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, use_cache=False)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return [captured[i] for i in idxs]


@dataclass
class _Packed:
    input_ids: "torch.Tensor"  # [1, S]
    position_ids: "torch.Tensor"  # [1, S]
    mask: "torch.Tensor"  # [1, 1, S, S] additive
    last: "torch.Tensor"  # [P] index of each probe's last token
    prefix_len: int
    seg_index: "torch.Tensor"  # [S] probe of each token, -1 for the shared prefix
    lengths: "torch.Tensor"  # [P] full probe lengths
    cache: dict = field(default_factory=dict)


def pack_probes(probes: "ProbeSet", device=None, dtype=None) -> _Packed:
    """One sequence: shared prefix once, then each probe's remaining tokens (see module doc)."""
    import torch

    device = device if device is not None else probes.device
    dtype = dtype or torch.float32
    k = probes.prefix_len
    ids = list(probes.token_ids[0][:k])
    pos = list(range(k))
    seg = [-1] * k
    last = []
    for p, row in enumerate(probes.token_ids):
        ids.extend(row[k:])
        pos.extend(range(k, len(row)))
        seg.extend([p] * (len(row) - k))
        last.append(len(ids) - 1)
    S = len(ids)
    seg_t = torch.tensor(seg, device=device)
    idx = torch.arange(S, device=device)
    causal = idx[None, :] <= idx[:, None]
    same = (seg_t[None, :] == seg_t[:, None]) | (seg_t[None, :] == -1)
    allowed = causal & same
    mask = torch.zeros(S, S, dtype=dtype, device=device).masked_fill(~allowed, torch.finfo(dtype).min)
    return _Packed(
        torch.tensor([ids], device=device), torch.tensor([pos], device=device), mask[None, None],
        torch.tensor(last, device=device), k, seg_t,
        torch.tensor([len(r) for r in probes.token_ids], device=device),
    )


def _compute_dtype(model, spec: DeltaSpec):
    import torch

    from ..models import resolve_dtype

    want = resolve_dtype(spec.dtype)
    have = next(model.parameters()).dtype
    return want, have


def pooled_states(model, probes: "ProbeSet", spec: DeltaSpec, n_adapters: int = 1, *, pack: bool = True) -> "torch.Tensor":
    """Pooled hidden states averaged over probes: ``[n_adapters, D]`` (float32).

    The batch holds ``n_adapters`` copies of the probes in contiguous row blocks, so under a
    :class:`LoraPatch` with n adapters row block i is adapter i. Works under autograd.
    ``pack=False`` runs the plain padded batch instead (same result to float rounding).
    """
    import contextlib

    import torch

    idxs = resolve_layers(model, spec)
    n = int(n_adapters)
    device = next(model.parameters()).device
    want, have = _compute_dtype(model, spec)
    if want == have:
        ctx = contextlib.nullcontext()
    elif want != torch.float32 and have == torch.float32:
        ctx = torch.autocast(device_type=device.type, dtype=want)
    else:
        raise ValueError(f"delta.dtype is {spec.dtype} but the model's weights are {have}; load the base in {spec.dtype}")
    if pack:
        pk = pack_probes(probes, device=device, dtype=want)
        S = pk.input_ids.shape[1]
        with ctx:
            states = _forward_states(
                model, pk.input_ids.expand(n, S), pk.mask, pk.position_ids.expand(n, S), idxs
            )
        outs = []
        for h in states:
            h = h.float()  # [n, S, H]
            if spec.pool == "last_token":
                pooled = h[:, pk.last]  # [n, P, H]
            else:
                P = len(probes)
                seg = pk.seg_index
                sums = h.new_zeros(n, P, h.shape[-1]).index_add(1, seg.clamp_min(0)[pk.prefix_len:], h[:, pk.prefix_len:])
                prefix = h[:, : pk.prefix_len].sum(1, keepdim=True)  # shared by every probe
                pooled = (sums + prefix) / pk.lengths.to(h.dtype)[None, :, None]
            outs.append(pooled.mean(1))
        return torch.cat(outs, dim=-1)
    ids = probes.input_ids.to(device)
    am = probes.attention_mask.to(device)
    P, T = ids.shape
    with ctx:
        states = _forward_states(model, ids.repeat(n, 1), am.repeat(n, 1), None, idxs)
    lengths = am.sum(1)
    outs = []
    for h in states:
        h = h.float().reshape(n, P, T, -1)
        if spec.pool == "last_token":
            pooled = h[:, torch.arange(P, device=device), lengths - 1]  # [n, P, H]
        else:
            m = am.to(h.dtype)[None, :, :, None]
            pooled = (h * m).sum(2) / lengths.to(h.dtype)[None, :, None]
        outs.append(pooled.mean(1))
    return torch.cat(outs, dim=-1)


def base_states(model, probes: "ProbeSet", spec: DeltaSpec, *, pack: bool = True) -> "torch.Tensor":
    """The base model's pooled states ``[D]`` (no adapter; no grad)."""
    import torch

    with torch.no_grad():
        return pooled_states(model, probes, spec, 1, pack=pack)[0]


def delta_for_stacked(
    model,
    probes: "ProbeSet",
    spec: DeltaSpec,
    stacked: dict[str, "StackedLora"],
    base: Optional["torch.Tensor"] = None,
    *,
    pack: bool = True,
) -> "torch.Tensor":
    """Deltas ``[n, D]`` of n stacked adapters; differentiable w.r.t. the stacked A and B.

    Pass ``base`` (from :func:`base_states`) to skip recomputing the base forward.
    """
    from ..lora.patch import LoraPatch

    if base is None:
        base = base_states(model, probes, spec, pack=pack)
    patch = LoraPatch(model, stacked)
    with patch:
        states = pooled_states(model, probes, spec, max(patch.n, 1), pack=pack)
    return states - base.to(states.device)[None]


def iter_deltas(
    model,
    adapters: Iterable["LoraAdapter"],
    probes: "ProbeSet",
    spec: DeltaSpec,
    adapters_per_batch: int = 8,
    *,
    base: Optional["torch.Tensor"] = None,
    pack: bool = True,
) -> Iterator[tuple[list["LoraAdapter"], "torch.Tensor"]]:
    """Stream ``(batch of adapters, deltas [b, D] on CPU)``; only one batch is held at a time."""
    import torch

    from ..lora.patch import stack_adapters

    device = next(model.parameters()).device
    dt = next(model.parameters()).dtype
    if base is None:
        base = base_states(model, probes, spec, pack=pack)
    batch: list = []

    def run(b):
        with torch.no_grad():
            stacked = stack_adapters(b, device=device, dtype=dt)
            return delta_for_stacked(model, probes, spec, stacked, base, pack=pack).float().cpu()

    for ad in adapters:
        batch.append(ad)
        if len(batch) >= adapters_per_batch:
            yield batch, run(batch)
            batch = []
    if batch:
        yield batch, run(batch)


def compute_deltas(
    model,
    adapters: Iterable["LoraAdapter"],
    probes: "ProbeSet",
    spec: DeltaSpec,
    adapters_per_batch: int = 8,
    progress: Optional[Callable[[int], None]] = None,
    *,
    base: Optional["torch.Tensor"] = None,
    pack: bool = True,
) -> "torch.Tensor":
    """Deltas ``[N, D]`` (float32, CPU) of adapters streamed ``adapters_per_batch`` at a time, no grad.

    ``progress(k)`` is called after each batch with the number of adapters it finished; pass
    ``base`` (from :func:`base_states`) when calling repeatedly, to run the base forward once.
    """
    import torch

    rows = []
    for b, d in iter_deltas(model, adapters, probes, spec, adapters_per_batch, base=base, pack=pack):
        rows.append(d)
        if progress is not None:
            progress(len(b))
    if not rows:
        return torch.zeros(0, spec.dim(model))
    return torch.cat(rows)


backbone = _backbone  # the public name, for modules that run the decoder stack themselves
