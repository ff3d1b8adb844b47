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
  ``i`` = adapter ``i``); the base weights are never copied or re-wrapped;
* below the lowest layer an adapter touches, its hidden states are the base model's. They are
  computed once per base model + probe set (:class:`BaseActivations`, held in memory for the
  run) and every delta forward, and in training every backward, runs only the decoder layers
  from the lowest adapted one up to the deepest layer the spec reads. The base side of the delta
  (its pooled states) comes from the same activations. Adapters with different lowest layers are
  grouped so that each batch starts as deep as it can.

The same functions run under autograd (training's differentiable delta) and under ``no_grad``
(``cache-deltas``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Optional, Sequence

from ..anatomy import backbone, lowest_adapted_layer, skip_layers

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


def resolve_layers(model, spec: DeltaSpec) -> list[int]:
    """The spec's layers as hidden-state indices in [0, num_layers]."""
    L = len(backbone(model).layers)
    out = []
    for x in spec.layers:
        i = x if x >= 0 else L + 1 + x
        if not 0 <= i <= L:
            raise ValueError(f"delta.layers: {x} is out of range for a model with {L} layers (valid: {-L - 1}..{L})")
        out.append(i)
    return out


class _Stop(Exception):
    """Raised by the capture hook of the deepest needed layer: nothing after it is computed."""


def _forward_states(
    model, input_ids, attention_mask, position_ids, idxs: list[int], *,
    start: int = 0, start_state=None, layer_tuple: bool = False, info: Optional[dict] = None,
) -> list["torch.Tensor"]:
    """Run the backbone until the deepest of ``idxs``; return those hidden states [B, T, H].

    With ``start > 0`` the decoder layers below ``start`` are skipped and ``start_state``
    ([B, T, H], the hidden state of index ``start``) enters layer ``start``; every index must then
    be above ``start``. ``info["tuple"]`` records whether decoder layers return tuples.
    """
    bb = backbone(model)
    L = len(bb.layers)
    deepest = max(idxs)
    if start > 0 and min(idxs) <= start:
        raise ValueError(f"hidden state {min(idxs)} lies below the first computed layer {start}")
    captured: dict[int, Any] = {}

    def module_of(i: int):
        return bb.embed_tokens if i == 0 else (bb.norm if i == L else bb.layers[i - 1])

    def make_hook(i: int):
        def hook(mod, inputs, output):
            if info is not None and 0 < i < L:
                info["tuple"] = isinstance(output, tuple)
            captured[i] = output[0] if isinstance(output, tuple) else output
            if i == deepest:
                raise _Stop

        return hook

    handles = [module_of(i).register_forward_hook(make_hook(i)) for i in sorted(set(idxs))]
    try:
        with skip_layers(bb, start, start_state, layer_tuple):
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


# Attention over a sequence of S tokens costs about S/ATTENTION_TOKENS times the rest of a layer's
# work per token (measured on SmolLM2-135M on the CPU: at S = 2048 the masked attention took 0.8x the
# linear layers' time); the packed sequence's block-diagonal mask pays it over all the probes at once.
ATTENTION_TOKENS = 2048


def pack_pays(probes: "ProbeSet", pack: bool = True) -> bool:
    """Whether the packed sequence (shared prefix once, every probe after it, one masked attention
    over all of them) costs less than the padded batch (each probe its own row, the prefix repeated):
    ``S(1 + S/A) <= P·T(1 + T/A)`` with S the packed length, P probes of at most T tokens and A
    :data:`ATTENTION_TOKENS`. A few short generic probes pack; many long task prompts do not
    (``benchmarks/task_prompt_deltas.py``). Both give the same deltas to float rounding."""
    if not pack:
        return False
    rows = [len(r) for r in probes.token_ids]
    if not rows:
        return True
    k = probes.prefix_len
    S = k + sum(n - k for n in rows)
    T = max(rows)
    return S * (1 + S / ATTENTION_TOKENS) <= len(rows) * T * (1 + T / ATTENTION_TOKENS)


def _compute_dtype(model, spec: DeltaSpec):
    from ..models import resolve_dtype

    want = resolve_dtype(spec.dtype)
    have = next(model.parameters()).dtype
    return want, have


def _dtype_context(model, spec: DeltaSpec):
    """Autocast when the spec asks for a lower precision than the model's float32 weights."""
    import torch

    want, have = _compute_dtype(model, spec)
    if want == have:
        return contextlib.nullcontext()
    if want != torch.float32 and have == torch.float32:
        device = next(model.parameters()).device
        return torch.autocast(device_type=device.type, dtype=want)
    raise ValueError(f"delta.dtype is {spec.dtype} but the model's weights are {have}; load the base in {spec.dtype}")


# --------------------------------------------------------------------------- base activations


def activations_fingerprint(base_fingerprint: str, probe_fingerprint: str, pack: bool, dtype: str) -> str:
    """Identity of a base model's activations on a probe set: what a delta cache header records."""
    key = json.dumps({"base": base_fingerprint, "probes": probe_fingerprint, "pack": bool(pack), "dtype": dtype},
                     sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def weights_stamp(model) -> tuple:
    """Changes whenever a parameter is replaced, added or modified in place (autograd's version
    counter), or the train/eval mode flips: stale activations are then recomputed."""
    return (model.training, tuple((p.data_ptr(), p._version, tuple(p.shape)) for p in model.parameters()))


class BaseActivations:
    """The base model's hidden states on one probe set, computed once and reused by every delta.

    ``states[i]`` is hidden state ``i`` (``output_hidden_states`` indexing) of the packed probe
    sequence ``[1, S, H]`` (or of the padded batch ``[P, T, H]``), detached. States are computed
    on demand: a new index runs the base from the deepest index already held below it. Get one
    through :func:`base_activations`, which keeps them per model for the run and rebuilds them
    when the model's weights change.
    """

    def __init__(self, model, probes: "ProbeSet", *, pack: bool = True, dtype: str = "float32"):
        from ..models import resolve_dtype

        device = next(model.parameters()).device
        self.pack = bool(pack)
        self.dtype = dtype
        self.probe_fingerprint = probes.fingerprint
        self.n_probes = len(probes)
        if self.pack:
            self.packed: Optional[_Packed] = pack_probes(probes, device=device, dtype=resolve_dtype(dtype))
        else:
            self.packed = None
            self.input_ids = probes.input_ids.to(device)
            self.attention_mask = probes.attention_mask.to(device)
        self.states: dict[int, "torch.Tensor"] = {}
        self.layer_tuple = False
        self.forwards = 0  # base forwards run so far
        self.layers_run = 0  # decoder layers those forwards computed
        self._pooled: dict = {}
        self._model = weakref.ref(model)
        self._stamp = weights_stamp(model)
        self._fingerprint: Optional[str] = None

    def matches(self, model) -> bool:
        """Still the activations of ``model`` as it is now."""
        return self._model() is model and self._stamp == weights_stamp(model)

    @property
    def fingerprint(self) -> str:
        """:func:`activations_fingerprint` of the model and probes these states came from."""
        if self._fingerprint is None:
            from ..models import model_fingerprint

            model = self._model()
            if model is None:
                raise RuntimeError("the model of these activations is gone")
            self._fingerprint = activations_fingerprint(model_fingerprint(model), self.probe_fingerprint,
                                                        self.pack, self.dtype)
        return self._fingerprint

    def inputs(self, n: int):
        """(input_ids, attention_mask, position_ids) of ``n`` copies of the probes."""
        if self.packed is not None:
            pk = self.packed
            S = pk.input_ids.shape[1]
            return pk.input_ids.expand(n, S), pk.mask, pk.position_ids.expand(n, S)
        return self.input_ids.repeat(n, 1), self.attention_mask.repeat(n, 1), None

    def expand(self, h: "torch.Tensor", n: int) -> "torch.Tensor":
        """A held state laid out as ``n`` row blocks, as the n-adapter forward has it."""
        if self.packed is not None:
            return h.expand(n, *h.shape[1:])
        return h.unsqueeze(0).expand(n, *h.shape).reshape(n * h.shape[0], *h.shape[1:])

    def ensure(self, model, idxs: Iterable[int], ctx=None) -> None:
        """Compute (once) the base states of ``idxs``; ``ctx`` is the dtype context of the spec."""
        import torch

        from ..lora.patch import active_patches

        missing = sorted({int(i) for i in idxs} - set(self.states))
        if not missing:
            return
        if active_patches(model):
            raise RuntimeError("base activations were requested while a LoRA patch is active on the model; "
                               "compute them (ensure) before entering the patch")
        src = max((j for j in self.states if j < missing[0]), default=0)
        info: dict = {}
        ids, mask, pos = self.inputs(1)
        with torch.no_grad(), (ctx if ctx is not None else contextlib.nullcontext()):
            got = _forward_states(model, ids, mask, pos, missing, start=src,
                                  start_state=self.states.get(src), layer_tuple=self.layer_tuple, info=info)
        if "tuple" in info:
            self.layer_tuple = info["tuple"]
        for i, h in zip(missing, got):
            self.states[i] = h.detach()
        self.forwards += 1
        self.layers_run += min(missing[-1], len(backbone(model).layers)) - src

    def pooled(self, model, spec: DeltaSpec) -> "torch.Tensor":
        """The base model's pooled states ``[D]`` for ``spec`` (float32), from these activations."""
        idxs = resolve_layers(model, spec)
        key = (tuple(idxs), spec.pool)
        if key not in self._pooled:
            self.ensure(model, idxs, _dtype_context(model, spec))
            self._pooled[key] = _pool([self.states[i] for i in idxs], self, spec, 1)[0]
        return self._pooled[key].clone()


_MEMO: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_MEMO_PER_MODEL = 8


def base_activations(model, probes: "ProbeSet", *, pack: bool = True, dtype: str = "float32") -> BaseActivations:
    """The run's :class:`BaseActivations` of ``model`` on ``probes`` (made on first use, remade
    when the model's weights have changed since)."""
    per = _MEMO.get(model)
    if per is None:
        per = _MEMO[model] = {}
    key = (probes.fingerprint, bool(pack), dtype, str(next(model.parameters()).device))
    acts = per.get(key)
    if acts is None or not acts.matches(model):
        per.pop(key, None)
        acts = BaseActivations(model, probes, pack=pack, dtype=dtype)
        per[key] = acts
        while len(per) > _MEMO_PER_MODEL:
            per.pop(next(iter(per)))
    return acts


# --------------------------------------------------------------------------- pooled states and deltas


def _pool(states: list["torch.Tensor"], acts: BaseActivations, spec: DeltaSpec, n: int,
          average: bool = True) -> "torch.Tensor":
    """Pool each state (``n`` row blocks) over its probe tokens, average over probes: ``[n, D]``
    (``average=False``: one row per probe, ``[n, P, D]``)."""
    import torch

    outs = []
    P = acts.n_probes
    for h in states:
        h = h.float()
        if acts.packed is not None:
            pk = acts.packed
            if spec.pool == "last_token":
                pooled = h[:, pk.last]  # [n, P, H]
            else:
                seg = pk.seg_index
                sums = h.new_zeros(n, P, h.shape[-1]).index_add(1, seg.clamp_min(0)[pk.prefix_len:], h[:, pk.prefix_len:])
                prefix = h[:, : pk.prefix_len].sum(1, keepdim=True)  # shared by every probe
                pooled = (sums + prefix) / pk.lengths.to(h.dtype)[None, :, None]
        else:
            am = acts.attention_mask
            T = am.shape[1]
            lengths = am.sum(1)
            h = h.reshape(n, P, T, -1)
            if spec.pool == "last_token":
                pooled = h[:, torch.arange(P, device=h.device), lengths - 1]  # [n, P, H]
            else:
                m = am.to(h.dtype)[None, :, :, None]
                pooled = (h * m).sum(2) / lengths.to(h.dtype)[None, :, None]
        outs.append(pooled.mean(1) if average else pooled)
    return torch.cat(outs, dim=-1)


def pooled_states(
    model, probes: "ProbeSet", spec: DeltaSpec, n_adapters: int = 1, *, pack: bool = True,
    start_layer: int = 0, acts: Optional[BaseActivations] = None, average: bool = True,
) -> "torch.Tensor":
    """Pooled hidden states averaged over probes: ``[n_adapters, D]`` (float32; ``average=False``:
    per probe, ``[n_adapters, P, D]``).

    The batch holds ``n_adapters`` copies of the probes in contiguous row blocks, so under a
    :class:`LoraPatch` with n adapters row block i is adapter i. Works under autograd.
    ``pack=False`` runs the plain padded batch instead (same result to float rounding).

    ``start_layer=k`` runs decoder layers k… only, entering layer k with the base model's state
    from ``acts`` (default: the run's :func:`base_activations`): right when nothing below layer
    k is patched. The base states it needs must be computed before a patch is entered (see
    :meth:`BaseActivations.ensure`; :func:`delta_for_stacked` does it).
    """
    idxs = resolve_layers(model, spec)
    n = int(n_adapters)
    ctx = _dtype_context(model, spec)
    start = max(0, min(int(start_layer), max(idxs)))
    if acts is None:
        acts = base_activations(model, probes, pack=pack, dtype=spec.dtype) if start else \
            BaseActivations(model, probes, pack=pack, dtype=spec.dtype)
    if start:
        acts.ensure(model, [start] + [i for i in idxs if i <= start], ctx)
    run = sorted({i for i in idxs if i > start or not start})
    got: dict[int, Any] = {}
    if run:
        ids, mask, pos = acts.inputs(n)
        with ctx:
            hs = _forward_states(model, ids, mask, pos, run, start=start,
                                 start_state=acts.expand(acts.states[start], n) if start else None,
                                 layer_tuple=acts.layer_tuple)
        got = dict(zip(run, hs))
    states = [got[i] if i in got else acts.expand(acts.states[i], n) for i in idxs]
    return _pool(states, acts, spec, n, average)


def base_states(
    model, probes: "ProbeSet", spec: DeltaSpec, *, pack: bool = True, acts: Optional[BaseActivations] = None,
) -> "torch.Tensor":
    """The base model's pooled states ``[D]`` (no adapter; no grad), from the run's
    :class:`BaseActivations` (computed once per model and probe set)."""
    import torch

    if acts is None:
        acts = base_activations(model, probes, pack=pack, dtype=spec.dtype)
    with torch.no_grad():
        return acts.pooled(model, spec)


def delta_for_stacked(
    model,
    probes: "ProbeSet",
    spec: DeltaSpec,
    stacked: dict[str, "StackedLora"],
    base: Optional["torch.Tensor"] = None,
    *,
    pack: bool = True,
    acts: Optional[BaseActivations] = None,
    reuse: bool = True,
    average: bool = True,
) -> "torch.Tensor":
    """Deltas ``[n, D]`` of n stacked adapters; differentiable w.r.t. the stacked A and B.

    Pass ``base`` (from :func:`base_states`) to skip looking up the base states. With ``reuse``
    (default) the forward starts at the lowest layer the adapters touch, from the base model's
    activations (``acts``, default: the run's); ``reuse=False`` runs the whole backbone.
    ``average=False``: one delta per probe, ``[n, P, D]`` (``base``, when given, is then ``[P, D]``:
    :func:`base_per_probe`).
    """
    from ..lora.patch import LoraPatch

    if acts is None:
        acts = base_activations(model, probes, pack=pack, dtype=spec.dtype)
    if base is None:
        base = base_states(model, probes, spec, acts=acts) if average else base_per_probe(model, probes, spec, acts)
    start = 0
    if reuse:
        idxs = resolve_layers(model, spec)
        start = min(lowest_adapted_layer(model, stacked), max(idxs))
        if start:
            acts.ensure(model, [start] + [i for i in idxs if i <= start], _dtype_context(model, spec))
    patch = LoraPatch(model, stacked)
    with patch:
        states = pooled_states(model, probes, spec, max(patch.n, 1), start_layer=start, acts=acts, average=average)
    return states - base.to(states.device)[None]


def base_per_probe(model, probes: "ProbeSet", spec: DeltaSpec, acts: Optional[BaseActivations] = None) -> "torch.Tensor":
    """The base model's pooled states per probe, ``[P, D]`` (no grad)."""
    import torch

    if acts is None:
        acts = base_activations(model, probes, pack=True, dtype=spec.dtype)
    idxs = resolve_layers(model, spec)
    with torch.no_grad():
        acts.ensure(model, idxs, _dtype_context(model, spec))
        return _pool([acts.states[i] for i in idxs], acts, spec, 1, average=False)[0]


def per_probe_deltas(model, probes: "ProbeSet", spec: DeltaSpec, adapters: Sequence["LoraAdapter"], *,
                     adapters_per_batch: int = 8, pack: bool = True) -> "torch.Tensor":
    """The delta of each adapter on each probe, not averaged over probes: ``[n, P, D]`` (float32 on
    the CPU; :func:`compute_deltas` with ``average=False``); its mean over probes is the cached delta."""
    return compute_deltas(model, adapters, probes, spec, adapters_per_batch, pack=pack, average=False)


def _batches(model, adapters: Iterable["LoraAdapter"], size: int, group: bool) -> Iterator[tuple[list[int], list]]:
    """``(positions, adapters)`` batches of at most ``size``. A list is grouped by lowest adapted
    layer first (stable), so that a batch never starts shallower than its adapters need."""
    size = max(1, int(size))
    if group and isinstance(adapters, (list, tuple)):
        by_layer: dict[int, list[int]] = {}
        for i, ad in enumerate(adapters):
            by_layer.setdefault(lowest_adapted_layer(model, ad.modules), []).append(i)
        for k in sorted(by_layer):
            pos = by_layer[k]
            for s in range(0, len(pos), size):
                yield pos[s:s + size], [adapters[i] for i in pos[s:s + size]]
        return
    pos, batch = [], []
    for i, ad in enumerate(adapters):
        pos.append(i)
        batch.append(ad)
        if len(batch) >= size:
            yield pos, batch
            pos, batch = [], []
    if batch:
        yield pos, batch


def _iter_positioned(model, adapters, probes, spec, adapters_per_batch, base, pack, reuse, acts, share=(0, 1),
                     average=True):
    import torch

    from ..lora.patch import stack_adapters

    device = next(model.parameters()).device
    dt = next(model.parameters()).dtype
    if acts is None:
        acts = base_activations(model, probes, pack=pack, dtype=spec.dtype)
    if reuse and isinstance(adapters, (list, tuple)):
        # every base state the batches start from, with the pooled layers, in one base forward (asked
        # for one by one, each deeper state would run the base from the first layer again)
        idxs = resolve_layers(model, spec)
        starts = {min(lowest_adapted_layer(model, ad.modules), max(idxs)) for ad in adapters}
        acts.ensure(model, sorted({*idxs, *(i for i in starts if i > 0)}), _dtype_context(model, spec))
    if base is None:
        base = base_states(model, probes, spec, acts=acts) if average else base_per_probe(model, probes, spec, acts)
    rank, world = share
    for i, (pos, batch) in enumerate(_batches(model, adapters, adapters_per_batch, reuse)):
        if i % world != rank:
            continue
        with torch.no_grad():
            stacked = stack_adapters(batch, device=device, dtype=dt)
            d = delta_for_stacked(model, probes, spec, stacked, base, acts=acts, reuse=reuse,
                                  average=average).float().cpu()
        yield pos, batch, d


def iter_deltas(
    model,
    adapters: Iterable["LoraAdapter"],
    probes: "ProbeSet",
    spec: DeltaSpec,
    adapters_per_batch: int = 8,
    *,
    base: Optional["torch.Tensor"] = None,
    pack: bool = True,
    reuse: bool = True,
    acts: Optional[BaseActivations] = None,
) -> Iterator[tuple[list["LoraAdapter"], "torch.Tensor"]]:
    """Stream ``(batch of adapters, deltas [b, D] on CPU)``; only one batch is held at a time.

    A list of adapters is batched by lowest adapted layer (the batches may come in another order
    than the list); any other iterable is batched as it comes.
    """
    for _, batch, d in _iter_positioned(model, adapters, probes, spec, adapters_per_batch, base, pack, reuse, acts):
        yield batch, d


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
    reuse: bool = True,
    acts: Optional[BaseActivations] = None,
    average: bool = True,
) -> "torch.Tensor":
    """Deltas ``[N, D]`` (float32, CPU) of adapters streamed ``adapters_per_batch`` at a time, no grad.

    Rows follow the order of ``adapters``. ``progress(k)`` is called after each batch with the
    number of adapters it finished. ``reuse=False`` runs every batch through the whole backbone.
    ``average=False``: one delta per probe, ``[N, P, D]`` (``base``, when given, is ``[P, D]``).
    """
    import torch

    parts = []
    n = 0
    for pos, batch, d in _iter_positioned(model, adapters, probes, spec, adapters_per_batch, base, pack, reuse, acts,
                                          average=average):
        parts.append((pos, d))
        n += len(pos)
        if progress is not None:
            progress(len(batch))
    if not parts:
        return torch.zeros(0, spec.dim(model))
    out = torch.empty(n, *parts[0][1].shape[1:])
    for pos, d in parts:
        out[torch.as_tensor(pos)] = d
    return out


def compute_delta_share(
    model,
    adapters: list["LoraAdapter"],
    probes: "ProbeSet",
    spec: DeltaSpec,
    adapters_per_batch: int,
    rank: int,
    world: int,
    progress: Optional[Callable[[int], None]] = None,
    *,
    pack: bool = True,
) -> list[tuple[int, "torch.Tensor"]]:
    """One process's share of :func:`compute_deltas`: ``(position, delta [D])`` for the adapters of
    every ``world``-th batch from ``rank``. The batches are exactly those of :func:`compute_deltas`
    on the whole list, so the rows of all the shares together are its rows, bit for bit."""
    rows = []
    for pos, batch, d in _iter_positioned(model, list(adapters), probes, spec, adapters_per_batch, None, pack, True,
                                          None, (rank, world)):
        rows += [(p, d[j].clone()) for j, p in enumerate(pos)]
        if progress is not None:
            progress(len(batch))
    return rows

