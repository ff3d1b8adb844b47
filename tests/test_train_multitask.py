import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import REPO, TINY_TOML

TASKS = ["arc-easy", "boolq", "piqa"]
TRAIN_TOML = TINY_TOML + """
[train.multitask]
generator = "hyperconv"
learning_rate = 1e-2
batch_size = 4
delta_batch_size = 2
total_steps = 12
warmup_steps = 2
lambda_warmup_steps = 4
condition_prompts = 4
log_interval = 1
save_interval = 4
eval_interval = 6
holdout_tasks = ["piqa"]
generator_options = { channels = 8, latent_height = 4, latent_width = 8, depth = 1 }
max_text_length = 64  # short condition texts: at the default 512 the encoder's passes took half of this file's time
"""


def make_tiny_zoo(root: Path, model, per_task: int = 3, r: int = 4, alpha: float = 8.0) -> Path:
    """A zoo of task-structured random adapters: each task has its own direction plus per-adapter noise."""
    from llgbm_cli.adapters import LoraModule, random_adapter, save_adapter
    from llgbm_cli.data import sample
    from llgbm_cli.zoo_manifest import Zoo, ZooEntry

    zdir = root / "runs" / "zoo"
    zoo = Zoo(zdir)
    for t, task in enumerate(TASKS):
        center = random_adapter(model, r=r, alpha=alpha, seed=100 + t, std=0.2)
        prompts = [rec.prompt for rec in sample(task, "train", 12, seed=t)]
        for k in range(per_task):
            noise = random_adapter(model, r=r, alpha=alpha, seed=1000 + 10 * t + k, std=0.05)
            mods = {n: LoraModule(m.A + noise.modules[n].A, m.B + noise.modules[n].B, m.scaling)
                    for n, m in center.modules.items()}
            aid = f"{task}-{k}"
            save_adapter(zdir / "adapters" / aid, mods, alpha=alpha, base_model="tiny-llama")
            zoo.upsert(ZooEntry(id=aid, path=f"adapters/{aid}", task=task, step=k, seed=k, condition=prompts))
    zoo.save()
    return zdir


@pytest.fixture
def tiny_train_project(tmp_path, tiny):
    p = tmp_path / "llgbm.toml"
    p.write_text(TRAIN_TOML)
    make_tiny_zoo(tmp_path, tiny[0])
    return p


def _train(project: Path, overrides=None, **kw):
    from llgbm_cli.config import load_config
    from llgbm_cli.services.train_multitask import train_multitask

    return train_multitask(load_config(project, overrides or {}), **kw)


def _metrics(folder) -> dict[int, dict]:
    from llgbm_cli.training import read_metrics

    return {m["step"]: m for m in read_metrics(folder)}


def test_training_lowers_losses_and_writes_checkpoints(tiny_train_project):
    res = _train(tiny_train_project)
    out = Path(res.out_dir)
    m = _metrics(out)
    assert sorted(m) == list(range(1, 13))
    keys = {"loss_total", "loss_weights", "loss_delta", "lambda_delta", "delta_cosine_sim", "delta_pred_norm",
            "delta_target_norm", "learning_rate", "grad_norm"}
    assert keys <= set(m[12])
    assert all(math.isfinite(v) for row in m.values() for v in row.values())
    # λ ramps linearly over 4 steps, then stays
    assert [m[s]["lambda_delta"] for s in (1, 3, 5, 12)] == [0.0, 0.5, 1.0, 1.0]
    first = lambda k: sum(m[s][k] for s in (1, 2, 3)) / 3
    last = lambda k: sum(m[s][k] for s in (10, 11, 12)) / 3
    assert last("loss_delta") < first("loss_delta")
    assert last("delta_cosine_sim") > first("delta_cosine_sim")
    assert "heldout_delta_cosine" in m[12] and "heldout_delta_cosine" in m[6]
    # ‖generated delta‖ / ‖teacher delta‖ of the held-out and training adapters: a generator that
    # starts at the teachers' mean adapter moves the model, so the ratio is positive
    assert all(m[12][f"{g}_delta_norm_ratio"] > 0 for g in ("heldout", "train"))
    for s in (4, 8, 12):
        assert (out / "checkpoints" / f"step-{s:06d}" / "generator.safetensors").exists()
    assert (out / "final" / "generator.json").exists() and (out / "llgbm.json").exists()
    prov = json.loads((out / "llgbm.json").read_text())
    assert prov["config"]["train"]["multitask"]["total_steps"] == 12


