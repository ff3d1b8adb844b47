"""`train delta-only`: DeltaOnlyLoss, the degeneracy detector, B1 on the tiny world, B2 service."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import TINY_TOML
from delta_world import build_tiny_world
from llgbm_cli.losses import DeltaOnlyLoss, lora_batch_variance, lora_norm_penalty
from llgbm_cli.evaluation.degeneracy import degeneracy_report
from llgbm_cli.holdout import split_entries


def _loras(n=3, seed=0, scale=1.0):
    g = torch.Generator().manual_seed(seed)
    return {f"m{j}": (scale * torch.randn(n, 4, 16, generator=g), scale * torch.randn(n, 12, 4, generator=g))
            for j in range(2)}


# --------------------------------------------------------------------------- degeneracy detector


def test_detector_fires_on_all_zero_generator():
    teachers = _loras()
    zero = {k: (torch.zeros_like(A), torch.zeros_like(B)) for k, (A, B) in teachers.items()}
    metrics, warns = degeneracy_report(zero, teachers, 2.0)
    assert metrics["degenerate_norm"] == 1.0 and metrics["lora_norm_ratio"] == 0.0
    assert any(w.startswith("norm collapse") for w in warns)


def test_detector_silent_on_healthy_generator():
    teachers = _loras()
    healthy = {k: (A + 0.05 * torch.randn_like(A), B) for k, (A, B) in teachers.items()}
    metrics, warns = degeneracy_report(healthy, teachers, 2.0)
    assert warns == [] and metrics["degenerate_norm"] == 0.0 and metrics["degenerate_diversity"] == 0.0
    assert 0.8 < metrics["lora_norm_ratio"] < 1.2


def test_detector_fires_when_tasks_collapse_together():
    teachers = _loras()
    same = {k: (A[:1].expand_as(A).clone(), B[:1].expand_as(B).clone()) for k, (A, B) in teachers.items()}
    metrics, warns = degeneracy_report(same, teachers, 2.0)
    assert metrics["gen_pairwise_cosine"] > 0.999 and metrics["degenerate_diversity"] == 1.0
    assert any(w.startswith("diversity collapse") for w in warns)
    # Teachers that are themselves near-identical do not count as a collapse of the generator.
    _, warns = degeneracy_report(same, same, 2.0)
    assert not any(w.startswith("diversity") for w in warns)


# --------------------------------------------------------------------------- DeltaOnlyLoss


def test_delta_only_loss_terms_and_gradients():
    loras = {k: (A.requires_grad_(), B.requires_grad_()) for k, (A, B) in _loras().items()}
    pred = torch.randn(3, 8, requires_grad=True)
    tgt = torch.randn(3, 8)
    fn = DeltaOnlyLoss("combined", norm_weight=0.5, variance_weight=0.25)
    out = fn(pred, tgt, loras)
    expect = out["loss_delta"] + 0.5 * lora_norm_penalty(loras) - 0.25 * lora_batch_variance(loras)
    torch.testing.assert_close(out["loss"], expect)
    assert out["loss_variance"] < 0  # the negative-variance term rewards spread
    out["loss"].backward()
    assert pred.grad is not None and all(A.grad is not None for A, _ in loras.values())
    assert lora_batch_variance({k: (A[:1], B[:1]) for k, (A, B) in _loras().items()}) == 0


def test_kl_tether_is_zero_at_base_and_positive_away():
    loras = _loras(n=2)
    base = torch.randn(5, 11)
    fn = DeltaOnlyLoss(kl_weight=1.0)
    same = fn(torch.zeros(2, 4), torch.zeros(2, 4), loras, base.repeat(2, 1), base)
    assert abs(float(same["loss_kl"])) < 1e-6
    away = fn(torch.zeros(2, 4), torch.zeros(2, 4), loras, torch.randn(10, 11), base)
    assert float(away["loss_kl"]) > 0.01
    with pytest.raises(ValueError, match="logits"):
        fn(torch.zeros(2, 4), torch.zeros(2, 4), loras)


def test_split_entries_by_task_and_fraction():
    from llgbm_cli.errors import InputError
    from llgbm_cli.zoo_manifest import ZooEntry

    es = [ZooEntry(id=f"{t}-{i}", path="x", task=t) for t in ("a", "b") for i in range(5)]
    tr, va = split_entries(es, ["b"], 0.2, 0)
    assert {e.task for e in tr} == {"a"} and {e.task for e in va} == {"b"}
    tr, va = split_entries(es, [], 0.2, 0)
    assert len(va) == 2 and len(tr) == 8 and not {e.id for e in tr} & {e.id for e in va}
    with pytest.raises(InputError, match="holdout_tasks"):
        split_entries(es, ["zzz"], 0.2, 0)


# --------------------------------------------------------------------------- on the tiny world


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny):
    d = tmp_path_factory.mktemp("dworld")
    p = d / "llgbm.toml"
    p.write_text(TINY_TOML + """
