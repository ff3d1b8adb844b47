import copy
import json

import pytest
import torch

from llgbm_cli.adapters import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    load_adapter,
    random_adapter,
    save_adapter,
    validate_against,
)
from llgbm_cli.errors import InputError


@pytest.fixture
def saved(tiny, tmp_path):
    model, _ = tiny
    ad = random_adapter(model, r=4, alpha=8.0, seed=3)
    return save_adapter(tmp_path / "ad", ad, base_model="tiny-llama", provenance={"command": "test"}), ad


def test_round_trip_and_peft_loads_it(tiny, saved):
    from peft import PeftModel

    model, tok = tiny
    path, ad = saved
    back = load_adapter(path)
    validate_against(back, model)
    assert set(back.modules) == set(ad.modules) and back.r == 4 and back.alpha == 8.0
    for k, m in ad.modules.items():
        assert torch.equal(back.modules[k].A, m.A) and torch.equal(back.modules[k].B, m.B)
        assert back.modules[k].scaling == pytest.approx(2.0)
    assert (path / "llgbm.json").exists()
    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(path))
    sd = pm.state_dict()
    k = next(iter(ad.modules))
    assert torch.equal(sd[f"base_model.model.{k}.lora_A.default.weight"], ad.modules[k].A)
    ids = tok("a test", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(pm(ids).logits).all()


def test_refuses_overwrite_without_force(tiny, saved):
    path, ad = saved
    before = (path / WEIGHTS_FILE).read_bytes()
    with pytest.raises(InputError, match="--force"):
        save_adapter(path, ad)
    assert (path / WEIGHTS_FILE).read_bytes() == before
    ad2 = random_adapter(tiny[0], r=4, alpha=8.0, seed=9)
    save_adapter(path, ad2, force=True)
    assert (path / WEIGHTS_FILE).read_bytes() != before
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")]


def test_missing_files(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="missing adapter_config.json, adapter_model.safetensors"):
        load_adapter(tmp_path / "empty")
    with pytest.raises(InputError, match="not found"):
        load_adapter(tmp_path / "nothing")


def test_corrupt_weights(saved):
    path, _ = saved
    (path / WEIGHTS_FILE).write_bytes(b"\x00garbage" * 10)
    with pytest.raises(InputError, match="corrupt or unreadable safetensors"):
        load_adapter(path)


def test_corrupt_config(saved):
    path, _ = saved
    (path / CONFIG_FILE).write_text("{not json")
    with pytest.raises(InputError, match="corrupt JSON"):
        load_adapter(path)


def test_shape_mismatch_names_module(tiny, saved, smollm2):
    path, _ = saved
    ad = load_adapter(path)
    with pytest.raises(InputError) as e:
        validate_against(ad, smollm2[0])
    assert "model.layers.0.self_attn.q_proj" in e.value.message and "576" in e.value.message


def test_cli_bad_adapter_exit_2_no_traceback(cli, tmp_path, tiny_project):
    # `llgbm adapter check` is the foundation's adapter validation entry point.
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / CONFIG_FILE).write_text(json.dumps({"peft_type": "LORA", "r": 4, "lora_alpha": 8}))
    (tmp_path / "broken" / WEIGHTS_FILE).write_bytes(b"nope")
    r = cli("-p", tiny_project, "adapter", "check", tmp_path / "broken")
    assert r.exit_code == 2
    assert "adapter_model.safetensors" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = cli("-p", tiny_project, "adapter", "check", tmp_path / "missing")
    assert r.exit_code == 2 and "not found" in r.stderr


def test_cli_check_good_adapter(cli, saved, tiny_project):
    path, _ = saved
    r = cli("-p", tiny_project, "--json", "adapter", "check", path)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["adapters"][0]["ok"] and d["adapters"][0]["rank"] == 4