def test_weight_loss_falls(tiny_train_project):
    # Without the delta term the steps are cheap, so more of them fit in a unit test.
    res = _train(tiny_train_project, {"train.multitask.total_steps": 40, "train.multitask.delta_batch_size": 0,
                                              "train.multitask.eval_interval": 40, "train.multitask.save_interval": 40})
    m = _metrics(res.out_dir)
    assert sum(m[s]["loss_weights"] for s in (38, 39, 40)) < 0.9 * sum(m[s]["loss_weights"] for s in (1, 2, 3))


def test_checkpoint_loads_self_described(tiny_train_project, tiny):
    from llgbm_cli.generators.base import load_generator

    res = _train(tiny_train_project, {"train.multitask.total_steps": 3, "train.multitask.delta_batch_size": 0})
    gen, meta = load_generator(Path(res.final_checkpoint))
    assert meta["base_model"] == "tiny-llama" and meta["lora"]["rank"] == 4 and meta["encoder"] == "minilm-l6"
    assert meta["generator"] == "hyperconv" and meta["condition"]["n_prompts"] == 4
    assert gen.tokenizer.module_names == sorted(meta["tokenizer"]["modules"][i][0] for i in range(4))


def test_refuses_existing_run_without_force(tiny_train_project):
    from llgbm_cli.errors import InputError

    ov = {"train.multitask.total_steps": 3, "train.multitask.delta_batch_size": 0}
    _train(tiny_train_project, ov)
    with pytest.raises(InputError, match="--resume"):
        _train(tiny_train_project, ov)
    _train(tiny_train_project, ov, force=True)


def test_resume_gives_same_next_losses(tiny_train_project, tmp_path):
    res = _train(tiny_train_project, {"train.multitask.total_steps": 8})
    full = _metrics(res.out_dir)
    ckpt = Path(res.out_dir) / "checkpoints" / "step-000004"
    res2 = _train(tiny_train_project, {"train.multitask.total_steps": 8}, resume=ckpt, out_dir=tmp_path / "resumed")
    again = _metrics(res2.out_dir)
    assert res2.resumed_from == 4 and sorted(again) == [5, 6, 7, 8]
    for s in (5, 8):
        for k in ("loss_total", "loss_weights", "loss_delta"):
            assert again[s][k] == pytest.approx(full[s][k], rel=1e-5, abs=1e-7), (s, k)


def test_resume_refuses_changed_config(tiny_train_project):
    from llgbm_cli.errors import InputError

    _train(tiny_train_project, {"train.multitask.total_steps": 4})
    with pytest.raises(InputError, match="lambda_delta"):
        _train(tiny_train_project, {"train.multitask.total_steps": 6, "train.multitask.lambda_delta": 2.0}, resume=True)


def test_resume_of_a_run_that_predates_a_config_key(tiny_train_project):
    """A key the checkpoint's recorded config lacks counts as its default: resuming is allowed while
    the current value is that default, refused (naming the key) once it is not."""
    from llgbm_cli.errors import InputError
    from llgbm_cli.io import PROVENANCE_FILE

    res = _train(tiny_train_project, {"train.multitask.total_steps": 4, "train.multitask.save_interval": 2})
    ckpt = Path(res.out_dir) / "checkpoints" / "step-000002"
    prov = json.loads((ckpt / PROVENANCE_FILE).read_text())
    del prov["config"]["train"]["multitask"]["token_weighting"]  # as a run started before the key existed
    del prov["config"]["lora"]["dropout"]
    (ckpt / PROVENANCE_FILE).write_text(json.dumps(prov))
    with pytest.raises(InputError, match="token_weighting"):
        _train(tiny_train_project, {"train.multitask.total_steps": 4, "train.multitask.save_interval": 2,
                                    "train.multitask.token_weighting": "spread"}, resume=ckpt,
               out_dir=tiny_train_project.parent / "r1")
    res2 = _train(tiny_train_project, {"train.multitask.total_steps": 4, "train.multitask.save_interval": 2},
                  resume=ckpt, out_dir=tiny_train_project.parent / "r2")
    assert res2.resumed_from == 2


