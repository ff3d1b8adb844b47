"""Behavioural retrieval: rank candidate adapters by what they do on the query task's own prompts.

B2 retrieves by a delta predicted from text on the generic probes. The behavioural score instead
runs each candidate on the query's unlabeled prompts (the task's condition prompts: train split,
never test) and asks whether the adapter acts there as it acts on its own task. For an adapter
``a`` with its own task's prompts ``X_a`` and the query prompts ``X_q``, with per-prompt deltas
``Δ_a(x)`` (the delta spec's layers and pooling, *not* averaged over prompts):

    μ_a = mean over x in X_a of Δ_a(x)          (its characteristic shift, on its own inputs)
    score(a) = mean over x in X_q of cos(Δ_a(x), μ_a)

An adapter trained on a task like the query's shifts the query's prompts the way it shifts its own
(score near 1); on unrelated inputs its shift points elsewhere. No label and no teacher of the query
task is read. The deltas run through the shared-prefix path from the lowest adapted layer
(:func:`~llgbm_cli.deltas.compute.per_probe_deltas`).
"""

from __future__ import annotations

import weakref
from typing import Any, Optional, Sequence

# model -> {(adapter key, own prompts, spec, max length, template): its mean delta on its own prompts}
_OWN: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_OWN_PER_MODEL = 256


def consistency_scores(model, tokenizer, adapters: Sequence[Any], own_prompts: Sequence[Sequence[str]],
                       query_prompts: Sequence[str], spec, *, chat_template: bool = True, max_length: int = 128,
                       adapters_per_batch: int = 8, keys: Optional[Sequence[str]] = None) -> list[float]:
    """``score(a)`` (module doc) of each adapter; ``own_prompts[i]``: prompts of adapter i's own task.
    ``keys[i]``: what identifies adapter i's weights (a zoo id with its hash): ``μ_a`` does not depend
    on the query, so under a key it is computed once per model and run (every fold of a
    cross-validation re-ranks from the same zoo) and only the query's deltas are new."""
    import torch

    from .compute import pack_pays, per_probe_deltas, weights_stamp
    from .probes import probes_from_texts

    kw = dict(chat_template=chat_template, max_length=max_length)
    query = probes_from_texts(query_prompts, tokenizer, source="the query prompts", **kw)
    d_q = per_probe_deltas(model, query, spec, adapters, adapters_per_batch=adapters_per_batch,
                           pack=pack_pays(query))  # [n, P, D]
    stamp = weights_stamp(model)
    memo = _OWN.get(model)
    if memo is None or memo.get("stamp") != stamp:  # new weights: every mean delta measured again
        memo = _OWN[model] = {"stamp": stamp}
    spec_key = (tuple(spec.layers), spec.pool, spec.dtype, max_length, bool(chat_template))
    memo_keys = [(keys[i], tuple(own_prompts[i]), spec_key) if keys is not None else None
                 for i in range(len(adapters))]
    mu = torch.zeros(len(adapters), d_q.shape[-1])
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, texts in enumerate(own_prompts):
        if memo_keys[i] is not None and memo_keys[i] in memo:
            mu[i] = memo[memo_keys[i]]
        else:
            groups.setdefault(tuple(texts), []).append(i)
    for texts, idx in groups.items():  # adapters of one task share their own prompts: one probe set
        own = probes_from_texts(list(texts), tokenizer, source="an adapter's own prompts", **kw)
        mu[idx] = per_probe_deltas(model, own, spec, [adapters[i] for i in idx],
                                   adapters_per_batch=adapters_per_batch, pack=pack_pays(own)).mean(1)
        for i in idx:
            if memo_keys[i] is not None:
                memo[memo_keys[i]] = mu[i].clone()
    while len(memo) > _OWN_PER_MODEL + 1:
        memo.pop(next(k for k in memo if k != "stamp"))
    cos = torch.nn.functional.cosine_similarity(d_q, mu[:, None, :].expand_as(d_q), dim=-1, eps=1e-12)
    return [float(v) for v in cos.mean(1)]
