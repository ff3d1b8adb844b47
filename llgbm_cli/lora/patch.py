"""One functional LoRA patch for a batch of different adapters.

``LoraPatch`` hooks the base model's target ``nn.Linear`` modules and adds
``scaling · B(A x)`` to their output, where the batch rows are split into ``n`` contiguous,
equal blocks and block ``i`` uses adapter ``i`` (stacked A ``[n, r, in]``, B ``[n, out, r]``).
Base weights are shared and never copied or modified. With autograd on, gradients flow into
A and B (the differentiable delta used in training); with ``torch.no_grad`` it is what
``cache-deltas`` runs. The computation is the same as PEFT's LoRA forward
(``result + lora_B(lora_A(x)) * scaling``), so results match PEFT to float tolerance.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional, Sequence, Union

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..adapters import LoraAdapter


# How many patches are active on each model: the delta code refuses to record "base" activations
# while one is (they would not be the base's).
_ACTIVE: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def active_patches(model) -> int:
    """Number of :class:`LoraPatch` contexts currently active on ``model``."""
    return _ACTIVE.get(model, 0)


@dataclass
class StackedLora:
    """One module's LoRA for n adapters: A [n, r, in], B [n, out, r], scaling [n]."""

    A: "torch.Tensor"
    B: "torch.Tensor"
    scaling: "torch.Tensor"

    @property
    def n(self) -> int:
        return int(self.A.shape[0])


def stack_adapters(
    adapters: Sequence["LoraAdapter"],
    device=None,
    dtype=None,
    modules: Optional[Iterable[str]] = None,
) -> dict[str, StackedLora]:
    """Stack n adapters module by module. Ranks may differ (zero-padded to the largest, which
    leaves B·A unchanged); a module missing from an adapter is all zeros for it."""
    import torch

    names = sorted(set(modules) if modules is not None else {k for a in adapters for k in a.modules})
    out = {}
    for name in names:
        present = [a.modules.get(name) for a in adapters]
        ref = next((m for m in present if m is not None), None)
        if ref is None:
            continue
        r = max(m.rank for m in present if m is not None)
        n_in, n_out = ref.A.shape[1], ref.B.shape[0]
        dt = dtype or ref.A.dtype
        A = torch.zeros(len(adapters), r, n_in, device=device, dtype=dt)
        B = torch.zeros(len(adapters), n_out, r, device=device, dtype=dt)
        s = torch.zeros(len(adapters), device=device, dtype=dt)
        for i, m in enumerate(present):
            if m is None:
                continue
            A[i, : m.rank] = m.A.to(device=device, dtype=dt)
            B[i, :, : m.rank] = m.B.to(device=device, dtype=dt)
            s[i] = m.scaling
        out[name] = StackedLora(A, B, s)
    return out


class LoraPatch:
    """Context manager: while active, ``model``'s target Linears add each row block's LoRA.

    ``weights`` maps module names (as in ``model.named_modules()``) to :class:`StackedLora`
    or to a tuple ``(A, B, scaling)`` with A ``[n, r, in]``, B ``[n, out, r]`` and scaling a
    float or ``[n]`` tensor. Every module must have the same ``n``. The input batch size must
    be a multiple of ``n``; rows ``[i·P, (i+1)·P)`` use adapter ``i`` (P = batch // n).
    """

    def __init__(self, model, weights: dict[str, Union[StackedLora, tuple]]):
        import torch

        self.model = model
        self.weights: dict[str, StackedLora] = {}
        for name, w in weights.items():
            if not isinstance(w, StackedLora):
                A, B, s = w
                if not torch.is_tensor(s):
                    s = torch.full((A.shape[0],), float(s), device=A.device, dtype=A.dtype)
                w = StackedLora(A, B, s)
            self.weights[name] = w
        ns = {w.n for w in self.weights.values()}
        if len(ns) > 1:
            raise ValueError(f"every module must stack the same number of adapters, got {sorted(ns)}")
        self.n = ns.pop() if ns else 0
        self._handles: list = []
        self._entered = False

    def __enter__(self) -> "LoraPatch":
        import torch.nn as nn

        named = dict(self.model.named_modules())
        missing = [k for k in self.weights if k not in named]
        if missing:
            raise KeyError(f"modules not in the model: {missing[:5]}")
        try:
            for name, w in self.weights.items():
                mod = named[name]
                if not isinstance(mod, nn.Linear):
                    raise TypeError(f"{name} is {type(mod).__name__}, not nn.Linear")
                if w.A.shape[2] != mod.in_features or w.B.shape[1] != mod.out_features:
                    raise ValueError(
                        f"{name}: LoRA maps {w.A.shape[2]}->{w.B.shape[1]}, module is {mod.in_features}->{mod.out_features}"
                    )
                self._handles.append(mod.register_forward_hook(self._make_hook(w)))
        except Exception:
            self.__exit__()
            raise
        _ACTIVE[self.model] = _ACTIVE.get(self.model, 0) + 1
        self._entered = True
        return self

    def __exit__(self, *exc) -> None:
        if self._entered:
            self._entered = False
            left = _ACTIVE.get(self.model, 0) - 1
            if left > 0:
                _ACTIVE[self.model] = left
            else:
                _ACTIVE.pop(self.model, None)
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _make_hook(self, w: StackedLora):
        n = w.n

        def hook(module, inputs, output):
            x = inputs[0]
            batch = x.shape[0]
            if batch % n:
                raise ValueError(f"batch of {batch} rows is not a multiple of {n} adapters")
            xs = x.reshape(n, -1, x.shape[-1]).to(w.A.dtype)  # [n, P·T, in]
            h = torch_bmm(xs, w.A.transpose(1, 2))  # [n, P·T, r]
            d = torch_bmm(h, w.B.transpose(1, 2))  # [n, P·T, out]
            d = d * w.scaling.view(n, 1, 1)
            return output + d.reshape(output.shape).to(output.dtype)

        return hook


def torch_bmm(a, b):
    import torch

    return torch.bmm(a, b)


def patch_adapters(model, adapters: Sequence["LoraAdapter"], device=None, dtype=None) -> LoraPatch:
    """A :class:`LoraPatch` for a list of loaded adapters (no grad needed)."""
    if device is None:
        device = next(model.parameters()).device
    return LoraPatch(model, stack_adapters(adapters, device=device, dtype=dtype))
