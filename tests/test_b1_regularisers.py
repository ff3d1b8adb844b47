"""B1's terms against collapse: the relational term, the norm match, task-stratified batches and
the centered delta loss; their defaults leave B1 as it was."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from conftest import TINY_TOML
from delta_world import build_tiny_world
from llgbm_cli.evaluation.degeneracy import flat_delta_w, mean_pairwise_cosine
from llgbm_cli.losses import (
    DeltaOnlyLoss, delta_w_gram, gram_cosines, log_norm_match, pairwise_cosines, relational_loss,
)
from llgbm_cli.training.sampling import task_stratified_batch


def _loras(n=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {f"m{j}": (scale * torch.randn(n, 4, 16, generator=g), scale * torch.randn(n, 12, 4, generator=g))
            for j in range(2)}


# --------------------------------------------------------------------------- the terms


def test_delta_w_gram_is_the_flat_delta_w_gram():
    loras = _loras(n=4)
    flat = flat_delta_w(loras, 2.0)
    torch.testing.assert_close(delta_w_gram(loras, 2.0).float(), flat @ flat.T, rtol=1e-4, atol=1e-3)


def test_relational_is_zero_when_structure_matches_and_positive_otherwise():
    g = torch.Generator().manual_seed(1)
    t = torch.randn(4, 32, generator=g)
    scaled = t * torch.tensor([[0.5], [2.0], [3.0], [0.1]])  # same directions, other norms
    assert float(relational_loss(pairwise_cosines(scaled), pairwise_cosines(t))) < 1e-10
    other = torch.randn(4, 32, generator=g)
    assert float(relational_loss(pairwise_cosines(other), pairwise_cosines(t))) > 1e-3
    collapsed = t[:1].repeat(4, 1)
    assert float(relational_loss(pairwise_cosines(collapsed), pairwise_cosines(t))) > 1e-2
    assert float(relational_loss(pairwise_cosines(t[:1]), pairwise_cosines(t[:1]))) == 0.0  # one adapter
    # ΔW space: a re-factored ΔW (A·c, B/c) and a rescaled one keep the structure.
    teachers = _loras(n=3)
    c = torch.tensor([2.0, 0.5, 3.0])[:, None, None]
    refactored = {k: (A * c, B / c * 1.7) for k, (A, B) in teachers.items()}
    t_cos = gram_cosines(delta_w_gram(teachers, 2.0))
    assert float(relational_loss(gram_cosines(delta_w_gram(refactored, 2.0)), t_cos)) < 1e-8
    moved = _loras(n=3, seed=5)
    assert float(relational_loss(gram_cosines(delta_w_gram(moved, 2.0)), t_cos)) > 1e-3


def _push_apart(eps: float, steps: int):
    g = torch.Generator().manual_seed(2)
    teachers = torch.randn(3, 16, generator=g)  # nearly orthogonal: pairwise cosines ~0
    x = (torch.randn(1, 16, generator=g).repeat(3, 1) + eps * torch.randn(3, 16, generator=g)).requires_grad_()
    t_cos = pairwise_cosines(teachers)
    start = mean_pairwise_cosine(x.detach())
    opt = torch.optim.SGD([x], lr=0.5)
    grad0 = None
    for _ in range(steps):
        opt.zero_grad()
        relational_loss(pairwise_cosines(x), t_cos).backward()
        grad0 = x.grad.norm().item() if grad0 is None else grad0
        opt.step()
    return start, mean_pairwise_cosine(x.detach()), grad0


def test_relational_gradient_pushes_near_identical_outputs_apart():
    start, end, _ = _push_apart(1e-3, 200)
    assert start > 0.999 and end < 0.5, (start, end)
    # The push does not fade as outputs merge: about the same gradient 100x closer together.
    _, _, g_far = _push_apart(1e-3, 1)
    _, _, g_near = _push_apart(1e-5, 1)
    assert g_near > 0.3 * g_far, (g_near, g_far)
    # Teachers that are alike pull generated outputs together instead, no further.
    g = torch.Generator().manual_seed(3)
    base = torch.randn(1, 16, generator=g)
    same_teachers = base.repeat(3, 1) + 1e-4 * torch.randn(3, 16, generator=g)
    x = torch.randn(3, 16, generator=g).requires_grad_()
    opt = torch.optim.SGD([x], lr=0.5)
    for _ in range(100):
        opt.zero_grad()
        relational_loss(pairwise_cosines(x), pairwise_cosines(same_teachers)).backward()
        opt.step()
    assert mean_pairwise_cosine(x.detach()) > 0.95


def test_norm_match_formula_and_pull_against_norm_collapse():
    t = torch.randn(3, 8)
    assert float(log_norm_match(t.pow(2).sum(-1), t.pow(2).sum(-1))) == 0.0
    half = (0.5 * t).pow(2).sum(-1)
    assert float(log_norm_match(half, t.pow(2).sum(-1))) == pytest.approx(math.log(2) ** 2, rel=1e-5)
    # Direction is free; only norms count.
    turned = torch.randn(3, 8)
    turned = turned / turned.norm(dim=-1, keepdim=True) * t.norm(dim=-1, keepdim=True)
    assert float(log_norm_match(turned.pow(2).sum(-1), t.pow(2).sum(-1))) < 1e-10
    # It grows without bound as the generated norm falls toward 0, and its gradient raises the norm.
    losses = [float(log_norm_match((s * t).pow(2).sum(-1), t.pow(2).sum(-1))) for s in (1e-1, 1e-3, 1e-6)]
    assert losses[0] < losses[1] < losses[2]
    x = (1e-3 * t).clone().requires_grad_()
    log_norm_match(x.pow(2).sum(-1), t.pow(2).sum(-1)).backward()
    assert float((x.grad * x.detach()).sum()) < 0  # descent direction points outward
    # ΔW space through DeltaOnlyLoss: A scaled by ½ halves every ‖ΔW‖.
    teachers = _loras(n=3)
    halved = {k: (0.5 * A, B) for k, (A, B) in teachers.items()}
    fn = DeltaOnlyLoss(norm_weight=0.0, variance_weight=0.0, norm_match_weight=1.0, space="delta_w")
    out = fn(torch.zeros(3, 4), torch.zeros(3, 4), halved, teacher_loras=teachers, scaling=2.0)
    assert float(out["loss_norm_match"]) == pytest.approx(math.log(2) ** 2, rel=1e-4)
    with pytest.raises(ValueError, match="teacher LoRAs"):
        fn(torch.zeros(3, 4), torch.zeros(3, 4), halved)


def test_delta_only_loss_defaults_unchanged_and_terms_added():
    loras = _loras()
    g = torch.Generator().manual_seed(4)
    pred, tgt = torch.randn(3, 8, generator=g), torch.randn(3, 8, generator=g)
    old = DeltaOnlyLoss("combined", False, 0.5, 0.25)(pred, tgt, loras)
    new = DeltaOnlyLoss("combined", False, 0.5, 0.25, 0.0, relational_weight=0.0, norm_match_weight=0.0,
                        space="delta_w", center=None)(pred, tgt, loras)
    assert set(old) == set(new) == {"loss", "loss_delta", "loss_norm", "loss_variance"}
    assert all(torch.equal(old[k], new[k]) for k in old)
    on = DeltaOnlyLoss("combined", False, 0.5, 0.25, relational_weight=2.0, norm_match_weight=3.0)(pred, tgt, loras)
    expect = old["loss"] + 2.0 * relational_loss(pairwise_cosines(pred), pairwise_cosines(tgt)) \
        + 3.0 * log_norm_match(pred.pow(2).sum(-1), tgt.pow(2).sum(-1))
    torch.testing.assert_close(on["loss"], expect)
    assert float(on["loss_relational"]) > 0 and float(on["loss_norm_match"]) > 0
    with pytest.raises(ValueError, match="delta_w"):
        DeltaOnlyLoss(space="weights")


def test_centered_delta_loss():
    g = torch.Generator().manual_seed(6)
    mu = 5.0 * torch.randn(8, generator=g)
    pred, tgt = mu + torch.randn(3, 8, generator=g), mu + torch.randn(3, 8, generator=g)
    plain, centered = DeltaOnlyLoss("cosine"), DeltaOnlyLoss("cosine", center=mu)
    # Around a large shared delta every raw cosine is near 1; centered, the task-specific parts count.
    assert float(plain(pred, tgt, _loras())["loss_delta"]) < 0.2
    c = float(centered(pred, tgt, _loras())["loss_delta"])
    assert c == pytest.approx(float((1 - torch.cosine_similarity(pred - mu, tgt - mu, dim=-1)).mean()), rel=1e-5)
    assert c > 0.5
    # MSE is translation-invariant: centering leaves it as it was.
    torch.testing.assert_close(DeltaOnlyLoss("mse", center=mu)(pred, tgt, _loras())["loss_delta"],
                               DeltaOnlyLoss("mse")(pred, tgt, _loras())["loss_delta"])


def test_task_stratified_batch():
    tasks = ["a"] * 4 + ["b"] * 3 + ["c"] * 2
    for seed in range(20):
        rng = np.random.default_rng(seed)
        idx = task_stratified_batch(rng, tasks, 3)
        assert len(set(idx)) == 3 and {tasks[i] for i in idx} == {"a", "b", "c"}
        idx = task_stratified_batch(np.random.default_rng(seed), tasks, 7)
        counts = [sum(tasks[i] == t for i in idx) for t in "abc"]
        assert len(set(idx)) == 7 and max(counts) - min(counts) <= 1 + (counts[2] == 2)
    assert task_stratified_batch(np.random.default_rng(1), tasks, 9) != task_stratified_batch(
        np.random.default_rng(2), tasks, 9)
    assert task_stratified_batch(np.random.default_rng(1), tasks, 5) == task_stratified_batch(
        np.random.default_rng(1), tasks, 5)
    seen = {i for s in range(30) for i in task_stratified_batch(np.random.default_rng(s), tasks, 3)}
    assert seen == set(range(9))  # every adapter gets drawn
    with pytest.raises(ValueError):
        task_stratified_batch(np.random.default_rng(0), tasks, 10)


# --------------------------------------------------------------------------- on the tiny world


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("b1reg")
    p = d / "llgbm.toml"
    p.write_text(TINY_TOML + """
