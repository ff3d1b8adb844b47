"""Nothing lost, nothing executed: the output-folder policy, atomic swaps, umask, pickle-free
training state, adapter validation and NaN-free delta caches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import file_tree
from llgbm_cli.errors import InputError



def _folder(path: Path, files: dict[str, str]) -> Path:
    path.mkdir(parents=True)
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(text)
    return path


# --------------------------------------------------------------------------- output-folder policy


def test_check_output_refusals_hold_even_with_force(tmp_path):
    from llgbm_cli.io import check_output

    work = _folder(tmp_path / "w", {"zoo/zoo.jsonl": "{}\n", "notes/keep.txt": "mine\n"})
    a_file = tmp_path / "f.txt"
    a_file.write_text("x")
    before = file_tree(tmp_path)
    refused = [
        (a_file, "adapter", {}, "is a file"),
        (work, "evaluation", {"roots": [work]}, "work folder"),
        (tmp_path, "evaluation", {"roots": [work]}, "work folder"),  # contains the work folder
        (work / "zoo", "delta cache", {"inputs": [work / "zoo"]}, "overlaps the input"),
        (work / "zoo" / "inner", "adapter", {"inputs": [work / "zoo"]}, "overlaps the input"),  # inside an input
        (work / "notes", "delta cache", {}, "not a delta cache"),
    ]
    for target, kind, kw, text in refused:
        with pytest.raises(InputError, match=text):
            check_output(target, kind, force=True, **kw)
    assert file_tree(tmp_path) == before


def test_check_output_accepts_its_own_kind_and_new_folders(tmp_path):
    from llgbm_cli.io import check_output

    ad = _folder(tmp_path / "ad", {"adapter_config.json": "{}"})
    with pytest.raises(InputError, match="--force"):
        check_output(ad, "adapter")
    assert check_output(ad, "adapter", force=True) == ad.resolve()
    cache = _folder(tmp_path / "cache", {"manifest.json": "{}"})
    assert check_output(cache, "delta cache", incremental=True) == cache.resolve()  # updated in place
    assert check_output(tmp_path / "new" / "out", "evaluation") == (tmp_path / "new" / "out").resolve()
    (tmp_path / "empty").mkdir()
    assert check_output(tmp_path / "empty", "evaluation")


def test_zoo_build_interrupted_before_its_first_teacher_stays_resumable(tmp_path):
    """A build killed before its first teacher leaves only its lock and provenance record: the next
    `zoo build` resumes there; another command's record does not make a folder a zoo."""
    from llgbm_cli.io import check_output

    begun = _folder(tmp_path / "zoo", {".zoo.lock": "123", "llgbm.json": json.dumps({"command": "zoo build"})})
    assert check_output(begun, "zoo", incremental=True) == begun.resolve()
    other = _folder(tmp_path / "ev", {"llgbm.json": json.dumps({"command": "eval"})})
    broken = _folder(tmp_path / "broken", {"llgbm.json": "{not json"})
    for target in (other, broken):
        with pytest.raises(InputError, match="not a zoo"):
            check_output(target, "zoo", force=True, incremental=True)


def test_atomic_dir_interrupted_during_swap_restores_previous_folder(tmp_path, monkeypatch):
    from llgbm_cli import io

    target = _folder(tmp_path / "out", {"adapter_config.json": "{\"r\": 4}", "sub/w.bin": "old weights"})
    before = file_tree(tmp_path)
    real = os.replace
    calls = []

    def flaky(src, dst):  # the first rename (target aside) works, the second (tmp into place) is interrupted
        calls.append((src, dst))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(src, dst)

    with pytest.raises(KeyboardInterrupt):
        with io.atomic_dir(target, force=True) as tmp:
            (tmp / "adapter_config.json").write_text("new")
            monkeypatch.setattr(io.os, "replace", flaky)
    monkeypatch.setattr(io.os, "replace", real)
    assert len(calls) >= 2
    assert file_tree(tmp_path) == before  # same bytes, no .tmp or .old folder left


