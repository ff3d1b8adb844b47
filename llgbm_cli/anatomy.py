"""Model anatomy: where the decoder layers of a causal LM are, and which of them an adapter touches.

Pure lookups over a loaded Hugging Face decoder-only model (Llama/Mistral/Qwen-style): the decoder
stack (:func:`backbone`), the lowest decoder layer a set of module names sits in
(:func:`lowest_adapted_layer`), and a context in which the layers below a given one are not
computed (:func:`skip_layers`). Delta computation and batched adapter scoring both build on them;
nothing here imports torch.
"""

from __future__ import annotations

import contextlib
import re
import weakref
from typing import Iterable


def backbone(model):
    """The decoder stack (embeddings, layers, final norm) of a causal LM, or the model itself."""
    for cand in (getattr(model, getattr(model, "base_model_prefix", "model"), None), getattr(model, "model", None), model):
        if cand is not None and all(hasattr(cand, a) for a in ("embed_tokens", "layers", "norm")):
            return cand
    raise TypeError(
        f"{type(model).__name__}: expected a decoder-only causal LM with embed_tokens, layers and norm "
        "(Llama/Mistral/Qwen-style)"
    )


_LAYER_PATTERNS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _layer_pattern(model) -> "re.Pattern":
    """Regex matching a module name inside decoder layer i (group 1 = i), e.g. ``model.layers.7.``."""
    pat = _LAYER_PATTERNS.get(model)
    if pat is None:
        layers = backbone(model).layers
        prefix = next(name for name, mod in model.named_modules() if mod is layers)
        pat = re.compile((re.escape(prefix) + r"\." if prefix else "") + r"(\d+)(?:\.|$)")
        _LAYER_PATTERNS[model] = pat
    return pat


def lowest_adapted_layer(model, modules: Iterable[str]) -> int:
    """The lowest decoder layer (0-based) that any of ``modules`` (names as in
    ``model.named_modules()``; a dict's keys) sits in; ``num_layers`` when there are none.

    Hidden states up to index k (``output_hidden_states`` indexing) are the base model's for an
    adapter whose lowest layer is k. A module outside the decoder layers counts as layer 0.
    """
    pat = _layer_pattern(model)
    low = len(backbone(model).layers)
    for name in modules:
        m = pat.match(name)
        if m is None:
            return 0
        low = min(low, int(m.group(1)))
    return low


_MISSING = object()


@contextlib.contextmanager
def skip_layers(bb, start: int, state, as_tuple: bool):
    """While active, decoder layers ``0..start-1`` are not computed: each returns ``state`` (the
    hidden state entering layer ``start``), so the backbone's own forward (masks, positions,
    rotary embeddings, per-layer attention kinds) runs unchanged from layer ``start`` on."""
    if start <= 0:
        yield
        return
    out = (state,) if as_tuple else state

    def skip(*args, **kwargs):
        return out

    saved = []
    try:
        for layer in bb.layers[:start]:
            saved.append((layer, layer.__dict__.get("forward", _MISSING)))
            layer.forward = skip
        yield
    finally:
        for layer, old in saved:
            if old is _MISSING:
                del layer.forward
            else:
                layer.forward = old
