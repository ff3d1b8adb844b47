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


def test_token_spread_weights_follow_cross_teacher_spread():
    from llgbm_cli.losses import token_spread_weights

    mask = torch.ones(2, 3, 4)
    mask[1, 2] = 0  # a padding token
    tokens = torch.zeros(5, 2, 3, 4)
    tokens[:, 0, 0] = torch.arange(5.0).view(5, 1)  # the only token that varies
    tokens[:, 1, 1] = 0.5 * torch.arange(5.0).view(5, 1)
    w = token_spread_weights(tokens, mask)
    assert w[0, 0] == pytest.approx(2 * w[1, 1]) and w[0, 1] == 0 and w[1, 2] == 0
    assert float((w.unsqueeze(-1) * mask).sum() / mask.sum()) == pytest.approx(1.0)


def test_weight_loss_options():
    import numpy as np

    from llgbm_cli.generators.base import GeneratedLora
    from llgbm_cli.losses import WeightLoss
    from llgbm_cli.lora.tokenizer import LoraTokenizer, ModuleShape

    tok = LoraTokenizer([ModuleShape("model.layers.0.self_attn.q_proj", 8, 8)], 2)
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(6, 2, 8, generator=g), torch.randn(6, 8, 2, generator=g)
    ab = {"model.layers.0.self_attn.q_proj": (A, B)}
    tokens = tok.tokenize(ab)
    mask = tok.mask()
    idx = torch.tensor([0, 1])
    exact = GeneratedLora({k: (a[idx], b[idx]) for k, (a, b) in ab.items()}, tokens[idx])
    off = GeneratedLora({k: (a[idx] + 1, b[idx]) for k, (a, b) in ab.items()}, None)
    for kind in ("tokens", "factors", "delta_w"):
        for norm in ("mse", "l1"):
            wl = WeightLoss(kind, norm, tok, mask, 1.0, tokens, ab, 4, "spread" if kind == "tokens" else "none")
            assert float(wl(exact, idx)) == pytest.approx(0.0, abs=1e-6)
            assert float(wl(off, idx)) > 0
    # factors: A off by one everywhere = 1/std in z units; with L1 the loss is the mean of those over A and B cells
    wl = WeightLoss("factors", "l1", tok, mask, 1.0, tokens, ab, 4)
    sA = A[:4].std(0, unbiased=False)
    assert float(wl(off, idx)) == pytest.approx(float((1 / sA).sum() * 2 / (2 * (A[0].numel() + B[0].numel()))), rel=1e-4)
    # the default (tokens, mse, no weighting, no noise) is exactly the masked token MSE
    plain = WeightLoss("tokens", "mse", tok, mask, 1.0, tokens, ab, 4)
    assert float(plain(off, idx)) == float(masked_token_mse(tok.tokenize(off.loras), tokens[idx], mask))
    # target noise is drawn from the step's rng: same rng, same loss
    noisy = WeightLoss("tokens", "mse", tok, mask, 1.0, tokens, ab, 4, target_noise=0.1)
    a = float(noisy(exact, idx, np.random.default_rng(1)))
    assert a > 0 and a == float(noisy(exact, idx, np.random.default_rng(1)))


# --------------------------------------------------------------------------- multitask levers


@pytest.mark.parametrize("kind", ["mse", "cosine", "combined"])
@pytest.mark.parametrize("normalize", [False, True])
def test_centered_delta_loss_is_the_plain_loss_on_centered_deltas(kind, normalize):
    from llgbm_cli.losses import CenteredDeltaLoss

    g = torch.Generator().manual_seed(0)
    train = torch.randn(6, 16, generator=g) + 5.0  # a large shared part, as the teachers have
    pred, tgt = torch.randn(3, 16, generator=g) + 5.0, train[:3]
    mu = train.mean(0)
    centered = CenteredDeltaLoss(mu, kind, normalize)(pred, tgt)
    assert centered.item() == pytest.approx(DeltaLoss(kind, normalize)(pred - mu, tgt - mu).item(), rel=1e-6)
    # adding one vector to every delta (and so to their mean) changes nothing
    c = torch.randn(16, generator=g) * 3
    shifted = CenteredDeltaLoss((train + c).mean(0), kind, normalize)(pred + c, tgt + c)
    assert shifted.item() == pytest.approx(centered.item(), rel=1e-4, abs=1e-6)
    if kind != "mse" or normalize:  # the shared part matters to the plain loss (MSE of a difference ignores it)
        plain_shifted = DeltaLoss(kind, normalize)(pred + c, tgt + c)
        assert plain_shifted.item() != pytest.approx(DeltaLoss(kind, normalize)(pred, tgt).item(), rel=1e-3)


def test_gradnorm_makes_the_two_terms_gradient_norms_equal():
    from llgbm_cli.losses import grad_norm, gradnorm_scale

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))
    x = torch.randn(5, 4)
    y = net(x)
    lw = ((y - 1.0) ** 2).mean()  # a small term
    ld = 300.0 * ((y[:, :2] + 2.0) ** 2).mean()  # a term on another scale
    params = list(net.parameters())
    gw, gd = grad_norm(lw, params), grad_norm(ld, params)
    assert gd > 10 * gw  # unbalanced as given
    c, gw2, gd2 = gradnorm_scale(lw, ld, params)
    assert (gw2, gd2) == (gw, gd) and not c.requires_grad
    assert grad_norm(c * ld, params).item() == pytest.approx(gw.item(), rel=1e-5)
    # the balanced total's gradient: both terms contribute with equal norms
    total = lw + c * ld
    total.backward()
    assert all(p.grad is not None for p in params)


def test_uncertainty_weights_follow_the_loss_scale():
    from llgbm_cli.losses import UncertaintyWeights

    u = UncertaintyWeights()
    L = torch.tensor(4.0)
    assert u.term("delta", L).item() == pytest.approx(4.0) and u.weight("delta") == 1.0
    opt = torch.optim.Adam(u.parameters(), lr=0.05)
    for _ in range(400):
        opt.zero_grad()
        (u.term("weights", torch.tensor(0.25)) + u.term("delta", L)).backward()
        opt.step()
    # exp(-s)·L + s is smallest at s = log L: the learned weight of each term is 1 / L
    assert u.weight("delta") == pytest.approx(1 / 4.0, rel=0.05)
    assert u.weight("weights") == pytest.approx(4.0, rel=0.05)