def test_atomic_dir_permission_denied_is_a_plain_error_and_leaves_nothing(tmp_path, monkeypatch):
    from llgbm_cli import io

    target = _folder(tmp_path / "out", {"adapter_config.json": "old"})
    before = file_tree(tmp_path)
    real = os.replace

    def denied(src, dst):  # moving the new folder into place is refused (once)
        if Path(dst) == target and Path(src).name.endswith(".tmp"):
            raise PermissionError(13, "Permission denied", str(dst))
        return real(src, dst)

    monkeypatch.setattr(io.os, "replace", denied)
    with pytest.raises(InputError, match="permission denied"):
        with io.atomic_dir(target, force=True) as tmp:
            (tmp / "adapter_config.json").write_text("new")
    monkeypatch.setattr(io.os, "replace", real)
    assert file_tree(tmp_path) == before


@pytest.mark.parametrize("mask,dir_mode,file_mode", [(0o022, 0o755, 0o644), (0o002, 0o775, 0o664), (0o077, 0o700, 0o600)])
def test_outputs_respect_the_umask(tmp_path, mask, dir_mode, file_mode):
    from llgbm_cli.io import atomic_dir, atomic_write_json

    old = os.umask(mask)
    try:
        with atomic_dir(tmp_path / "out") as tmp:
            atomic_write_json(tmp / "a.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "out").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "out" / "a.json").stat().st_mode & 0o777 == file_mode


class _OneProcess:
    is_main_process = True

    def wait_for_everyone(self):
        pass


@pytest.mark.parametrize("error", [KeyboardInterrupt, RuntimeError])
def test_forced_training_run_interrupted_puts_the_earlier_run_back(tmp_path, error):
    # the trainers' own sequence (training/trainer.py): start_run_folder, then restore_run_folder
    # on any failure or Ctrl-C, drop_old_run only after success
    from llgbm_cli.training.world import drop_old_run, restore_run_folder, start_run_folder

    out = _folder(tmp_path / "train" / "multitask",
                  {"metrics.jsonl": '{"step": 1}\n', "final/generator.json": "{}", "final/generator.safetensors": "w"})
    before = file_tree(tmp_path)
    with pytest.raises(error):
        old = start_run_folder(out, _OneProcess(), force=True, resume=False)
        try:
            assert not (out / "final").exists()  # the new run starts in an empty folder
            (out / "metrics.jsonl").write_text("partial\n")
            raise error()
        except BaseException:
            restore_run_folder(out, old)
            raise
    assert file_tree(tmp_path) == before
    old = start_run_folder(out, _OneProcess(), force=True, resume=False)
    (out / "metrics.jsonl").write_text("new\n")
    drop_old_run(old)
    assert sorted(p.name for p in tmp_path.joinpath("train").iterdir()) == ["multitask"]
    assert (out / "metrics.jsonl").read_text() == "new\n" and not (out / "final").exists()


# --------------------------------------------------------------------------- no pickle


class _Payload:
    """Unpickling this object creates ``marker``: proof that code ran."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _tiny_loop(tmp_path, total_steps=4, save_interval=2, resume_from=None, out="run"):
    from llgbm_cli.training import LoopConfig, make_accelerator, run_training

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    x, y = torch.randn(8, 3), torch.randn(8, 2)

    def step_fn(step, m):
        return {"loss": torch.nn.functional.mse_loss(m(x), y)}

    (tmp_path / out).mkdir(exist_ok=True)
    cfg = LoopConfig(total_steps=total_steps, learning_rate=0.05, warmup_steps=1, save_interval=save_interval,
                     log_interval=1, eval_interval=100)
    res = run_training(model, step_fn, cfg, tmp_path / out, accelerator=make_accelerator("no", "cpu"),
                       save_meta=lambda folder, net, step: (folder / "generator.json").write_text("{}"),
                       resume_from=resume_from)
    return res, model


def test_training_state_is_saved_without_pickle_and_resumes_exactly(tmp_path):
    from safetensors.torch import load_file

    res, full = _tiny_loop(tmp_path)
    ck = tmp_path / "run" / "checkpoints" / "step-000002"
    assert sorted(p.name for p in ck.iterdir()) == ["generator.json", "generator.safetensors", "llgbm.json",
                                                    "trainer_state.json", "trainer_state.safetensors"]
    assert json.loads((ck / "trainer_state.json").read_text())["step"] == 2
    _, resumed = _tiny_loop(tmp_path, resume_from=ck, out="resumed")
    final_full = load_file(str(tmp_path / "run" / "final" / "generator.safetensors"))
    final_resumed = load_file(str(tmp_path / "resumed" / "final" / "generator.safetensors"))
    for k in final_full:
        assert torch.equal(final_full[k], final_resumed[k]), k


def test_resume_never_runs_a_pickled_payload(tmp_path):
    from llgbm_cli.training import load_trainer_state

    _tiny_loop(tmp_path, total_steps=2, save_interval=1)
    ck = tmp_path / "run" / "checkpoints" / "step-000001"
    for f in ("trainer_state.json", "trainer_state.safetensors"):
        (ck / f).unlink()
    # the payload is live: a full unpickle of the same bytes does create its marker
    probe = tmp_path / "probe.pt"
    torch.save({"x": _Payload(str(tmp_path / "proof"))}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "proof").exists()
    marker = tmp_path / "pwned"
    torch.save({"step": 1, "optimizer": _Payload(str(marker)), "scheduler": {}, "torch_rng": torch.zeros(1)},
               ck / "trainer_state.pt")
    with pytest.raises(InputError, match="trainer_state.pt"):
        load_trainer_state(ck)
    with pytest.raises(InputError, match="trainer_state.pt"):
        _tiny_loop(tmp_path, total_steps=2, resume_from=ck, out="again")
    assert not marker.exists()


def test_corrupt_training_state_names_the_checkpoint(tmp_path):
    from llgbm_cli.training import load_trainer_state

    _tiny_loop(tmp_path, total_steps=2, save_interval=1)
    ck = tmp_path / "run" / "checkpoints" / "step-000001"
    (ck / "trainer_state.safetensors").write_bytes(b"\x00" * 9)
    with pytest.raises(InputError, match="step-000001"):
        load_trainer_state(ck)


# --------------------------------------------------------------------------- adapters


@pytest.fixture
def good_adapter(tiny, tmp_path):
    from llgbm_cli.adapters import random_adapter, save_adapter

    return save_adapter(tmp_path / "ad", random_adapter(tiny[0], r=4, alpha=8.0, seed=1))


def _edit_config(folder: Path, **changes) -> None:
    cfg = json.loads((folder / "adapter_config.json").read_text())
    cfg.update(changes)
    (folder / "adapter_config.json").write_text(json.dumps(cfg))


@pytest.mark.parametrize("changes,text", [
    ({"r": 8}, "rank 8 but module"),
    ({"rank_pattern": {"q_proj": 2}}, "`rank_pattern` says rank 2"),
    ({"lora_alpha": float("nan")}, "lora_alpha"),
    ({"lora_alpha": float("inf")}, "lora_alpha"),
    ({"alpha_pattern": {"v_proj": -1}}, "alpha_pattern"),
])
def test_adapter_config_must_agree_with_its_tensors(good_adapter, changes, text):
    from llgbm_cli.adapters import load_adapter

    _edit_config(good_adapter, **changes)
    with pytest.raises(InputError, match=text):
        load_adapter(good_adapter)


def _poison(folder: Path, value: float) -> str:
    from safetensors.torch import load_file, save_file

    wf = folder / "adapter_model.safetensors"
    ts = load_file(str(wf))
    key = sorted(k for k in ts if "lora_B" in k)[0]
    ts[key][...] = value
    save_file(ts, str(wf), metadata={"format": "pt"})
    return key.split("base_model.model.", 1)[-1].rsplit(".lora_B", 1)[0]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_adapter_is_refused_with_the_module_named(good_adapter, value):
    from llgbm_cli.adapters import load_adapter

    module = _poison(good_adapter, value)
    with pytest.raises(InputError, match=f"module {module}: lora_B hold NaN or Inf"):
        load_adapter(good_adapter)


def test_cache_deltas_never_stores_a_non_finite_row(tiny, tiny_project, cli):
    from llgbm_cli.adapters import random_adapter, save_adapter
    from llgbm_cli.deltas.cache import DeltaCache
    from llgbm_cli.zoo import Zoo, ZooEntry

    w = tiny_project.parent / "runs"
    zoo = Zoo(w / "zoo")
    for k, name in enumerate(["ok-0", "ok-1", "nan", "huge"]):
        save_adapter(w / "zoo" / "adapters" / name, random_adapter(tiny[0], r=4, alpha=8.0, seed=k))
        zoo.upsert(ZooEntry(id=name, path=f"adapters/{name}", task="arc-easy", step=k, seed=k, condition=["Q?"]))
    zoo.save()
    _poison(w / "zoo" / "adapters" / "nan", float("nan"))
    _poison(w / "zoo" / "adapters" / "huge", 3e38)  # finite weights, but the hidden states overflow
    r = cli("-p", tiny_project, "--json", "cache-deltas")
    assert r.exit_code == 1, r.stderr
    doc = json.loads(r.stdout)  # the result, the one object on stdout
    assert sorted(f["id"] for f in doc["failed"]) == ["huge", "nan"]
    cache = DeltaCache.open(w / "deltas")
    assert sorted(cache.ids) == ["ok-0", "ok-1"]
    assert bool(torch.isfinite(cache.matrix()).all())


# --------------------------------------------------------------------------- generator options


@pytest.mark.parametrize("options,key", [({"channels": 0}, "channels"), ({"depth": -1}, "depth"),
                                         ({"kernel": 4}, "kernel"), ({"latent_height": 2.5}, "latent_height"),
                                         ({"scaling": float("nan")}, "scaling")])
def test_impossible_generator_option_is_a_plain_error(tiny, options, key):
    from llgbm_cli.generators import build_generator
    from llgbm_cli.lora.tokenizer import LoraTokenizer

    tok = LoraTokenizer.from_model(tiny[0], ["q_proj", "v_proj"], 4)
    with pytest.raises(InputError, match=f"generator_options.{key}"):
        build_generator("hyperconv", tok, 8, options)


# --------------------------------------------------------------------------- quiet means quiet


@pytest.mark.parametrize("flag,disabled", [("--quiet", True), ("--json", True), (None, False)])
def test_quiet_turns_off_the_loaders_own_progress_bars(tmp_path, flag, disabled):
    """transformers draws "Loading weights" through huggingface_hub's switch, read at import time."""
    import subprocess
    import sys

    code = ("from llgbm_cli.app import main\n"
            "try:\n"
            f"    main({[a for a in (flag, 'config', 'workdir') if a]!r})\n"
            "except SystemExit:\n"
            "    pass\n"
            "from huggingface_hub.utils import are_progress_bars_disabled\n"
            "print('DISABLED' if are_progress_bars_disabled() else 'SHOWN')\n")
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=120)
    assert r.stdout.strip().splitlines()[-1] == ("DISABLED" if disabled else "SHOWN"), r.stdout + r.stderr