def test_nan_stops_cleanly_keeping_last_checkpoint(tiny_train_project, cli):
    # A huge learning rate sends the generator's weights to ~1e30 after one step: the next loss is Inf.
    r = cli("-p", tiny_train_project, "--quiet", "train", "multitask", "--lr", "1e30",
            "--set", "train.multitask.save_interval=1", "--set", "train.multitask.warmup_steps=0")
    assert r.exit_code == 1, r.stdout + r.stderr
    assert "NaN/Inf" in r.stderr and "step-000001" in r.stderr and "Traceback" not in r.stderr
    out = tiny_train_project.parent / "runs" / "train" / "multitask"
    assert (out / "checkpoints" / "step-000001" / "generator.safetensors").exists()
    assert not (out / "final").exists()


def test_generate_output_loads_with_peft(tiny_train_project, tiny, cli, tmp_path):
    import copy

    from peft import PeftModel

    r = cli("-p", tiny_train_project, "--quiet", "train", "multitask", "--steps", "3",
            "--set", "train.multitask.delta_batch_size=0")
    assert r.exit_code == 0, r.stderr
    pf = tmp_path / "prompts.txt"
    pf.write_text("Which gas do plants absorb?\nWhat is the boiling point of water?\n")
    out = tmp_path / "gen"
    r = cli("-p", tiny_train_project, "--json", "generate", "--prompts-file", pf, "--out", out)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["texts"] == 2 and d["modules"] == 4
    model, tok = tiny
    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(out))
    batch = tok(["hello world"], return_tensors="pt")
    with torch.no_grad():
        a, b = pm(**batch).logits, model(**batch).logits
    assert torch.isfinite(a).all() and (a - b).abs().max() > 0
    r = cli("-p", tiny_train_project, "generate", "--prompts-file", pf, "--out", out)
    assert r.exit_code == 2 and "--force" in r.stderr


def test_hypernet_with_description_and_delta_w(tiny_train_project):
    res = _train(tiny_train_project, {"train.multitask.generator": "hypernet", "train.multitask.condition": "description",
                                      "train.multitask.weight_loss": "delta_w", "train.multitask.total_steps": 20,
                                      "train.multitask.delta_batch_size": 0,
                                      "train.multitask.generator_options": {"embed_dim": 16, "hidden": 32}})
    m = _metrics(res.out_dir)
    assert sum(m[s]["loss_weights"] for s in (18, 19, 20)) < sum(m[s]["loss_weights"] for s in (1, 2, 3))


@pytest.mark.slow
def test_two_process_accelerate_launch(tiny_train_project):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # accelerate's --cpu starts one process unless MPI is set up; --multi_gpu with no CUDA gives two gloo processes.
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "-m", "llgbm_cli", "-p", str(tiny_train_project),
           "--quiet", "--json", "train", "multitask", "--steps", "2", "--set", "train.multitask.warmup_steps=1"]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=tiny_train_project.parent, env=env, timeout=240)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [l for l in r.stdout.splitlines() if l.startswith("{")]
    assert len(lines) == 1  # only the main process reports
    assert json.loads(lines[0])["steps"] == 2 and json.loads(lines[0])["processes"] == 2
    m = _metrics(tiny_train_project.parent / "runs" / "train" / "multitask")
    assert sorted(m) == [1, 2]


def test_set_override_is_not_wiped_by_absent_flag(cli, tiny_train_project):
    # `--steps` not given must leave `--set train.multitask.total_steps` in force.
    r = cli("-p", tiny_train_project, "--quiet", "--json", "train", "multitask",
            "--set", "train.multitask.total_steps=2", "--set", "train.multitask.warmup_steps=1")
    assert r.exit_code == 0, r.stderr
    assert json.loads(r.stdout)["steps"] == 2


MODES = {
    "prompts-mean": {},
    "prompts-tokens": {"train.multitask.condition_pooling": "none", "train.multitask.condition_tokens": 12},
    "description": {"train.multitask.condition": "description"},
}


# Every (generator, preset) in every condition mode; the fast suite keeps a covering subset (each
# preset once and each mode with each generator), the rest runs with the slow tests.
_FAST = {("hyperconv", "small", "prompts-tokens"), ("hyperconv", "small", "description"),
         ("hyperconv", "compact", "prompts-tokens"), ("hypernet", "small", "prompts-mean"),
         ("hypernet", "paper", "prompts-tokens"), ("hypernet", "compact", "description")}
_MATRIX = [pytest.param(g, p, m, marks=() if (g, p, m) in _FAST else pytest.mark.slow)
           for g, p in [("hyperconv", "small"), ("hypernet", "small"), ("hypernet", "paper"),
                        ("hyperconv", "compact"), ("hypernet", "compact")] for m in sorted(MODES)]


