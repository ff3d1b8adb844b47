"""Next-token logits on the probes, with or without a batch of patched-in adapters (the KL tether
of delta-only training compares the two)."""

from __future__ import annotations


def probe_logits(model, probes, stacked=None, n: int = 1):
    """Next-token logits at each probe's last token ``[n·P, V]`` (row block i = adapter i)."""
    from contextlib import nullcontext

    import torch

    from ..lora.patch import LoraPatch
    from ..anatomy import backbone

    device = next(model.parameters()).device
    ids = probes.input_ids.to(device).repeat(n, 1)
    am = probes.attention_mask.to(device).repeat(n, 1)
    with (LoraPatch(model, stacked) if stacked is not None else nullcontext()):
        h = backbone(model)(input_ids=ids, attention_mask=am, use_cache=False).last_hidden_state
    last = am.sum(1) - 1  # right padding
    h = h[torch.arange(h.shape[0], device=device), last]
    return model.get_output_embeddings()(h)
