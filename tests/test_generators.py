import pytest
import torch

from llgbm_cli.errors import InputError
from llgbm_cli.generators import build_generator, generator_names, get_generator_class
from llgbm_cli.generators.base import load_generator, save_generator
from llgbm_cli.generators.condition import fit_prompts
from llgbm_cli.lora.tokenizer import LoraTokenizer


@pytest.fixture
def layout(tiny):
    return LoraTokenizer.from_model(tiny[0], ["q_proj", "v_proj"], 4)


def test_registry_lists_valid_names():
    assert {"hyperconv", "hypernet"} <= set(generator_names())
    with pytest.raises(InputError, match="hyperconv") as e:
        get_generator_class("hyperconvv")
    assert "did you mean 'hyperconv'" in str(e.value)


def test_unknown_option_names_valid_ones(layout):
    with pytest.raises(InputError, match="channels"):
        build_generator("hyperconv", layout, 384, {"chanels": 4})


@pytest.mark.parametrize("name, opts", [("hyperconv", {"channels": 8}), ("hypernet", {"hidden": 32})])
def test_generators_emit_loras_with_gradients(name, opts, layout, tiny, tmp_path):
    gen = build_generator(name, layout, 384, {"n_prompts": 3, "scaling": 2.0, **opts})
    cond = torch.randn(2, 3, 384)
    out = gen(cond)
    assert set(out.loras) == set(layout.module_names) and out.n == 2
    for m in layout.modules:
        A, B = out.loras[m.name]
        assert A.shape == (2, 4, m.in_features) and B.shape == (2, m.out_features, 4)
        assert torch.isfinite(A).all() and torch.isfinite(B).all()
    loss = sum((B @ A).pow(2).sum() for A, B in out.loras.values())
    loss.backward()
    grads = [p.grad for p in gen.parameters() if p.requires_grad]
    assert sum(g is not None and g.abs().sum() > 0 for g in grads) >= len(grads) // 2
    # stacked output fits the patch and the base model
    from llgbm_cli.lora.patch import LoraPatch

    with torch.no_grad(), LoraPatch(tiny[0], gen(cond).stacked()):
        tiny[0](input_ids=torch.ones(2, 3, dtype=torch.long))
    # save -> load gives the same outputs
    save_generator(tmp_path, gen, {"base_model": "tiny-llama"})
    gen2, meta = load_generator(tmp_path)
    assert meta["generator"] == name and meta["base_model"] == "tiny-llama"
    gen.eval()
    with torch.no_grad():
        a, b = gen(cond).loras, gen2(cond).loras
    for k in a:
        torch.testing.assert_close(a[k][0], b[k][0])


def test_init_output_starts_at_mean(layout):
    gen = build_generator("hyperconv", layout, 384, {"n_prompts": 2, "channels": 4})
    mean_tokens = torch.randn(*layout.grid_shape) * layout.mask()
    gen.init_output(mean_tokens, {})
    out = gen(torch.randn(1, 2, 384))
    assert (out.tokens[0] - mean_tokens).abs().max() < 0.05


def test_fit_prompts():
    e = torch.arange(6.0).view(3, 2)
    assert fit_prompts(e, 3).equal(e)
    assert fit_prompts(e, 5).shape == (5, 2)
    assert fit_prompts(e, 2, torch.Generator().manual_seed(0)).shape == (2, 2)
    with pytest.raises(InputError):
        fit_prompts(e[:0], 2)


def test_load_generator_names_missing_files(tmp_path):
    with pytest.raises(InputError, match="train multitask"):
        load_generator(tmp_path)


def test_checkpoint_with_an_old_layout_is_refused(layout, tmp_path):
    import json

    from llgbm_cli.generators.base import check_resumable_layout
    from llgbm_cli.lora.tokenizer import ModuleShape

    mods = [ModuleShape(f"model.layers.{i}.self_attn.q_proj", 8, 8) for i in range(12)]
    tok = LoraTokenizer(mods, 2)
    gen = build_generator("hyperconv", tok, 16, {"n_prompts": 2, "channels": 4})
    save_generator(tmp_path, gen, {"base_model": "x"})
    load_generator(tmp_path)  # the current layout loads
    check_resumable_layout(tmp_path, tok)
    meta = json.loads((tmp_path / "generator.json").read_text())
    del meta["tokenizer"]["layout_version"]
    meta["tokenizer"]["modules"].sort()
    (tmp_path / "generator.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="older llgbm.*retrain"):
        load_generator(tmp_path)
    with pytest.raises(InputError, match="older llgbm"):
        check_resumable_layout(tmp_path, tok)
    meta["tokenizer"] = tok.to_dict()
    (tmp_path / "generator.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="layout differs"):
        check_resumable_layout(tmp_path, layout)


def test_paper_hyperconv_has_dnd_shapes():
    """The `paper` stages with DnD's own condition (128 prompts × 384 tokens × 384) and its
    Qwen2.5-0.5B token grid (4296 × 10 × 130) give its published decoder size, ~1.1 B parameters."""
    from llgbm_cli.generators.hyperconv import PAPER_KERNEL, PAPER_STAGES, _HyperConvStage

    shapes = [(128, 384, 384), *PAPER_STAGES, (4296, 10, 130)]
    with torch.device("meta"):
        dnd = torch.nn.ModuleList(_HyperConvStage(a, b, PAPER_KERNEL) for a, b in zip(shapes[:-1], shapes[1:]))
    assert sum(p.numel() for p in dnd.parameters()) == 1_113_203_220
    from llgbm_cli.lora.tokenizer import ModuleShape

    tok = LoraTokenizer([ModuleShape(f"model.layers.{i}.self_attn.q_proj", 64, 64) for i in range(3)], 4)
    with torch.device("meta"):
        gen = build_generator("hyperconv", tok, 384, {"preset": "paper", "n_prompts": 128, "cond_tokens": 384})
    assert gen.stage_shapes[0] == (128, 384, 384) and gen.stage_shapes[-1] == tok.grid_shape
    assert gen.stage_shapes[1:-1] == PAPER_STAGES


@pytest.mark.parametrize("name", ["hyperconv", "hypernet"])
def test_small_presets_take_token_states_and_refuse_the_wrong_shape(name, layout):
    gen = build_generator(name, layout, 16, {"preset": "small", "n_prompts": 3, "cond_tokens": 5})
    cond = torch.randn(2, 3, 5, 16)
    cond[:, :, 3:] = 0  # padding past each text's end
    out = gen(cond)
    assert out.n == 2 and all(torch.isfinite(A).all() for A, _ in out.loras.values())
    if name == "hyperconv":
        with pytest.raises(ValueError, match="5 condition token"):
            gen(torch.randn(2, 3, 16))
    with pytest.raises(ValueError, match="preset 'large'"):
        build_generator(name, layout, 16, {"preset": "large"})


def test_hypernet_small_concatenates_task_layer_and_kind(layout):
    gen = build_generator("hypernet", layout, 16, {"preset": "small", "n_prompts": 2})
    assert gen.task[0].out_features == 64 and gen.layer_emb[0].embedding_dim == 32
    assert gen.kind_emb[0].embedding_dim == 32 and gen.mlp[1].in_features == 128
    assert sum(isinstance(m, torch.nn.SiLU) for m in gen.modules()) == 8  # mixer 2, residual blocks 2 x 2, output 2
