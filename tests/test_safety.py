"""Nothing lost, nothing executed: the output-folder policy, atomic swaps, umask, pickle-free
training state, adapter validation and NaN-free delta caches."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from conftest import TINY_TOML, file_tree
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
    from llgbm_cli.zoo_manifest import Zoo, ZooEntry

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


# --------------------------------------------------------------------------- exit codes and usage errors


def _lines(text: str) -> list[str]:
    return [l for l in text.splitlines() if l.strip()]


@pytest.mark.parametrize("args,code", [
    (["config", "show", "-p", "{tmp}/nope.toml"], 2),  # bad input
    (["merge", "{tmp}/a", "{tmp}/b", "--out", "{tmp}/m"], 2),
])
def test_verbose_adds_the_traceback_and_keeps_the_exit_code_and_error_line(cli, tmp_path, args, code):
    argv = [a.format(tmp=tmp_path) for a in args]
    quiet = cli(*argv)
    loud = cli("-v", *argv)
    assert quiet.exit_code == loud.exit_code == code
    assert "Traceback" not in quiet.stderr and "Traceback" in loud.stderr
    assert _lines(quiet.stderr)[0].startswith("error: ") and _lines(quiet.stderr)[0] in _lines(loud.stderr)
    doc = json.loads(cli("-v", "--json", *argv).stdout)
    assert doc["exit_code"] == code and doc["error"] == _lines(quiet.stderr)[0][len("error: "):]


@pytest.mark.parametrize("args,text", [
    (["nosuchcommand"], "No such command 'nosuchcommand'"),
    (["merge", "--bogus", "x"], "No such option: --bogus"),
    (["config", "validate", "a", "b"], "Got unexpected extra argument"),
    (["zoo", "add", "--task", "boolq"], "Missing argument"),
])
def test_usage_errors_are_one_error_line_and_a_json_object(cli, args, text):
    r = cli(*args)
    lines = _lines(r.stderr)
    assert r.exit_code == 2 and r.stdout == ""
    assert len(lines) == 2 and lines[0].startswith("error: ") and text in lines[0] and lines[1].startswith("hint: ")
    j = cli("--json", *args)
    assert j.exit_code == 2
    assert json.loads(j.stdout) == {"error": lines[0][len("error: "):], "hint": lines[1][len("hint: "):],
                                    "exit_code": 2}


def test_malformed_index_ids_file_names_the_file(tmp_path):
    import numpy as np

    from llgbm_cli.index import DeltaIndex

    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    DeltaIndex.build(x, [f"a{i}" for i in range(6)]).save(tmp_path / "ix")
    for bad in ([1, 2], {"ids": 3}, {"ids": [1, 2, 3, 4, 5, 6]}, {"ids": [f"a{i}" for i in range(6)], "tasks": 5}):
        (tmp_path / "ix" / "ids.json").write_text(json.dumps(bad))
        with pytest.raises(InputError, match="ids.json: malformed"):
            DeltaIndex.load(tmp_path / "ix")


@pytest.mark.parametrize("key,value,text", [
    ("train.multitask.learning_rate", float("inf"), "finite number"),
    ("zoo.learning_rate", float("nan"), "finite number"),
    ("merge.energy", float("inf"), "finite number"),
    ("ablation.lambda_delta", [-1.0], "-1.0 is not a valid train.multitask.lambda_delta"),
    ("ablation.probe_count", [0], "0 is not a valid probes.count"),
    ("ablation.interaction_loss", ["l3"], "'l3' is not a valid train.multitask.delta_loss_type"),
    ("ablation.total_steps", 2, "must be above train.multitask.warmup_steps"),  # 100 by default
])
def test_config_refuses_non_finite_numbers_and_impossible_ablation_values_at_load(tmp_path, key, value, text):
    from llgbm_cli.config import load_config
    from llgbm_cli.errors import ConfigError

    (tmp_path / "llgbm.toml").write_text("")
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path / "llgbm.toml", {key: value})
    assert key in e.value.message and text in e.value.message, e.value.message


def test_last_layers_beyond_the_model_is_refused_naming_the_key(tiny):
    from llgbm_cli.adapters import target_linears
    from llgbm_cli.lora.tokenizer import LoraTokenizer

    assert len(target_linears(tiny[0], ["q_proj"], 2)) == 2
    with pytest.raises(InputError, match="lora.last_layers: 50 is more than the base model's 2 layers"):
        LoraTokenizer.from_model(tiny[0], ["q_proj", "v_proj"], 4, 50)


def test_data_check_reports_an_empty_task_file(cli, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "llgbm.toml").write_text('[tasks.emp]\npath = "empty.jsonl"\nkind = "multiple_choice"\n')
    r = cli("-p", tmp_path / "llgbm.toml", "data", "check", "emp")
    assert r.exit_code == 1
    assert "the train split has no records" in r.stdout and "the test split has no records" in r.stdout


# --------------------------------------------------------------------------- one writer, nothing left behind


def _dead_pid() -> int:
    import subprocess
    import sys

    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_killed_writers_temporary_folders_go_and_its_set_aside_folder_comes_back(tmp_path):
    from llgbm_cli.io import atomic_dir

    dead = _dead_pid()
    out = tmp_path / "evref"
    _folder(tmp_path / f".evref.{dead}.abc123.tmp", {"results.json": "half"})
    _folder(tmp_path / f".evref.{dead}.def456.tmp", {})
    _folder(tmp_path / f".evref.old-{dead}", {"adapter_config.json": "the earlier output"})
    live = _folder(tmp_path / f".evref.{os.getpid()}.keep.tmp", {})  # a live writer's: untouched
    with pytest.raises(InputError, match="already exists"):  # the earlier output is back, so not replaced
        with atomic_dir(out):
            pass
    assert (out / "adapter_config.json").read_text() == "the earlier output"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["evref", live.name])
    # a set-aside folder whose replacement did finish is removed instead
    _folder(tmp_path / f".evref.old-{dead}", {"adapter_config.json": "older"})
    with atomic_dir(out, force=True) as tmp:
        (tmp / "adapter_config.json").write_text("new")
    assert (out / "adapter_config.json").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["evref", live.name])


def test_every_safetensors_file_follows_the_umask(tmp_path, tiny):
    from llgbm_cli.adapters import random_adapter, save_adapter
    from llgbm_cli.generators.predictor import DeltaPredictor, save_predictor

    old = os.umask(0o022)
    try:
        save_adapter(tmp_path / "ad", random_adapter(tiny[0], r=2, seed=0))
        (tmp_path / "p").mkdir()
        save_predictor(tmp_path / "p", DeltaPredictor(4, 3, hidden=8), {})
    finally:
        os.umask(old)
    files = list(tmp_path.rglob("*.safetensors"))
    assert len(files) == 2 and all(f.stat().st_mode & 0o777 == 0o644 for f in files), files


# --------------------------------------------------------------------------- names never become paths


def test_child_paths_stay_inside_their_parent(tmp_path):
    from llgbm_cli.names import check_name, child

    (tmp_path / "zoo").mkdir()
    assert child(tmp_path / "zoo", "boolq-s00004") == tmp_path / "zoo" / "boolq-s00004"
    (tmp_path / "zoo" / "link").symlink_to(tmp_path)
    for bad in ("../x", "../../../../VICTIM", "/etc", "link/escape", ".", ""):
        with pytest.raises(InputError, match="leads outside"):
            child(tmp_path / "zoo", bad)
    for bad in ("../x", "a/b", ".hidden", "-flag", "a b", "", "x" * 200, None):
        with pytest.raises(InputError, match="not a valid name"):
            check_name(bad, "tasks.x")
    assert check_name("lambda_delta=0.1+delta_loss_type=mse", "cell")


@pytest.mark.parametrize("name", ["../../../../VICTIM", "a/b", ".hidden"])
def test_a_task_name_that_is_a_path_is_refused_where_it_enters(cli, tmp_path, name):
    (tmp_path / "VICTIM").mkdir()
    (tmp_path / "VICTIM" / "keep.txt").write_text("an unrelated folder\n")
    proj = tmp_path / "p" / "q" / "r" / "s"
    proj.mkdir(parents=True)
    (proj / "t.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n' * 4)
    (proj / "llgbm.toml").write_text(TINY_TOML.replace('tasks = ["arc-easy", "boolq"]', f'tasks = ["{name}"]')
                                     + f'\n[tasks."{name}"]\npath = "t.jsonl"\n')
    before = file_tree(tmp_path)
    for args in (["zoo", "build", "--tasks", name], ["config", "validate"], ["eval", "--task", name]):
        r = cli("-p", proj / "llgbm.toml", *args)
        assert r.exit_code == 2, r.stderr
        assert f"tasks.{name}: {name!r} is not a valid name" in r.stderr
    assert file_tree(tmp_path) == before


def test_zoo_add_refuses_an_unsafe_id_and_the_same_adapter_twice(cli, tiny_project, tiny):
    from llgbm_cli.adapters import random_adapter, save_adapter

    root = tiny_project.parent
    ad = random_adapter(tiny[0], r=4, alpha=8.0, seed=0)
    save_adapter(root / "x" / "good", ad)
    save_adapter(root / "y" / "good", ad)
    save_adapter(root / "x" / "has space", ad)
    before = file_tree(root)
    for paths, text in (([root / "x" / "good", root / "x" / "good"], "also that of"),
                        ([root / "x" / "good", root / "y" / "good"], "another folder"),
                        ([root / "x" / "has space"], "is not a valid name")):
        r = cli("-p", tiny_project, "zoo", "add", *paths, "--task", "boolq")
        assert r.exit_code == 2 and text in r.stderr, r.stderr
    assert file_tree(root) == before


def test_merge_refuses_one_adapter_and_the_same_adapter_twice(cli, tiny_project, tiny):
    from llgbm_cli.adapters import random_adapter, save_adapter

    root = tiny_project.parent
    a = save_adapter(root / "a", random_adapter(tiny[0], r=4, seed=0))
    save_adapter(root / "b", random_adapter(tiny[0], r=4, seed=1))
    (root / "alias").symlink_to(a)
    before = file_tree(root)
    for args, text in (([a], "at least 2 different adapters, 1 given"),
                       ([a, a], "twice"),
                       ([a, root / "alias", root / "b"], "the same adapter")):
        r = cli("-p", tiny_project, "merge", *args, "--out", root / "m")
        assert r.exit_code == 2 and text in r.stderr, r.stderr
    assert file_tree(root) == before
    from llgbm_cli.io import output_lock

    with output_lock(root / "m", "a merged adapter"):  # another merge is writing it
        r = cli("-p", tiny_project, "merge", a, root / "b", "--out", root / "m")
    assert r.exit_code == 1 and "another llgbm process is writing" in r.stderr and not (root / "m").exists()
    assert cli("-p", tiny_project, "merge", a, root / "b", "--out", root / "m").exit_code == 0
    assert not list(root.glob(".m.*"))  # no lock or temporary file left


# --------------------------------------------------------------------------- a one-task zoo, built once


@pytest.fixture(scope="module")
def zoo1(tiny, tmp_path_factory):
    """A one-task zoo (boolq, 2 checkpoints) whose teachers adapt the last layer only."""
    from llgbm_cli.config import load_config
    from llgbm_cli.services.zoo import build_zoo

    root = tmp_path_factory.mktemp("zoo1")
    (root / "llgbm.toml").write_text(TINY_TOML.replace('tasks = ["arc-easy", "boolq"]', 'tasks = ["boolq"]')
                                     .replace("[lora]\n", "[lora]\nlast_layers = 1\n"))
    build_zoo(load_config(root / "llgbm.toml"), model_and_tokenizer=tiny)
    return root


def _copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_a_pickle_that_runs_code_in_the_zoo_state_is_refused_naming_the_file(zoo1, cli, tmp_path):
    import shutil

    root = _copy(zoo1, tmp_path / "p")
    zdir = root / "runs" / "zoo"
    shutil.rmtree(zdir / "adapters" / "boolq-s00006")  # the next build resumes from the first checkpoint
    state = zdir / ".state" / "boolq-s00004.pt"
    torch.save({"A": _Payload(str(tmp_path / "pwned"))}, state)
    r = cli("-p", root / "llgbm.toml", "zoo", "build")
    assert r.exit_code == 2, r.stderr
    assert "boolq-s00004.pt: refused to load" in r.stderr and "internal error" not in r.stderr
    assert not (tmp_path / "pwned").exists()


def test_zoo_build_force_interrupted_keeps_the_tasks_earlier_build(zoo1, tiny, tmp_path, monkeypatch):
    from llgbm_cli.config import load_config
    from llgbm_cli.services import zoo as svc

    root = _copy(zoo1, tmp_path / "p")
    zdir = root / "runs" / "zoo"

    def zoo_tree():
        return {k: v for k, v in file_tree(zdir).items() if k != "llgbm.json" and not k.startswith(".zoo.lock")}

    before = zoo_tree()
    specs_before = json.loads((zdir / "llgbm.json").read_text())["task_build_specs"]
    real = svc._build_task

    def interrupted_after_one_checkpoint(resolved, zoo, base, unit, spec, done, progress, record):
        def rec(entry):
            record(entry)
            raise KeyboardInterrupt

        return real(resolved, zoo, base, unit, spec, done, progress, rec)

    monkeypatch.setattr(svc, "_build_task", interrupted_after_one_checkpoint)
    resolved = load_config(root / "llgbm.toml", {"zoo.learning_rate": 5e-3})
    with pytest.raises(KeyboardInterrupt):
        svc.build_zoo(resolved, tasks=["boolq"], force=True, model_and_tokenizer=tiny)
    assert zoo_tree() == before  # rows, adapters and training states of the earlier build
    assert json.loads((zdir / "llgbm.json").read_text())["task_build_specs"] == specs_before

    # killed outright (no chance to put anything back): the next build does it
    monkeypatch.setattr(svc, "_restore_built", lambda folder, aside: None)
    with pytest.raises(KeyboardInterrupt):
        svc.build_zoo(resolved, tasks=["boolq"], force=True, model_and_tokenizer=tiny)
    assert [p.name for p in (zdir / ".state").glob("*.forced")]
    monkeypatch.undo()
    res = svc.build_zoo(load_config(root / "llgbm.toml"), model_and_tokenizer=None)
    assert sum(len(t.built) for t in res.tasks) == 0  # the earlier build is back, complete
    assert zoo_tree() == before


def test_zoo_build_force_never_deletes_a_folder_outside_the_zoo(zoo1, tiny, tmp_path):
    from llgbm_cli.config import load_config
    from llgbm_cli.services.zoo import build_zoo
    from llgbm_cli.zoo_manifest import Zoo, ZooEntry

    root = _copy(zoo1, tmp_path / "p")
    outside = _folder(tmp_path / "mine", {"keep.txt": "not the zoo's"})
    zoo = Zoo.load(root / "runs" / "zoo")
    zoo.upsert(ZooEntry(id="boolq-s00099", path=str(outside), task="boolq", step=99))  # an edited manifest row
    zoo.save()
    build_zoo(load_config(root / "llgbm.toml"), tasks=["boolq"], force=True, model_and_tokenizer=tiny)
    assert (outside / "keep.txt").read_text() == "not the zoo's"


# --------------------------------------------------------------------------- PEFT-clean adapters


def _peft_load_clean(model, folder: Path):
    """PeftModel.from_pretrained with every warning and log record caught: (peft model, problems)."""
    import copy
    import logging
    import warnings

    from peft import PeftModel

    records = []

    class Catch(logging.Handler):
        def emit(self, record):
            if record.levelno >= logging.WARNING:
                records.append(record.getMessage())

    handler = Catch()
    loggers = [logging.getLogger(n) for n in ("peft", "transformers", "")]
    for lg in loggers:
        lg.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as ws:
            warnings.simplefilter("always")
            pm = PeftModel.from_pretrained(copy.deepcopy(model), str(folder))
    finally:
        for lg in loggers:
            lg.removeHandler(handler)
    # transformers' own deprecation notices about itself are not about the adapter
    problems = [str(w.message) for w in ws if not issubclass(w.category, (FutureWarning, DeprecationWarning))]
    return pm, problems + records


def test_every_kind_of_llgbm_adapter_loads_in_peft_without_a_warning(zoo1, tiny, tmp_path):
    from llgbm_cli.adapters import LoraModule, load_adapter, save_adapter
    from llgbm_cli.generators import build_generator
    from llgbm_cli.lora.tokenizer import LoraTokenizer
    from llgbm_cli.models import base_model_reference
    from llgbm_cli.services.merge import merge_to_folder
    from llgbm_cli.zoo_manifest import Zoo

    model = tiny[0]
    zoo = Zoo.load(zoo1 / "runs" / "zoo")
    teachers = [zoo.path_of(e) for e in zoo.entries]
    # generated: a generator's output for one condition, saved as `llgbm generate` saves it
    layout = LoraTokenizer.from_model(model, ["q_proj", "v_proj"], 4, 1)
    gen = build_generator("hypernet", layout, 8, {"embed_dim": 8, "hidden": 16})
    with torch.no_grad():
        mods = gen(torch.randn(1, 4, 8)).adapter_modules(0)
    save_adapter(tmp_path / "generated", mods, alpha=8.0, base_model="tiny-llama")
    # merged with uneven ranks: one teacher at rank 2 beside the other at rank 4, and a TIES merge
    t0 = load_adapter(teachers[0])
    low = {n: LoraModule(m.A[:2], m.B[:, :2], m.scaling) for n, m in t0.modules.items()}
    save_adapter(tmp_path / "rank2", low, alpha=4.0, base_model="tiny-llama")
    res = merge_to_folder([teachers[1], tmp_path / "rank2"], tmp_path / "merged", "ties", energy=0.9999)
    assert res.rank_range[0] < res.rank_range[1], res.rank_range  # modules of different ranks
    kinds = {"teacher": teachers[0], "generated": tmp_path / "generated", "merged": tmp_path / "merged"}
    for kind, folder in kinds.items():
        cfg = json.loads((folder / "adapter_config.json").read_text())
        assert cfg["layers_to_transform"] == [1] and cfg["layers_pattern"] == "layers", kind
        assert cfg["base_model_name_or_path"] == base_model_reference("tiny-llama")
        assert Path(cfg["base_model_name_or_path"], "config.json").exists()
        ad = load_adapter(folder)
        assert ad.base_model == "tiny-llama"  # llgbm still sees the built-in's name
        pm, problems = _peft_load_clean(model, folder)
        assert problems == [], (kind, problems)
        lora = {n.split("base_model.model.", 1)[-1] for n, m in pm.named_modules() if hasattr(m, "lora_A")}
        assert lora == set(ad.modules), kind  # LoRA on the adapted layers only
        if kind == "merged":
            ranks = {n: pm.get_submodule(f"base_model.model.{n}").lora_A["default"].weight.shape[0] for n in lora}
            assert ranks == {n: m.rank for n, m in ad.modules.items()}
    # an adapter saved before layers_to_transform was written still loads in llgbm
    old = _copy(kinds["teacher"], tmp_path / "old")
    cfg = json.loads((old / "adapter_config.json").read_text())
    cfg.update(layers_to_transform=None, layers_pattern=None, base_model_name_or_path="tiny-llama")
    (old / "adapter_config.json").write_text(json.dumps(cfg))
    assert load_adapter(old).base_model == "tiny-llama" and set(load_adapter(old).modules) == set(load_adapter(teachers[0]).modules)


def test_an_adapter_alone_loads_with_auto_peft_model(tiny, tmp_path):
    from peft import AutoPeftModelForCausalLM

    from llgbm_cli.adapters import random_adapter, save_adapter

    save_adapter(tmp_path / "ad", random_adapter(tiny[0], r=2, seed=0, last_layers=1), base_model="tiny-llama")
    pm = AutoPeftModelForCausalLM.from_pretrained(str(tmp_path / "ad"))
    assert sum(1 for n, _ in pm.named_modules() if n.endswith("lora_A")) == 2  # q and v of the last layer


def test_adapter_config_is_deterministic(tiny, tmp_path):
    from llgbm_cli.adapters import random_adapter, save_adapter

    for d in ("a", "b"):
        save_adapter(tmp_path / d, random_adapter(tiny[0], r=2, seed=0, last_layers=1), base_model="tiny-llama")
    assert (tmp_path / "a" / "adapter_config.json").read_bytes() == (tmp_path / "b" / "adapter_config.json").read_bytes()


# --------------------------------------------------------------------------- generator training runs


@pytest.fixture
def train_project(tmp_path, tiny):
    """A project with a small zoo and a 4-step multitask run configuration (checkpoints at 2 and 4)."""
    from test_train_multitask import TRAIN_TOML, make_tiny_zoo

    p = tmp_path / "llgbm.toml"
    p.write_text(TRAIN_TOML.replace("total_steps = 12", "total_steps = 4").replace("save_interval = 4", "save_interval = 2")
                 .replace("delta_batch_size = 2", "delta_batch_size = 0"))
    make_tiny_zoo(tmp_path, tiny[0], per_task=2)
    return p


def _run_folder(path: Path, *, finished: bool = True, command: str = "train multitask") -> Path:
    files = {"llgbm.json": json.dumps({"command": command}), "metrics.jsonl": '{"step": 1}\n',
             "checkpoints/step-000002/generator.json": "{}"}
    if finished:
        files["final/generator.json"] = "{}"
    return _folder(path, files)


def test_a_b2_predictor_folder_is_never_taken_for_a_training_run(cli, train_project):
    from llgbm_cli.io import check_output

    w = train_project.parent / "runs"
    b2 = _folder(w / "train" / "b2", {"predictor.json": "{}", "predictor.safetensors": "w", "metrics.jsonl": "{}\n",
                                      "llgbm.json": json.dumps({"command": "train delta-only --variant b2"})})
    b1 = _run_folder(w / "train" / "b1", command="train delta-only --variant b1")
    before = file_tree(w / "train")
    assert check_output(b2, "delta predictor", force=True) == b2.resolve()
    for args, text in ((["train", "multitask", "--out", b2, "--force"], "is a delta predictor"),
                       (["train", "delta-only", "--variant", "b1", "--out", b2, "--force"], "is a delta predictor"),
                       (["train", "multitask", "--out", b1, "--force"], "is a B1 run"),
                       (["train", "delta-only", "--variant", "b2", "--out", b1, "--force"], "is a B1 run")):
        r = cli("-p", train_project, *args)
        assert r.exit_code == 2 and text in r.stderr and "even with --force" in r.stderr, r.stderr
    assert file_tree(w / "train") == before


def test_resume_never_overwrites_a_later_checkpoint(cli, train_project):
    from llgbm_cli.config import load_config
    from llgbm_cli.services.train_multitask import train_multitask

    assert cli("-p", train_project, "train", "multitask").exit_code == 0
    run = train_project.parent / "runs" / "train" / "multitask"
    before = file_tree(run)
    r = cli("-p", train_project, "train", "multitask", "--resume", "--steps", "3")
    assert r.exit_code == 2 and "step 4, past the 3 steps" in r.stderr, r.stderr
    with pytest.raises(InputError, match="later checkpoints \\(step-000004\\)"):
        train_multitask(load_config(train_project), resume=run / "checkpoints" / "step-000002")
    assert file_tree(run) == before


def test_a_second_run_into_a_run_being_written_is_refused(cli, train_project):
    from llgbm_cli.io import FileLock

    run = _run_folder(train_project.parent / "runs" / "train" / "multitask")
    before = file_tree(run)
    with FileLock(run.parent / ".multitask.lock", what="a training run"):  # the first run, training
        r = cli("-p", train_project, "train", "multitask", "--force")
    assert r.exit_code == 1 and "another llgbm process is writing" in r.stderr, r.stderr
    assert file_tree(run) == before


@pytest.mark.parametrize("killed_run_finished", [False, True])
def test_a_run_killed_while_replacing_another_is_put_right_at_the_next_start(cli, train_project, killed_run_finished,
                                                                            caplog):
    train = train_project.parent / "runs" / "train"
    earlier = _run_folder(train / "multitask")
    earlier_tree = file_tree(earlier)
    dead = _dead_pid()
    os.replace(earlier, train / f".multitask.old-{dead}")  # what `--force` did before it was killed
    _run_folder(train / "multitask", finished=killed_run_finished)
    (train / "multitask" / "metrics.jsonl").write_text('{"step": 1, "new": true}\n')
    killed_tree = file_tree(train / "multitask")
    r = cli("-p", train_project, "train", "multitask")
    assert r.exit_code == 2 and "a run is already there" in r.stderr, r.stderr
    assert file_tree(train / "multitask") == (killed_tree if killed_run_finished else earlier_tree)
    assert ("restored from .multitask.old-" in caplog.text) != killed_run_finished  # said on stderr
    assert not [p for p in train.iterdir() if ".old-" in p.name]


@pytest.mark.parametrize("resume", [False, True])
def test_a_first_run_stopped_before_its_first_checkpoint_starts_again_without_force(cli, train_project, resume):
    run = _folder(train_project.parent / "runs" / "train" / "multitask",
                  {"llgbm.json": json.dumps({"command": "train multitask"}), "metrics.jsonl": '{"step": 1}\n',
                   "tensorboard/events": "x"})
    r = cli("-p", train_project, "train", "multitask", *(["--resume"] if resume else []))
    assert r.exit_code == 0, r.stderr
    assert (run / "final" / "generator.safetensors").exists()
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-000002", "step-000004"]


# --------------------------------------------------------------------------- merge: where llgbm and mergekit differ


def test_normalizing_by_a_summed_weight_below_1e_8_divides_by_1_as_mergekit_does():
    from llgbm_cli.errors import InputError as Refused
    from llgbm_cli.merging import MergeOptions, general_merge, resolve_weights

    t = [torch.tensor([[1.0, -2.0]]), torch.tensor([[1.0, 3.0]])]
    ties = MergeOptions(strategy="ties", density=1.0)
    assert torch.allclose(general_merge(t, [2.0, 2.0], ties), torch.tensor([[1.0, 3.0]]))  # divided by Σw
    tiny = general_merge(t, [5e-10, 5e-10], ties)  # Σw = 1e-9: left undivided
    assert torch.allclose(tiny, torch.tensor([[1e-9, 1.5e-9]]), rtol=1e-5, atol=0)
    with pytest.raises(Refused, match="sum to 0"):
        resolve_weights(MergeOptions(strategy="linear", weights=[1.0, -1.0 + 5e-9]), 2)


def test_the_merge_docs_state_each_difference_from_mergekit():
    from conftest import REPO

    text = " ".join((REPO / "docs" / "concepts.md").read_text().split())
    assert "These are mergekit's registry defaults." not in text
    for said in ("mergekit's `density` defaults to 1.0", "density 0.5 and drop rate 0.9 are llgbm's own",
                 "(Σ wᵢ − 1)·W₀", "mergekit `density: d` is llgbm `--drop-rate 1−d`", "below 1e-8"):
        assert said in text, said
