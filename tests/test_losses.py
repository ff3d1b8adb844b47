import math

import pytest
import torch

from llgbm_cli.losses import DeltaLoss, MultiTaskLoss, delta_w_mse, lambda_at, masked_token_mse


@pytest.mark.parametrize(
    "schedule, expected",
    [
        ("constant", {0: 0.0, 50: 0.0, 99: 0.0, 100: 2.0, 500: 2.0}),
        ("linear", {0: 0.0, 25: 0.5, 50: 1.0, 100: 2.0, 500: 2.0}),
        ("cosine", {0: 0.0, 50: 1.0, 100: 2.0, 500: 2.0}),
    ],
)
def test_lambda_schedules(schedule, expected):
    for step, lam in expected.items():
        assert lambda_at(step, 2.0, schedule, 100) == pytest.approx(lam)


def test_cosine_schedule_is_slow_then_fast():
    assert lambda_at(25, 1.0, "cosine", 100) == pytest.approx((1 - math.cos(math.pi / 4)) / 2)
    assert lambda_at(25, 1.0, "cosine", 100) < lambda_at(25, 1.0, "linear", 100)


def test_no_warmup_and_bad_schedule():
    assert lambda_at(0, 0.5, "constant", 0) == 0.5
    with pytest.raises(ValueError, match="linear"):
        MultiTaskLoss(1.0, "exponential", 10)


def test_multitask_loss_combines():
    mtl = MultiTaskLoss(1.0, "linear", 10)
    total, lam = mtl(torch.tensor(2.0), torch.tensor(4.0), 5)
    assert lam == 0.5 and total.item() == pytest.approx(4.0)
    total, lam = mtl(torch.tensor(2.0), None, 5)
    assert total.item() == 2.0


def test_delta_loss_kinds():
    p = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    t = torch.tensor([[2.0, 0.0], [0.0, -2.0]])
    assert DeltaLoss("mse")(p, t).item() == pytest.approx((1 + 16) / 4)
    assert DeltaLoss("cosine")(p, t).item() == pytest.approx((0 + 2) / 2)
    assert DeltaLoss("combined")(p, t).item() == pytest.approx(17 / 4 + 1)
    # normalized mse ignores scale
    assert DeltaLoss("mse", normalize=True)(p[:1], t[:1]).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="combined"):
        DeltaLoss("l1")


def test_masked_token_mse_ignores_padding():
    mask = torch.tensor([[[1.0, 1.0, 0.0]]])
    p = torch.tensor([[[[1.0, 2.0, 100.0]]]])
    t = torch.tensor([[[[0.0, 0.0, -100.0]]]])
    assert masked_token_mse(p, t, mask).item() == pytest.approx(2.5)


def test_delta_w_is_factorization_invariant():
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(1, 3, 8, generator=g), torch.randn(1, 6, 3, generator=g)
    R = torch.linalg.qr(torch.randn(3, 3, generator=g))[0]  # B·A == (B R)(Rᵀ A)
    same = delta_w_mse({"m": (R.T @ A, B @ R)}, {"m": (A, B)}, 2.0)
    assert same.item() < 1e-10
    assert delta_w_mse({"m": (A, B)}, {"m": (A, torch.zeros_like(B))}, 2.0).item() > 0.1
