"""Behavioural retrieval's pieces: per-probe deltas and the consistency score (tiny random Llama)."""

import pytest
import torch


def _adapters(model, n=3):
    from llgbm_cli.adapters import random_adapter

    return [random_adapter(model, r=4, alpha=8.0, seed=40 + i, std=0.3, last_layers=1) for i in range(n)]


PROMPTS = ["What is the capital of France?", "Add 3 and 4.", "Is the sky blue?", "Name a mammal that swims."]
OTHER = ["Translate 'cat' into French.", "Which is heavier, iron or wood?", "Count to five."]


def test_per_probe_deltas_average_to_the_cached_delta(tiny):
    from llgbm_cli.deltas.compute import DeltaSpec, compute_deltas, per_probe_deltas
    from llgbm_cli.deltas.probes import probes_from_texts

    model, tok = tiny
    ads = _adapters(model)
    probes = probes_from_texts(PROMPTS, tok)
    for spec in (DeltaSpec(), DeltaSpec(layers=[-1, -2], pool="mean")):
        per = per_probe_deltas(model, probes, spec, ads, adapters_per_batch=2)
        assert per.shape == (3, len(PROMPTS), spec.dim(model))
        want = torch.stack(list(compute_deltas(model, ads, probes, spec)))
        assert torch.allclose(per.mean(1), want, atol=1e-5)
        assert not torch.allclose(per[:, 0], per[:, 1])  # one row per probe, not a copy of the mean


def test_consistency_score_is_the_mean_cosine_to_the_own_task_shift(tiny):
    from llgbm_cli.deltas.behaviour import consistency_scores
    from llgbm_cli.deltas.compute import DeltaSpec, per_probe_deltas
    from llgbm_cli.deltas.probes import probes_from_texts

    model, tok = tiny
    ads = _adapters(model)
    spec = DeltaSpec()
    own = [PROMPTS, PROMPTS, OTHER]
    got = consistency_scores(model, tok, ads, own, OTHER, spec)
    q = per_probe_deltas(model, probes_from_texts(OTHER, tok), spec, ads)
    for i, a in enumerate(ads):
        mu = per_probe_deltas(model, probes_from_texts(own[i], tok), spec, [a]).mean(1)[0]
        want = torch.nn.functional.cosine_similarity(q[i], mu[None].expand_as(q[i]), dim=-1).mean()
        assert got[i] == pytest.approx(float(want), abs=1e-5)
    assert all(-1 <= g <= 1 for g in got)