[train.delta_only]
generator = "hypernet"
generator_options = {embed_dim = 16, hidden = 32}
init_from_teachers = false
batch_size = 3
epochs = 4
learning_rate = 0.01
log_interval = 1
eval_interval = 12
save_interval = 100
condition_prompts = 3
""")
    build_tiny_world(p, tiny[0])
    return p


def _b1(cli, world, out, *sets):
    args = [a for s in sets for a in ("--set", f"train.delta_only.{s}")]
    r = cli("-p", world, "--json", "train", "delta-only", "--variant", "b1", "--out", out, *args)
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return json.loads(r.stdout), rows


@pytest.fixture(scope="module")
def off_run(world, tmp_path_factory):
    """B1 as it is by default (12 steps): on the tiny world it collapses to one adapter for every task."""
    from typer.testing import CliRunner

    from llgbm_cli.app import app

    def cli(*args):
        return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)

    out = tmp_path_factory.mktemp("b1off") / "run"
    return _b1(cli, world, out) + (out,)


STEP_KEYS = ("loss_total", "loss_delta", "loss_norm", "loss_variance", "grad_norm", "delta_cosine_sim")


def test_b1_defaults_unchanged(cli, world, off_run, tmp_path):
    res, rows, _ = off_run
    assert not any("loss_relational" in r or "loss_norm_match" in r for r in rows)
    # `auto` sampling is `uniform` while the relational term is off: the same draws, the same run.
    res_u, rows_u = _b1(cli, world, tmp_path / "uniform", "batch_sampling='uniform'", "relational_weight=0",
                        "norm_match_weight=0", "delta_centered=false")
    assert [[r.get(k) for k in STEP_KEYS] for r in rows] == [[r.get(k) for k in STEP_KEYS] for r in rows_u]
    assert res["last"]["gen_pairwise_cosine"] == res_u["last"]["gen_pairwise_cosine"]


def test_b1_relational_term_keeps_tasks_apart(cli, world, off_run, tmp_path):
    res_off, _, _ = off_run
    off = res_off["last"]
    assert off["gen_pairwise_cosine"] > 0.99 > off["teacher_pairwise_cosine"]  # the collapse being fixed
    assert any(w.startswith("diversity collapse") for w in res_off["degeneracy_warnings"])
    # on and off compared at 8 epochs: at 4 the term has barely begun to act (pairwise cosine 0.98
    # with it, 0.9995 without, on one set of package versions), at 8 it has a wide margin while the
    # run without it stays collapsed in delta space
    res, rows = _b1(cli, world, tmp_path / "rel", "relational_weight=10.0", "epochs=8")
    res_off8, _ = _b1(cli, world, tmp_path / "off8", "epochs=8")
    on, off8 = res["last"], res_off8["last"]
    assert all("loss_relational" in r for r in rows if "loss_delta" in r)
    assert off8["gen_delta_pairwise_cosine"] > 0.99  # still one behaviour for every task without the term
    assert on["gen_pairwise_cosine"] < off8["gen_pairwise_cosine"] - 0.1, (on, off8)
    assert on["gen_delta_pairwise_cosine"] < off8["gen_delta_pairwise_cosine"] - 0.1
    assert on["teacher_delta_pairwise_cosine"] == off["teacher_delta_pairwise_cosine"] < 0.99
    assert not any(w.startswith("diversity collapse") for w in res["degeneracy_warnings"])


def test_b1_norm_match_in_delta_w_space_and_centered(cli, world, tmp_path):
    res, rows = _b1(cli, world, tmp_path / "nm", "norm_match_weight=1.0", "match_space='delta_w'",
                    "delta_centered=true", "delta_loss_type='cosine'", "epochs=1")
    steps = [r for r in rows if "loss_delta" in r]
    assert steps and all("loss_norm_match" in r and "loss_relational" not in r for r in steps)
    assert res["steps"] == 3 and math.isfinite(res["last"]["lora_norm_ratio"])


def test_b1_resumes_a_checkpoint_that_predates_the_terms(cli, world, off_run, tmp_path):
    import shutil

    from llgbm_cli.io import PROVENANCE_FILE

    run = tmp_path / "old"
    shutil.copytree(off_run[2], run)
    new_keys = ("relational_weight", "norm_match_weight", "match_space", "batch_sampling", "delta_centered")
    for prov in run.rglob(PROVENANCE_FILE):
        rec = json.loads(prov.read_text())
        if "config" in rec:
            for k in new_keys:
                rec["config"]["train"]["delta_only"].pop(k)
            prov.write_text(json.dumps(rec))
    r = cli("-p", world, "--json", "train", "delta-only", "--variant", "b1", "--out", run, "--resume", "--epochs", "5")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["resumed_from"] == 12
    r = cli("-p", world, "train", "delta-only", "--variant", "b1", "--out", run, "--resume", "--epochs", "6",
            "--set", "train.delta_only.relational_weight=1")
    assert r.exit_code == 2 and "relational_weight" in r.stderr


def test_b1_relational_needs_two_adapters_a_batch(cli, world, tmp_path):
    r = cli("-p", world, "train", "delta-only", "--variant", "b1", "--out", tmp_path / "one",
            "--set", "train.delta_only.relational_weight=1", "--set", "train.delta_only.batch_size=1")
    assert r.exit_code == 2 and "train.delta_only.batch_size" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "one").exists()
