import copy

import pytest
import torch

from llgbm_cli.adapters import LoraAdapter, LoraModule, random_adapter, save_adapter
from llgbm_cli.lora.patch import LoraPatch, patch_adapters, stack_adapters

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _peft_logits(model, adapter, path, batch):
    from peft import PeftModel

    save_adapter(path, adapter)
    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(path))
    with torch.no_grad():
        return pm(**batch).logits


def _check(model, tok, tmp_path, n=3):
    ads = [random_adapter(model, r=4 + 2 * i, target_modules=TARGETS, seed=i, std=0.05) for i in range(n)]
    batch = tok(["hello there, friend", "the cat sat on the mat"], return_tensors="pt", padding=True)
    rep = {k: v.repeat(n, 1) for k, v in batch.items()}
    with torch.no_grad(), patch_adapters(model, ads):
        mine = model(**rep).logits
    with torch.no_grad():
        base = model(**batch).logits
    for i, ad in enumerate(ads):
        ref = _peft_logits(model, ad, tmp_path / f"a{i}", batch)
        rel = ((mine[2 * i : 2 * i + 2] - ref).norm() / ref.norm()).item()
        assert rel <= 1e-5
        assert (ref - base).abs().max() > 1e-4  # the adapter really changes the output
    with torch.no_grad():  # hooks are removed on exit
        assert torch.equal(model(**batch).logits, base)


def test_patch_matches_peft_tiny(tiny, tmp_path):
    _check(*tiny, tmp_path)


@pytest.mark.slow
def test_patch_matches_peft_smollm2(smollm2, tmp_path):
    _check(*smollm2, tmp_path, n=2)


def test_gradients_reach_A_and_B(tiny):
    model, tok = tiny
    ad = random_adapter(model, r=2, seed=0)
    stacked = stack_adapters([ad])
    for w in stacked.values():
        w.A.requires_grad_(True)
        w.B.requires_grad_(True)
    batch = tok(["gradient check"], return_tensors="pt")
    with LoraPatch(model, stacked):
        out = model(**batch, output_hidden_states=True).hidden_states[-1].sum()
    out.backward()
    assert all(w.A.grad is not None and w.A.grad.abs().sum() > 0 for w in stacked.values())
    assert all(w.B.grad is not None and w.B.grad.abs().sum() > 0 for w in stacked.values())
    assert all(p.grad is None for p in model.parameters())


def test_zero_adapter_changes_nothing(tiny):
    model, tok = tiny
    ad = random_adapter(model, r=2, seed=0)
    zero = LoraAdapter({k: LoraModule(torch.zeros_like(m.A), m.B, m.scaling) for k, m in ad.modules.items()}, 2, 4.0, ad.target_modules)
    batch = tok(["zero"], return_tensors="pt")
    with torch.no_grad():
        base = model(**batch).logits
        with patch_adapters(model, [zero]):
            assert torch.equal(model(**batch).logits, base)


def test_batch_must_divide(tiny):
    model, tok = tiny
    ads = [random_adapter(model, r=2, seed=i) for i in range(2)]
    batch = tok(["one row only"], return_tensors="pt")
    with pytest.raises(ValueError, match="multiple of 2"), torch.no_grad(), patch_adapters(model, ads):
        model(**batch)
