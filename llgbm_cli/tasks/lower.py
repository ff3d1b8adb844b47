"""The base model's layers below an adapter, computed once for many adapters.

An adapter whose lowest LoRA layer is ``start`` leaves decoder layers ``0..start-1`` computing
exactly what the base model computes. Scoring the same questions under many such adapters, each
batch can run those layers once, with the base model (:func:`lower_forward`, which stops at layer
``start`` and keeps the hidden state entering it and the cache of keys and values below it);
each adapter then runs with those layers skipped (:func:`skipping`: they hand the kept state to
layer ``start``) and the kept keys and values put in its cache (:func:`fill_cache`), so what the
upper layers see is what they would see with the whole model run. Used by
``score_multiple_choice_adapters`` and ``score_generative_adapters``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Optional

from ..anatomy import backbone, lowest_adapted_layer, skip_layers


@dataclass
class LowerLayers:
    """The base model's share of one batch below decoder layer ``start``: the hidden state entering
    layer ``start`` for the prompts (and, in multiple-choice scoring, for the option tails) and the
    prompts' keys and values of the layers below it."""

    start: int
    layer_tuple: bool = False  # whether decoder layers return tuples (older transformers)
    prompt_state: Any = None
    tail_state: Any = None
    prompt_kv: list = field(default_factory=list)


class _StopAt(Exception):
    pass


def lower_forward(model, lower: LowerLayers, ids, mask, pos, cache):
    """Run the backbone up to layer ``lower.start`` (excluded) over ``cache`` (a new one if None);
    return (the hidden state entering layer ``start``, the cache)."""
    from transformers import DynamicCache

    from ..models import cache_arg

    bb = backbone(model)
    cache = cache if cache is not None else DynamicCache()
    got = {}

    def hook(mod, inputs, output):
        lower.layer_tuple = isinstance(output, tuple)
        got["h"] = output[0] if isinstance(output, tuple) else output
        raise _StopAt

    h = bb.layers[lower.start - 1].register_forward_hook(hook)
    try:
        bb(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=True, **cache_arg(bb, cache))
    except _StopAt:
        pass
    finally:
        h.remove()
    return got["h"], cache


def record_prompt(model, lower: LowerLayers, ids, mask, pos):
    """The base model's prompt pass below ``lower.start``: fills ``prompt_state`` and ``prompt_kv``."""
    lower.prompt_state, cache = lower_forward(model, lower, ids, mask, pos, None)
    lower.prompt_kv = [(layer.keys, layer.values) for layer in cache.layers[: lower.start]]


def cache_of(kv):
    """A cache holding ``kv`` (a list of (keys, values), one per layer from layer 0)."""
    from transformers import DynamicCache

    cache = DynamicCache()
    fill_cache(cache, kv)
    return cache


def fill_cache(cache, kv) -> None:
    """Put the kept keys and values of the layers below ``start`` into ``cache`` (whose own entries
    for those layers are empty: the layers were skipped)."""
    for i, (k, v) in enumerate(kv):
        cache.update(k, v, i)


def skipping(model, lower: Optional[LowerLayers], which: str):
    """A context in which the layers below ``lower.start`` return ``lower.<which>`` (nothing when
    ``lower`` is None)."""
    if lower is None:
        return contextlib.nullcontext()
    return skip_layers(backbone(model), lower.start, getattr(lower, which), lower.layer_tuple)


def shared_start(model, adapters) -> int:
    """The lowest decoder layer any of ``adapters`` touches (0: nothing can be shared)."""
    return lowest_adapted_layer(model, {m for a in adapters for m in a.modules}) if adapters else 0
