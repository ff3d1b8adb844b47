"""B2 DeltaPredictor: learns a mapping from prompt embeddings to deltas; checkpoints round-trip."""

from __future__ import annotations

import pytest
import torch

from llgbm_cli.errors import InputError
from llgbm_cli.generators.predictor import (  # noqa: I001
    DeltaPredictor,
    condition_vector,
    evaluate,
    fit_predictor,
    load_predictor,
    save_predictor,
)


@pytest.fixture(autouse=True)
def one_thread():
    """Small MLPs run faster on one thread, and do not fight other processes for the cores."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _synthetic(n=80, d_cond=24, d_delta=40, k=6, seed=0):
    """Adapters with a latent code: prompts are noisy views of it, the delta a nonlinear map of it."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 6, generator=g)
    P = torch.randn(6, d_cond, generator=g)
    W = torch.randn(6, d_delta, generator=g)
    offset = torch.randn(d_delta, generator=g)  # a shared component, as real deltas have
    embs = [torch.nn.functional.normalize(z[i] @ P + 0.1 * torch.randn(k, d_cond, generator=g), dim=-1) for i in range(n)]
    deltas = torch.tanh(z @ W) + offset
    return embs, deltas


def test_learns_synthetic_mapping_to_high_cosine_on_held_out():
    embs, deltas = _synthetic()
    res = fit_predictor(embs[:64], deltas[:64], val_embs=embs[64:], val_targets=deltas[64:], hidden=128,
                        dropout=0.0, learning_rate=3e-3, epochs=60, batch_size=16, prompts_per_condition=4,
                        log_interval=20)
    val = res.final
    assert val["val_cosine"] > 0.9
    assert val["val_cosine"] > val["val_mean_delta_cosine"] + 0.1  # well above predicting the mean delta
    # The task-specific part is learned too, not just the shared offset.
    assert val["val_centered_cosine"] > 0.8
    assert res.history[0]["loss"] > res.history[-1]["loss"]


def test_cosine_loss_option_trains():
    embs, deltas = _synthetic(n=40)
    res = fit_predictor(embs[:32], deltas[:32], val_embs=embs[32:], val_targets=deltas[32:], hidden=64, epochs=30,
                        loss="cosine", log_interval=10, learning_rate=3e-3)
    assert res.history[-1]["loss"] < res.history[0]["loss"]


def test_checkpoint_round_trip(tmp_path):
    embs, deltas = _synthetic(n=12)
    res = fit_predictor(embs, deltas, hidden=32, epochs=3, log_interval=1)
    save_predictor(tmp_path, res.model, {"cache": {"spec": {"layers": [-1]}}})
    back, meta = load_predictor(tmp_path)
    c = torch.stack([condition_vector(e) for e in embs])
    torch.testing.assert_close(back(c), res.model(c))
    assert meta["predictor"]["delta_dim"] == 40 and meta["cache"]["spec"] == {"layers": [-1]}


def test_missing_checkpoint_names_the_command(tmp_path):
    with pytest.raises(InputError, match="train delta-only --variant b2"):
        load_predictor(tmp_path / "b2")


def test_evaluate_reports_mean_baseline():
    m = DeltaPredictor(4, 3, hidden=8, dropout=0.0)
    t = torch.tensor([[1.0, 0, 0], [0, 1.0, 0]])
    m.set_target_stats(t)
    out = evaluate(m, torch.randn(2, 4), t, baseline=t.mean(0))
    assert abs(out["mean_delta_cosine"] - 2 ** -0.5) < 1e-5


def test_empty_training_set_is_refused():
    with pytest.raises(InputError, match="no training pairs"):
        fit_predictor([], torch.zeros(0, 3))