@pytest.mark.parametrize("generator, preset, mode", _MATRIX)
def test_every_preset_trains_in_every_condition_mode(tiny_train_project, generator, preset, mode):
    from llgbm_cli.generators.base import load_generator
    from llgbm_cli.models import load_encoder
    from llgbm_cli.services.generate import generate_modules

    ov = {"train.multitask.generator": generator, "train.multitask.generator_preset": preset,
          "train.multitask.total_steps": 4, "train.multitask.delta_batch_size": 1, "train.multitask.eval_interval": 4,
          "train.multitask.generator_options": {}, **MODES[mode]}
    res = _train(tiny_train_project, ov)
    m = _metrics(res.out_dir)
    assert sorted(m) == [1, 2, 3, 4] and all(math.isfinite(r["loss_total"]) for r in m.values())
    gen, meta = load_generator(Path(res.final_checkpoint))
    assert meta["generator_options"]["preset"] == preset and gen.num_parameters() == res.parameters
    cond = meta["condition"]
    assert cond["pooling"] == ("none" if mode == "prompts-tokens" else "mean")
    assert gen.cond_tokens == (12 if mode == "prompts-tokens" else 0)
    mods = generate_modules(gen, meta, ["Which gas do plants absorb?"], encoder=load_encoder("minilm-l6", "cpu"))
    assert len(mods) == 4 and all(torch.isfinite(x.A).all() and torch.isfinite(x.B).all() for x in mods.values())


@pytest.mark.parametrize("generator", ["hyperconv", "hypernet"])
def test_small_presets_learn(tiny_train_project, generator):
    res = _train(tiny_train_project, {"train.multitask.generator": generator, "train.multitask.generator_preset": "small",
                                      "train.multitask.total_steps": 30, "train.multitask.delta_batch_size": 0,
                                      "train.multitask.eval_interval": 30, "train.multitask.save_interval": 30,
                                      "train.multitask.generator_options": {}})
    m = _metrics(res.out_dir)
    assert sum(m[s]["loss_weights"] for s in (28, 29, 30)) < 0.9 * sum(m[s]["loss_weights"] for s in (1, 2, 3))


@pytest.mark.parametrize("options", [
    {"train.multitask.weight_loss": "factors", "train.multitask.weight_loss_norm": "l1"},
    {"train.multitask.token_weighting": "spread", "train.multitask.condition_noise": 1e-4,
     "train.multitask.weight_loss_norm": "l1"},
])
def test_weight_loss_options_train(tiny_train_project, options):
    res = _train(tiny_train_project, {"train.multitask.total_steps": 20, "train.multitask.delta_batch_size": 0,
                                      "train.multitask.eval_interval": 20, "train.multitask.save_interval": 20, **options})
    m = _metrics(res.out_dir)
    assert sum(m[s]["loss_weights"] for s in (18, 19, 20)) < sum(m[s]["loss_weights"] for s in (1, 2, 3))


def test_dry_run_and_info_print_parameter_counts(tiny_train_project, cli):
    r = cli("-p", tiny_train_project, "--json", "train", "multitask", "--dry-run",
            "--set", "train.multitask.generator_preset=small", "--set", "train.multitask.condition_pooling=none")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["preset"] == "small" and d["parameters"] > 0 and d["condition_shape"] == [4, 32, 384]
    assert d["stages"][0] == [4, 32, 384] and d["stages"][-1] == d["token_grid"]
    assert not (tiny_train_project.parent / "runs" / "train").exists()  # nothing trained or written
    r = cli("-p", tiny_train_project, "train", "multitask", "--steps", "3", "--set", "train.multitask.delta_batch_size=0",
            "--set", "train.multitask.generator_preset=small", "--set", "train.multitask.condition_pooling=none",
            "--set", "train.multitask.generator_options={}")
    assert r.exit_code == 0, r.stderr
    r = cli("-p", tiny_train_project, "--json", "generate", "--info")
    assert r.exit_code == 0, r.stderr
    info = json.loads(r.stdout)
    assert info["parameters"] == d["parameters"] and info["condition_pooling"] == "none"
    r = cli("-p", tiny_train_project, "generate", "--info")
    assert "parameters" in r.stdout and "(small)" in r.stdout
    r = cli("-p", tiny_train_project, "generate", "some prompt")
    assert r.exit_code == 2 and "--out" in r.stderr
