import time

import pytest
import torch

from llgbm_cli.errors import InputError
from llgbm_cli.models import load_base_model, load_encoder, model_fingerprint, resolve_model_path


def test_unknown_model_is_clear():
    with pytest.raises(InputError, match="built-ins: smollm2-135m-instruct, tiny-llama"):
        resolve_model_path("no-such-model")


def test_folder_without_config(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        resolve_model_path(str(tmp_path))


def test_tiny_is_deterministic(tiny):
    m, _ = tiny
    assert m.config.hidden_size == 32 and m.config.num_hidden_layers == 2
    again, _ = load_base_model("tiny-llama", device="cpu")
    assert model_fingerprint(again) == model_fingerprint(m)
    assert not any(p.requires_grad for p in m.parameters())


@pytest.mark.slow
def test_smollm2_loads_from_package_and_generates_deterministically(smollm2):
    m, tok = smollm2
    assert m.config.hidden_size == 576 and m.config.num_hidden_layers == 30
    msgs = [{"role": "user", "content": "What is the capital of France?"}]
    enc = tok.apply_chat_template(msgs, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    outs = []
    for _ in range(2):
        with torch.no_grad():
            o = m.generate(**enc, max_new_tokens=12, do_sample=False)
        outs.append(tok.decode(o[0, enc["input_ids"].shape[1]:], skip_special_tokens=True))
    assert outs[0] == outs[1]
    assert "Paris" in outs[0]


@pytest.mark.slow
def test_converted_cache_is_reused(smollm2):
    path = resolve_model_path("smollm2-135m-instruct")
    mtime = (path / "model.safetensors").stat().st_mtime
    t0 = time.perf_counter()
    load_base_model("smollm2-135m-instruct", device="cpu")
    assert time.perf_counter() - t0 < 10  # the GGUF path takes ~20 s; the cache well under that
    assert (path / "model.safetensors").stat().st_mtime == mtime


@pytest.mark.slow
def test_minilm_paraphrase_closer_than_unrelated():
    enc = load_encoder("minilm-l6", device="cpu")
    v = enc.encode(["A man is playing a guitar.", "Someone plays the guitar.", "Stock prices fell sharply today."])
    sim = v @ v.T
    assert sim[0, 1] > 0.6 > sim[0, 2] + 0.3


def test_cache_is_passed_by_the_name_the_model_takes(tiny):
    import inspect
    import warnings

    from types import SimpleNamespace

    from llgbm_cli.models import cache_arg, returned_cache

    model, _ = tiny
    params = inspect.signature(type(model).forward).parameters
    assert list(cache_arg(model, 7)) == ["cache" if "cache" in params else "past_key_values"]

    class Older:
        def forward(self, input_ids=None, past_key_values=None, use_cache=None):
            pass

    assert cache_arg(Older(), 7) == {"past_key_values": 7}
    assert returned_cache(SimpleNamespace(cache=1, past_key_values=2)) == 1
    assert returned_cache(SimpleNamespace(past_key_values=2)) == 2
    ids = torch.tensor([[1, 2, 3]])
    with warnings.catch_warnings():  # the name the model takes: no deprecation warning
        warnings.simplefilter("error")
        first = model(input_ids=ids, use_cache=True)
        nxt = model(input_ids=torch.tensor([[4]]), use_cache=True, **cache_arg(model, returned_cache(first)))
    whole = model(input_ids=torch.tensor([[1, 2, 3, 4]])).logits[:, -1]
    torch.testing.assert_close(nxt.logits[:, -1], whole, rtol=0, atol=1e-5)
