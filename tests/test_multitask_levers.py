"""The multitask trainer's levers: loss_balance, delta_centered, task_weight (tiny random Llama)."""

import json
from pathlib import Path

import pytest
import torch

from test_train_multitask import _metrics, _train, tiny_train_project  # noqa: F401  (fixture)

MT = "train.multitask."
SHORT = {MT + "total_steps": 4, MT + "save_interval": 2, MT + "eval_interval": 4, MT + "lambda_warmup_steps": 0,
         MT + "warmup_steps": 1, MT + "max_text_length": 64}  # short condition texts: a quick set-up


def _rows(folder) -> dict[int, dict]:
    return {s: {k: v for k, v in r.items() if k != "step"} for s, r in _metrics(folder).items()}


def test_defaults_leave_training_unchanged(tiny_train_project, tmp_path):
    plain = _train(tiny_train_project, SHORT, out_dir=tmp_path / "plain")
    explicit = _train(tiny_train_project, {**SHORT, MT + "loss_balance": "none", MT + "delta_centered": False,
                                           MT + "task_weight": 0.0, MT + "task_examples": 7},
                      out_dir=tmp_path / "explicit")
    assert _rows(explicit.out_dir) == _rows(plain.out_dir)  # bit-identical, every metric of every step
    a, b = Path(plain.final_checkpoint), Path(explicit.final_checkpoint)
    assert (a / "generator.safetensors").read_bytes() == (b / "generator.safetensors").read_bytes()
    assert sorted(p.name for p in a.iterdir()) == sorted(p.name for p in b.iterdir())
    assert not (a / "loss_balance.safetensors").exists() and not (a / "delta_mean.safetensors").exists()
    assert not any(k.startswith(("balance_", "loss_task")) for r in _rows(a.parent).values() for k in r)


def test_gradnorm_balances_the_delta_term(tiny_train_project):
    res = _train(tiny_train_project, {**SHORT, MT + "loss_balance": "gradnorm", MT + "lambda_delta": 0.5})
    m = _rows(res.out_dir)
    for s, r in m.items():
        c = r["grad_norm_weights"] / r["grad_norm_delta"]
        assert r["balance_weight_weights"] == 1.0
        assert r["balance_weight_delta"] == pytest.approx(0.5 * c, rel=1e-5)
        assert r["loss_total"] == pytest.approx(r["loss_weights"] + 0.5 * c * r["loss_delta"], rel=1e-5)
    # the raw terms are on very different gradient scales on this zoo, which is what the lever is for
    assert any(abs(r["balance_weight_delta"] / 0.5 - 1) > 0.1 for r in m.values())


def test_uncertainty_weights_train_and_resume(tiny_train_project, tmp_path):
    from safetensors.torch import load_file

    ov = {**SHORT, MT + "loss_balance": "uncertainty", MT + "total_steps": 4}
    full = _train(tiny_train_project, ov)
    m = _rows(full.out_dir)
    ck = Path(full.out_dir) / "checkpoints" / "step-000002"
    s = load_file(str(ck / "loss_balance.safetensors"))["log_vars"]
    assert s.shape == (2,) and bool((s != 0).all())  # both log-variances moved off their start
    for r in m.values():
        assert r["balance_weight_weights"] == pytest.approx(torch.exp(-torch.tensor(r["uncertainty_s_weights"])).item(),
                                                           rel=1e-5)
    assert m[4]["uncertainty_s_delta"] != m[1]["uncertainty_s_delta"]
    # resumed from step 2 it continues with the learned weights (and their optimizer moments)
    again = _rows(_train(tiny_train_project, ov, resume=ck, out_dir=tmp_path / "resumed").out_dir)
    assert sorted(again) == [3, 4]
    for step in (3, 4):
        for k in ("uncertainty_s_weights", "uncertainty_s_delta", "loss_total", "loss_delta"):
            assert again[step][k] == pytest.approx(m[step][k], rel=1e-5, abs=1e-7), (step, k)


def test_centered_run_records_the_training_mean(tiny_train_project):
    from safetensors.torch import load_file

    from llgbm_cli.config import load_config
    from llgbm_cli.deltas.cache import DeltaCache
    from llgbm_cli.services.cache_deltas import run_cache_deltas
    from llgbm_cli.training.methods.multitask import delta_mean_of

    resolved = load_config(tiny_train_project)
    run_cache_deltas(resolved)
    cache = DeltaCache.open(tiny_train_project.parent / "runs" / "deltas")
    train_ids = [i for i in cache.ids if not i.startswith("piqa")]  # piqa is held out
    expected = torch.stack([cache.row(i).float() for i in train_ids]).mean(0)
    everything = torch.stack([cache.row(i).float() for i in cache.ids]).mean(0)

    res = _train(tiny_train_project, {**SHORT, MT + "total_steps": 2, MT + "delta_centered": True,
                                      MT + "delta_loss_type": "cosine"})
    for folder in (Path(res.final_checkpoint), Path(res.out_dir) / "checkpoints" / "step-000002"):
        mean = delta_mean_of(folder)
        assert torch.allclose(mean, expected, atol=1e-6) and not torch.allclose(mean, everything, atol=1e-4)
        meta = json.loads((folder / "generator.json").read_text())
        assert meta["delta_mean"]["adapters"] == len(train_ids) and meta["delta_mean"]["file"] == "delta_mean.safetensors"
    prov = json.loads((Path(res.out_dir) / "llgbm.json").read_text())
    assert prov["delta_mean"]["norm"] == pytest.approx(float(expected.norm()), rel=1e-5)
    m = _rows(res.out_dir)
    assert "delta_centered_cosine_sim" in m[1] and "heldout_delta_centered_cosine" in m[2]
    # the centered cosine loss is what is minimized
    assert m[1]["loss_delta"] == pytest.approx(1 - m[1]["delta_centered_cosine_sim"], rel=1e-4)
    assert load_file(str(Path(res.final_checkpoint) / "delta_mean.safetensors"))["mean"].shape == expected.shape


