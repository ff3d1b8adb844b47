"""Answer-level matching: the ``kl`` delta loss (llgbm_cli.training.answer_kl), in multitask and B1."""

import json

import numpy as np
import pytest
import torch

from test_b1_regularisers import _b1, world  # noqa: F401  (fixture)
from test_train_multitask import _metrics, _train, tiny_train_project  # noqa: F401  (fixture)

MT = "train.multitask."
SHORT = {MT + "total_steps": 2, MT + "save_interval": 2, MT + "eval_interval": 2, MT + "lambda_warmup_steps": 0,
         MT + "warmup_steps": 1, MT + "max_text_length": 64}
NAMES = ["model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj"]


def _lora(model, n, seed, scale=0.3):
    from llgbm_cli.lora.patch import StackedLora

    mods = dict(model.named_modules())
    g = torch.Generator().manual_seed(seed)
    return {k: StackedLora(torch.randn(n, 4, mods[k].in_features, generator=g) * scale,
                           torch.randn(n, mods[k].out_features, 4, generator=g) * scale, torch.ones(n))
            for k in NAMES}


def test_distillation_kl_is_the_textbook_kl():
    from scipy.stats import entropy
    from scipy.special import softmax

    from llgbm_cli.training.answer_kl import distillation_kl

    rng = np.random.default_rng(0)
    s, t = rng.normal(size=(3, 11)), rng.normal(size=(3, 11))
    for T in (1.0, 2.0):
        want = np.mean([entropy(softmax(t[i] / T), softmax(s[i] / T)) for i in range(3)]) * T * T
        got = float(distillation_kl(torch.tensor(s), torch.tensor(t), T))
        assert got == pytest.approx(want, rel=1e-5)
    assert float(distillation_kl(torch.tensor(t), torch.tensor(t), 1.0)) == pytest.approx(0.0, abs=1e-7)


def test_answer_context_stops_before_the_answer():
    from llgbm_cli.training.answer_kl import answer_context

    assert answer_context([5, 6, 7, 8, 9], [-100, -100, -100, 8, 9]) == [5, 6, 7]
    assert answer_context([5, 6], [-100, -100]) == [5, 6]  # no answer token: the whole prompt


def test_kl_is_zero_for_the_teacher_and_falls_when_the_lora_learns_it(tiny):
    """Same LoRA as the teacher: KL 0. A fresh LoRA trained on the KL alone moves toward the teacher's
    answer distribution (the gradient reaches A and B through the patch)."""
    from llgbm_cli.config import load_config
    from llgbm_cli.lora.patch import StackedLora
    from llgbm_cli.training.answer_kl import AnswerKL

    model, tok = tiny
    loss = AnswerKL(load_config(None), model, tok, ["boolq"], 3, temperature=1.0)
    teacher = _lora(model, 1, seed=1)
    assert float(loss(teacher, teacher, ["boolq"], np.random.default_rng(0))) == pytest.approx(0.0, abs=1e-6)
    # the prompts come from the train split and stop before the answer
    train_ids = {r.id for r in loss.records["boolq"]}
    assert len(train_ids) == len(loss.records["boolq"])
    ctx = loss.contexts(["boolq"], np.random.default_rng(0))
    assert len(ctx) == 3 and all(len(c) > 0 for c in ctx)

    torch.manual_seed(0)
    mods = dict(model.named_modules())
    params = {n: (torch.nn.Parameter(torch.randn(1, 4, mods[n].in_features) * 0.05),
                  torch.nn.Parameter(torch.zeros(1, mods[n].out_features, 4))) for n in NAMES}
    opt = torch.optim.Adam([p for ab in params.values() for p in ab], lr=3e-2)
    seen = []
    for _ in range(10):
        student = {n: StackedLora(A, B, torch.ones(1)) for n, (A, B) in params.items()}
        lk = loss(student, teacher, ["boolq"], np.random.default_rng(0))  # the same prompts every step
        opt.zero_grad()
        lk.backward()
        if not seen:
            assert all(float(B.grad.abs().sum()) > 0 for _, B in params.values())
        opt.step()
        seen.append(float(lk.detach()))
    assert seen[0] > 0 and seen[-1] < 0.5 * seen[0], seen


def test_kl_rows_follow_each_adapters_own_teacher(tiny):
    """Two adapters in one batch: each row block is compared with its own teacher, on its own task."""
    from llgbm_cli.config import load_config
    from llgbm_cli.lora.patch import StackedLora
    from llgbm_cli.training.answer_kl import AnswerKL

    model, tok = tiny
    loss = AnswerKL(load_config(None), model, tok, ["boolq", "piqa"], 2)
    t = _lora(model, 2, seed=3)
    swapped = {k: StackedLora(v.A.flip(0), v.B.flip(0), v.scaling) for k, v in t.items()}
    rng = lambda: np.random.default_rng(5)  # noqa: E731
    assert float(loss(t, t, ["boolq", "piqa"], rng())) == pytest.approx(0.0, abs=1e-6)
    assert float(loss(swapped, t, ["boolq", "piqa"], rng())) > 1e-4


