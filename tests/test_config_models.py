"""`config validate` checks the models and LoRA target modules from config files alone."""

from __future__ import annotations

from llgbm_cli.config import load_config
from llgbm_cli.services.config import model_problems


def _problems(**ov):
    return model_problems(load_config(None, ov).config)


def test_builtin_names_are_known_without_loading():
    assert _problems() == []
    # the project file's last_layers (8) is more than the tiny model's 2 layers: refused at load
    assert _problems(**{"model.base": "tiny-llama", "lora.target_modules": ["q_proj", "down_proj"],
                        "lora.last_layers": 2}) == []
    (bad,) = _problems(**{"lora.target_modules": ["q_proj", "c_attn"]})
    assert bad.startswith("lora.target_modules: 'c_attn' not in the base model smollm2-135m-instruct")


def test_missing_folder_and_unmarked_hub_id(tmp_path):
    assert _problems(**{"model.base": "/no/such/folder"}) == [
        "model.base: '/no/such/folder' is not a built-in (smollm2-135m-instruct, tiny-llama) and no such folder"]
    (p,) = _problems(**{"model.encoder": "sentence-transformers/all-MiniLM-L6-v2"})
    assert p.startswith("model.encoder:") and "hf:sentence-transformers/all-MiniLM-L6-v2" in p
    assert _problems(**{"model.base": "hf:Qwen/Qwen2.5-0.5B"}) == []  # marked: not looked up
    assert _problems(**{"model.base": "hf:nope"})[0].startswith("model.base: 'hf:nope': a hub id is hf:org/name")
    (tmp_path / "empty").mkdir()
    assert "has no config.json" in _problems(**{"model.base": str(tmp_path / "empty")})[0]


def test_folder_modules_come_from_config_json(tmp_path):
    from transformers import GPT2Config

    folder = tmp_path / "gpt2"
    GPT2Config(n_layer=2, n_embd=32, n_head=2).save_pretrained(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # no weights anywhere
    (p,) = _problems(**{"model.base": str(folder), "lora.target_modules": ["q_proj"]})
    assert p.startswith("lora.target_modules: 'q_proj' not in the base model") and "lm_head" in p
    # GPT-2's attention projections are Conv1D, not nn.Linear: only its head is listed
    (tmp_path / "llama").mkdir()
    from transformers import LlamaConfig

    LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                num_key_value_heads=2).save_pretrained(tmp_path / "llama")
    assert _problems(**{"model.base": str(tmp_path / "llama"), "lora.target_modules": ["q_proj", "up_proj"],
                        "lora.last_layers": 3}) == []


def test_validate_command_exit_code(cli, tmp_path):
    project = tmp_path / "p.toml"
    project.write_text('[model]\nbase = "/no/such/folder"\n[lora]\ntarget_modules = ["q_proj"]\n')
    r = cli("config", "validate", str(project))
    assert r.exit_code == 2
    assert "model.base: '/no/such/folder' is not a built-in" in r.stderr and "Traceback" not in r.stderr