def test_task_loss_reaches_the_generator(tiny_train_project, tmp_path):
    ov = {**SHORT, MT + "total_steps": 2, MT + "delta_batch_size": 0}
    off = _rows(_train(tiny_train_project, ov, out_dir=tmp_path / "off").out_dir)
    on = _rows(_train(tiny_train_project, {**ov, MT + "task_weight": 0.5, MT + "task_examples": 2},
                      out_dir=tmp_path / "on").out_dir)
    assert "loss_task" not in off[1] and on[1]["loss_task"] > 0
    assert on[1]["loss_total"] == pytest.approx(on[1]["loss_weights"] + 0.5 * on[1]["loss_task"], rel=1e-6)
    assert on[1]["loss_weights"] == off[1]["loss_weights"]  # the same generator before the first step
    assert on[1]["grad_norm"] != off[1]["grad_norm"]  # the task loss has a gradient to the generator
    assert on[2]["loss_weights"] != off[2]["loss_weights"]


def test_task_loss_falls_when_the_lora_trains(tiny):
    """The task loss through the functional patch lowers its own cross-entropy when its LoRA is trained."""
    import numpy as np

    from llgbm_cli.config import load_config
    from llgbm_cli.lora.patch import StackedLora
    from llgbm_cli.training.task_loss import TaskLoss

    model, tok = tiny
    names = ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]
    mods = dict(model.named_modules())
    torch.manual_seed(0)
    params = {n: (torch.nn.Parameter(torch.randn(1, 4, mods[n].in_features) * 0.1),
                  torch.nn.Parameter(torch.zeros(1, mods[n].out_features, 4))) for n in names}
    loss = TaskLoss(load_config(None), model, tok, ["boolq"], 3)
    opt = torch.optim.Adam([p for ab in params.values() for p in ab], lr=3e-2)
    seen = []
    for _ in range(8):
        stacked = {n: StackedLora(A, B, torch.ones(1)) for n, (A, B) in params.items()}
        lt = loss(stacked, ["boolq"], np.random.default_rng(0))  # the same examples every step
        opt.zero_grad()
        lt.backward()
        if not seen:
            assert all(float(B.grad.abs().sum()) > 0 for _, B in params.values())
        opt.step()
        seen.append(float(lt.detach()))
    assert seen[-1] < seen[0]


@pytest.mark.parametrize("key, value", [
    ("train.multitask.loss_balance", "equal"), ("train.multitask.task_weight", "-1"),
    ("train.multitask.task_weight", "nan"), ("train.multitask.task_examples", "0"),
    ("train.multitask.delta_centered", "maybe"), ("ablation.loss_balance", '["none", "equal"]'),
    ("ablation.task_weight", "[-0.5]"),
])
def test_bad_lever_values_are_refused(cli, tmp_path, key, value):
    r = cli("config", "show", "--set", f"{key}={value}")
    assert r.exit_code == 2, r.stdout + r.stderr
    assert key in r.stderr and "Traceback" not in r.stderr


def test_runs_from_before_the_levers_resume(tiny_train_project, tmp_path):
    """A checkpoint whose recorded config predates the lever keys resumes when they keep their defaults."""
    from llgbm_cli.errors import InputError

    ov = {**SHORT, MT + "delta_batch_size": 0}
    res = _train(tiny_train_project, ov)
    ck = Path(res.out_dir) / "checkpoints" / "step-000002"
    prov = json.loads((ck / "llgbm.json").read_text())
    for k in ("loss_balance", "delta_centered", "task_weight", "task_examples"):
        del prov["config"]["train"]["multitask"][k]
    (ck / "llgbm.json").write_text(json.dumps(prov))
    again = _train(tiny_train_project, ov, resume=ck, out_dir=tmp_path / "resumed")
    assert again.resumed_from == 2
    with pytest.raises(InputError, match="train.multitask.delta_centered"):
        _train(tiny_train_project, {**ov, MT + "delta_centered": True}, resume=ck, out_dir=tmp_path / "r2")