def test_multitask_trains_on_the_kl(tiny_train_project, tmp_path):
    res = _train(tiny_train_project, {**SHORT, MT + "delta_loss_type": "kl", MT + "kl_examples": 2,
                                      MT + "kl_temperature": 2.0, MT + "lambda_delta": 0.5}, out_dir=tmp_path / "kl")
    m = _metrics(res.out_dir)
    for s in (1, 2):
        r = m[s]
        assert r["loss_delta"] >= 0 and "delta_cosine_sim" in r  # the probe delta is still logged
        assert r["loss_total"] == pytest.approx(r["loss_weights"] + 0.5 * r["loss_delta"], rel=1e-5)
    plain = _metrics(_train(tiny_train_project, {**SHORT, MT + "lambda_delta": 0.5}, out_dir=tmp_path / "mse").out_dir)
    assert m[1]["loss_weights"] == plain[1]["loss_weights"]  # the same generator before its first step
    assert m[1]["loss_delta"] != plain[1]["loss_delta"] and m[1]["grad_norm"] != plain[1]["grad_norm"]
    assert "heldout_delta_cosine" in m[2]  # held-out metrics still in delta space
    meta = json.loads((tmp_path / "kl" / "llgbm.json").read_text())
    assert meta["config"]["train"]["multitask"]["delta_loss_type"] == "kl"


def test_kl_with_centered_deltas_is_refused(tiny_train_project):
    from llgbm_cli.errors import InputError

    with pytest.raises(InputError, match="delta_centered"):
        _train(tiny_train_project, {**SHORT, MT + "delta_loss_type": "kl", MT + "delta_centered": True})


def test_b1_trains_on_the_kl(cli, world, tmp_path):  # noqa: F811
    res, rows = _b1(cli, world, tmp_path / "b1kl", "delta_loss_type='kl'", "kl_examples=2", "epochs=1")
    steps = [r for r in rows if "loss_delta" in r]
    assert steps and all(r["loss_delta"] >= 0 and "delta_cosine_sim" in r for r in steps)
    assert res["steps"] == 3
    r = cli("-p", world, "train", "delta-only", "--variant", "b1", "--out", tmp_path / "bad",
            "--set", "train.delta_only.delta_loss_type=kl", "--set", "train.delta_only.delta_centered=true")
    assert r.exit_code == 2 and "delta_centered" in r.stderr


def _capture_targets(monkeypatch):
    import llgbm_cli.training.methods.multitask as mtmod

    made = []

    class Recording(mtmod.ProbeTargets):
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            made.append(self)

    monkeypatch.setattr(mtmod, "ProbeTargets", Recording)
    return made


def test_per_probe_targets_average_to_the_cached_deltas(tiny_train_project, tmp_path, monkeypatch):
    """delta_per_probe on the project's probes: the teachers' per-probe deltas, averaged over the
    probes, are the cached deltas; the loss compares [P·D] vectors."""
    from llgbm_cli.config import load_config
    from llgbm_cli.deltas.cache import DeltaCache
    from llgbm_cli.services.cache_deltas import run_cache_deltas

    run_cache_deltas(load_config(tiny_train_project))
    made = _capture_targets(monkeypatch)
    res = _train(tiny_train_project, {**SHORT, MT + "delta_per_probe": True, MT + "lambda_delta": 0.5},
                 out_dir=tmp_path / "pp")
    pt = made[0]
    cache = DeltaCache.open(tiny_train_project.parent / "runs" / "deltas")
    P = len(pt.probes[None])
    want = torch.stack([cache.row(i).float() for i in pt.ids])
    assert pt.targets.shape == (len(pt.ids), P * want.shape[1])
    assert torch.allclose(pt.targets.reshape(len(pt.ids), P, -1).mean(1), want, atol=1e-5)
    m = _metrics(res.out_dir)
    assert m[1]["loss_total"] == pytest.approx(m[1]["loss_weights"] + 0.5 * m[1]["loss_delta"], rel=1e-5)


def test_own_task_probes_measure_each_adapter_on_its_task(tiny_train_project, tmp_path, monkeypatch):
    made = _capture_targets(monkeypatch)
    res = _train(tiny_train_project, {**SHORT, MT + "delta_probes": "own-task", MT + "own_task_probes": 3},
                 out_dir=tmp_path / "own")
    pt = made[0]
    assert set(pt.probes) == set(pt.tasks) and all(len(p) == 3 for p in pt.probes.values())
    # the prompts are train prompts of that task
    from llgbm_cli.config import load_config
    from llgbm_cli.tasks.registry import registry_for

    reg = registry_for(load_config(tiny_train_project))
    for t, ps in pt.probes.items():
        train = {r.prompt for r in reg.get(t).records("train")}
        assert set(ps.texts) <= train
    assert torch.isfinite(pt.targets).all() and _metrics(res.out_dir)[2]["loss_delta"] >= 0
    from llgbm_cli.errors import InputError

    with pytest.raises(InputError, match="delta_centered"):
        _train(tiny_train_project, {**SHORT, MT + "delta_probes": "own-task", MT + "delta_centered": True},
               out_dir=tmp_path / "bad")


def test_kl_runs_skip_the_probe_cosine_check():
    from llgbm_cli.evaluation.checks import multitask_run_checks

    rows = [{"step": i, "loss_weights": 1.0 / i, "loss_delta": 1.0 / i, "delta_cosine_sim": 0.5 - 0.01 * i,
             "lambda_delta": 1.0} for i in range(1, 9)]
    names = lambda prov: [c["name"] for c in multitask_run_checks("multitask", rows, prov, None) if c]  # noqa: E731
    prov = {"config": {"train": {"multitask": {"lambda_delta": 1.0, "lambda_schedule": "constant",
                                                "lambda_warmup_steps": 0, "delta_loss_type": "mse"}}}}
    assert "multitask delta_cosine_sim improves" in names(prov)
    prov["config"]["train"]["multitask"]["delta_loss_type"] = "kl"
    assert "multitask delta_cosine_sim improves" not in names(prov)