def test_os_errors_on_user_paths_map_to_exit_2_naming_the_path():
    from llgbm_cli.errors import as_input_error

    e = as_input_error(PermissionError(13, "Permission denied", "/shared/out"))
    assert e.exit_code == 2 and e.message == "/shared/out: permission denied"
    e = as_input_error(IsADirectoryError(21, "Is a directory", "/data/prompts"))
    assert e.exit_code == 2 and "/data/prompts" in e.message
    e = as_input_error(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"))
    assert e.exit_code == 2 and "UTF-8" in e.message
    assert as_input_error(ValueError("a bug")) is None  # a real internal error stays one


# --------------------------------------------------------------------------- corrupt checkpoints


@pytest.mark.parametrize("damage", ["garbage", "other-shape"])
def test_corrupt_generator_checkpoint_names_its_file(tiny, tmp_path, damage):
    from safetensors.torch import save_file

    from llgbm_cli.generators import build_generator
    from llgbm_cli.generators.base import load_generator, save_generator
    from llgbm_cli.lora.tokenizer import LoraTokenizer

    tok = LoraTokenizer.from_model(tiny[0], ["q_proj", "v_proj"], 4)
    gen = build_generator("hypernet", tok, 8, {"embed_dim": 8, "hidden": 16})
    (tmp_path / "ck").mkdir()
    save_generator(tmp_path / "ck", gen, {"step": 1})
    load_generator(tmp_path / "ck")  # intact, it loads
    wf = tmp_path / "ck" / "generator.safetensors"
    if damage == "garbage":
        wf.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    else:
        save_file({"x": torch.zeros(3)}, str(wf))
    with pytest.raises(InputError, match="generator.safetensors"):
        load_generator(tmp_path / "ck")


def test_corrupt_predictor_checkpoint_names_its_file(tmp_path):
    from llgbm_cli.generators.predictor import DeltaPredictor, load_predictor, save_predictor

    (tmp_path / "p").mkdir()
    save_predictor(tmp_path / "p", DeltaPredictor(4, 3, hidden=8), {})
    load_predictor(tmp_path / "p")
    (tmp_path / "p" / "predictor.safetensors").write_bytes(b"garbage")
    with pytest.raises(InputError, match="predictor.safetensors"):
        load_predictor(tmp_path / "p")
