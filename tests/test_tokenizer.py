import pytest
import torch

from llgbm_cli.adapters import random_adapter
from llgbm_cli.lora.tokenizer import LoraTokenizer, ModuleShape, choose_width


def _roundtrip(model, r, targets):
    tok = LoraTokenizer.from_model(model, targets, r)
    ad = random_adapter(model, r=r, target_modules=targets, seed=3, std=0.03)
    tokens = tok.tokenize_adapter(ad)
    assert tokens.shape == tok.grid_shape
    # padding cells are zero and the mask marks exactly the real cells
    mask = tok.mask()
    assert torch.all(tokens[mask == 0] == 0)
    n_real = sum(r * (m.in_features + m.out_features) + 2 * r * (tok._n_chunks(m.in_features) + tok._n_chunks(m.out_features))
                 for m in tok.modules)
    assert int(mask.sum()) == n_real
    back = tok.detokenize(tokens)
    assert set(back) == set(ad.modules)
    for name, m in ad.modules.items():
        A, B = back[name]
        torch.testing.assert_close(A[0], m.A, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(B[0], m.B, rtol=1e-5, atol=1e-7)
    # real cells of a standardized chunk have mean 0, std 1
    z = tokens[..., : tok.width][mask[..., : tok.width] > 0]
    assert abs(z.mean().item()) < 1e-4 and abs(z.std().item() - 1) < 0.05
    return tok


def test_roundtrip_tiny(tiny):
    tok = _roundtrip(tiny[0], 4, ["q_proj", "v_proj"])
    assert tok.width == 16  # gcd of 32 (q) and 16 (v)


def test_roundtrip_partial_chunks():
    # dims sharing no useful divisor: padded tails, still exact
    tok = LoraTokenizer([ModuleShape("model.layers.0.mlp.up_proj", 37, 53)], rank=3)
    assert tok.width == 64 and choose_width([37, 53]) == 64
    g = torch.Generator().manual_seed(0)
    A, B = torch.randn(2, 3, 37, generator=g), torch.randn(2, 53, 3, generator=g)
    back = tok.detokenize(tok.tokenize({"model.layers.0.mlp.up_proj": (A, B)}))
    torch.testing.assert_close(back["model.layers.0.mlp.up_proj"][0], A)
    torch.testing.assert_close(back["model.layers.0.mlp.up_proj"][1], B)


def test_zero_factor_roundtrip():
    tok = LoraTokenizer([ModuleShape("m.layers.0.q_proj", 16, 16)], rank=2)
    A, B = torch.randn(1, 2, 16), torch.zeros(1, 16, 2)  # a fresh LoRA has B = 0
    tokens = tok.tokenize({"m.layers.0.q_proj": (A, B)})
    assert torch.isfinite(tokens).all()
    Ab, Bb = tok.detokenize(tokens)["m.layers.0.q_proj"]
    torch.testing.assert_close(Ab, A)
    assert Bb.abs().max() < 1e-7


@pytest.mark.slow
def test_roundtrip_smollm2_shapes(smollm2):
    tok = _roundtrip(smollm2[0], 8, ["q_proj", "v_proj"])
    assert tok.grid_shape[0] == 60 and tok.width == 64


def test_gradients_flow_through_detokenize(tiny):
    tok = LoraTokenizer.from_model(tiny[0], ["q_proj", "v_proj"], 4)
    ad = random_adapter(tiny[0], r=4, seed=1)
    tokens = tok.tokenize_adapter(ad).unsqueeze(0).requires_grad_(True)
    loras = tok.detokenize(tokens)
    loss = sum((B @ A).pow(2).sum() for A, B in loras.values())
    loss.backward()
    g = tokens.grad
    mask = tok.mask()
    assert torch.isfinite(g).all()
    assert (g[0][mask > 0] != 0).float().mean() > 0.9  # values and both scale cells get gradients
    assert torch.all(g[0][mask == 0] == 0)  # padding gets none
    assert g[0][..., tok.width + 1][mask[..., -1] > 0].abs().min() > 0  # log std cell


def test_layout_serializes(tiny):
    tok = LoraTokenizer.from_model(tiny[0], ["q_proj", "v_proj"], 4)
    tok2 = LoraTokenizer.from_dict(tok.to_dict())
    assert tok2.grid_shape == tok.grid_shape and tok2.module_names == tok.module_names


def _twelve_layer_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=12,
                      num_attention_heads=2, num_key_value_heads=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg)


def test_rows_run_layer_by_layer_on_a_12_layer_model():
    from llgbm_cli.lora.tokenizer import sort_module_names

    model = _twelve_layer_llama()
    tok = LoraTokenizer.from_model(model, ["q_proj", "v_proj", "down_proj"], 2)
    layers = [m.layer for m in tok.modules]
    assert layers == sorted(layers) and layers[:3] == [0, 0, 0] and layers[-1] == 11
    # within a layer: the module path order (mlp before self_attn), the same in every layer
    assert [m.kind for m in tok.modules[:3]] == ["down_proj", "q_proj", "v_proj"]
    assert [m.kind for m in tok.modules[-3:]] == ["down_proj", "q_proj", "v_proj"]
    # name order (the old layout) would put layer 10 right after layer 1
    by_name = sorted(tok.module_names)
    assert [int(n.split(".")[2]) for n in by_name[::3]][:3] == [0, 1, 10]
    assert sort_module_names(by_name) == tok.module_names
    # the round trip holds in the new order; a saved layout reads back identically
    _roundtrip(model, 2, ["q_proj", "v_proj", "down_proj"])
    d = tok.to_dict()
    assert d["layout_version"] == 2
    assert LoraTokenizer.from_dict(d).module_names == tok.module_names


def test_old_layouts_refused_when_their_rows_meant_other_modules():
    model = _twelve_layer_llama()
    tok = LoraTokenizer.from_model(model, ["q_proj"], 2)
    old = tok.to_dict()
    del old["layout_version"]
    old["modules"] = sorted(old["modules"])  # how a version-1 layout listed its rows
    with pytest.raises(ValueError, match="older llgbm.*row 2 is model.layers.10.self_attn.q_proj"):
        LoraTokenizer.from_dict(old, source="ckpt")
    # an old layout whose name order is already layer order (layers 2..9) is read as before
    tok8 = LoraTokenizer.from_model(model, ["q_proj"], 2, last_layers=8)
    assert [m.layer for m in tok8.modules] == list(range(4, 12))
    ok = tok8.to_dict()
    del ok["layout_version"]
    ok["modules"] = [m for m in ok["modules"] if int(m[0].split(".")[2]) < 10]
    assert LoraTokenizer.from_dict(ok).module_names == [m[0] for m in ok["modules"]]
    newer = dict(tok.to_dict(), layout_version=99)
    with pytest.raises(ValueError, match="upgrade llgbm"):
        LoraTokenizer.from_dict(newer)