[train.delta_only]
generator = "hypernet"
generator_options = {embed_dim = 16, hidden = 32}
batch_size = 3
epochs = 4
learning_rate = 0.01
log_interval = 1
eval_interval = 6
save_interval = 6
condition_prompts = 3

[train.b2]
hidden = 32
epochs = 20
dropout = 0.0
""")
    build_tiny_world(p, tiny[0])
    return p


B1_FLAGS = ("--set", "train.delta_only.init_from_teachers=false")


def test_b1_steps_lower_the_delta_loss_and_report_degeneracy(cli, world):
    r = cli("-p", world, "--json", "train", "delta-only", "--variant", "b1", *B1_FLAGS)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["steps"] == 12 and res["train_adapters"] == 9
    rows = [json.loads(l) for l in (world.parent / "runs/train/b1/metrics.jsonl").read_text().splitlines()]
    first, last = rows[0]["loss_delta"], min(r["loss_delta"] for r in rows[-3:])
    assert last < first, (first, last)
    for k in ("loss_norm", "loss_variance", "lora_norm_ratio", "gen_pairwise_cosine", "degenerate_norm"):
        assert k in res["last"], k
    assert (world.parent / "runs/train/b1/final/generator.safetensors").exists()
    assert isinstance(res["degeneracy_warnings"], list)


def test_b1_refuses_existing_run_and_resumes(cli, world):
    r = cli("-p", world, "train", "delta-only", "--variant", "b1", *B1_FLAGS)
    assert r.exit_code == 2 and "--resume" in r.stderr and "--force" in r.stderr
    r = cli("-p", world, "--json", "train", "delta-only", "--variant", "b1", "--resume", "--epochs", "6", *B1_FLAGS)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["resumed_from"] == 12 and res["steps"] == 18
    r = cli("-p", world, "train", "delta-only", "--variant", "b1", "--resume",
            "--set", "train.delta_only.lora_norm_weight=1.0", *B1_FLAGS)
    assert r.exit_code == 2 and "lora_norm_weight" in r.stderr


def test_b1_nan_guard(cli, world, tmp_path):
    r = cli("-p", world, "train", "delta-only", "--variant", "b1", "--out", tmp_path / "b1nan",
            "--set", "train.delta_only.learning_rate=1e30", "--set", "train.delta_only.max_grad_norm=1e30", *B1_FLAGS)
    assert r.exit_code == 1 and "NaN/Inf" in r.stderr and "Traceback" not in r.stderr


def test_b2_trains_and_logs_heldout_cosine(cli, world):
    r = cli("-p", world, "--json", "train", "delta-only", "--variant", "b2",
            "--set", "train.delta_only.holdout_tasks=['piqa']")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["train"] == 6 and res["validation"] == 3 and res["holdout_tasks"] == ["piqa"]
    assert "val_cosine" in res["last"] and "val_mean_delta_cosine" in res["last"]
    folder = world.parent / "runs/train/b2"
    meta = json.loads((folder / "predictor.json").read_text())
    assert meta["cache"]["spec"]["layers"] == [-1] and meta["val_ids"] == ["piqa-0", "piqa-1", "piqa-2"]
    assert (folder / "metrics.jsonl").read_text().count("\n") == 20  # log_interval 1, 20 epochs
    r = cli("-p", world, "train", "delta-only", "--variant", "b2")
    assert r.exit_code == 2 and "--force" in r.stderr


def test_b1_and_multitask_train_under_bf16_autocast_with_float32_weights(cli, world, tmp_path):
    """mixed_precision = bf16 (accelerate's bfloat16 autocast): both generators train with finite losses
    and keep float32 weights in their checkpoints."""
    from safetensors.torch import load_file

    for name, args in (("b1", ("train", "delta-only", "--variant", "b1", *B1_FLAGS,
                               "--set", "train.delta_only.mixed_precision=bf16")),
                       ("mt", ("train", "multitask", "--steps", "4", "--set", "train.multitask.mixed_precision=bf16",
                               "--set", "train.multitask.generator=hypernet",
                               "--set", "train.multitask.generator_options={embed_dim = 16, hidden = 32}",
                               "--set", "train.multitask.batch_size=3", "--set", "train.multitask.warmup_steps=1",
                               "--set", "train.multitask.lambda_warmup_steps=1", "--set", "train.multitask.save_interval=4",
                               "--set", "train.multitask.eval_interval=4"))):
        out = tmp_path / name
        r = cli("-p", world, "--json", *args, "--out", out)
        assert r.exit_code == 0, r.stderr
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        losses = [v for x in rows for k, v in x.items() if k.startswith("loss")]
        assert losses and all(math.isfinite(v) for v in losses), name
        weights = load_file(str(out / "final" / "generator.safetensors"))
        assert all(t.dtype == torch.float32 for t in weights.values()), name
