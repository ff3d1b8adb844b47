import copy

import pytest
import torch

from llgbm_cli.adapters import LoraAdapter, LoraModule, random_adapter, save_adapter
from llgbm_cli.deltas.compute import (
    DeltaSpec, base_states, compute_deltas, delta_for_stacked, pooled_states, resolve_layers,
)
from llgbm_cli.deltas.probes import load_probes
from llgbm_cli.lora.patch import stack_adapters

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _reference(model, probes, spec):
    """Each probe alone through the full causal LM with output_hidden_states."""
    idx = resolve_layers(getattr(model, "get_base_model", lambda: model)(), spec)
    rows = []
    for ids in probes.token_ids:
        with torch.no_grad():
            hs = model(torch.tensor([ids]), output_hidden_states=True).hidden_states
        rows.append(torch.cat([hs[i][0, -1] if spec.pool == "last_token" else hs[i][0].mean(0) for i in idx]))
    return torch.stack(rows).mean(0)


def _naive_peft_delta(model, adapter, path, probes, spec):
    from peft import PeftModel

    save_adapter(path, adapter)
    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(path))
    return _reference(pm, probes, spec) - _reference(model, probes, spec)


@pytest.mark.parametrize("spec", [DeltaSpec(), DeltaSpec([0, 1, -1], "mean"), DeltaSpec([1], "last_token")])
def test_packed_and_padded_match_full_forward(tiny, spec):
    model, tok = tiny
    probes = load_probes("generic", tok, count=5)
    ref = _reference(model, probes, spec)
    assert ref.numel() == spec.dim(model)
    for pack in (True, False):
        got = pooled_states(model, probes, spec, n_adapters=2, pack=pack)
        assert got.shape == (2, spec.dim(model))
        for row in got:
            assert ((row - ref).norm() / ref.norm()).item() <= 1e-5


def test_zero_adapter_delta_is_exactly_zero(tiny):
    model, tok = tiny
    probes = load_probes("generic", tok, count=4)
    ad = random_adapter(model, r=4, target_modules=TARGETS, seed=0)
    zero = LoraAdapter({k: LoraModule(m.A, torch.zeros_like(m.B), m.scaling) for k, m in ad.modules.items()},
                       4, 8.0, ad.target_modules)
    for spec in (DeltaSpec(), DeltaSpec([0, -1], "mean")):
        d = compute_deltas(model, [zero], probes, spec, adapters_per_batch=1)
        assert d.shape == (1, spec.dim(model)) and torch.count_nonzero(d) == 0


def test_compute_deltas_matches_peft_and_batching(tiny, tmp_path):
    model, tok = tiny
    probes = load_probes("generic", tok, count=4)
    spec = DeltaSpec()
    ads = [random_adapter(model, r=2 + i, target_modules=TARGETS[: 2 + 3 * i], seed=i, std=0.05) for i in range(2)]
    batched = compute_deltas(model, iter(ads), probes, spec, adapters_per_batch=2)
    single = compute_deltas(model, ads, probes, spec, adapters_per_batch=1, pack=False)
    assert batched.shape == (2, 32)
    for i, ad in enumerate(ads):
        ref = _naive_peft_delta(model, ad, tmp_path / f"a{i}", probes, spec)
        assert ref.norm() > 1e-3
        for got in (batched[i], single[i]):
            assert ((got - ref).norm() / ref.norm()).item() <= 1e-4


def test_delta_for_stacked_is_differentiable(tiny):
    model, tok = tiny
    probes = load_probes("generic", tok, count=3)
    spec = DeltaSpec()
    stacked = stack_adapters([random_adapter(model, r=2, seed=s) for s in range(2)])
    for w in stacked.values():
        w.A.requires_grad_(True)
        w.B.requires_grad_(True)
    base = base_states(model, probes, spec)
    d = delta_for_stacked(model, probes, spec, stacked, base)
    assert d.shape == (2, 32) and d.requires_grad
    d.pow(2).sum().backward()
    assert all(w.A.grad is not None and w.A.grad.abs().sum() > 0 for w in stacked.values())
    assert all(p.grad is None for p in model.parameters())


def test_spec_roundtrip_and_errors(tiny):
    from llgbm_cli.config import DeltaSection

    s = DeltaSpec.from_config(DeltaSection(layers=[0, -1], pool="mean"))
    assert DeltaSpec.from_dict(s.to_dict()) == s and s.fingerprint() != DeltaSpec().fingerprint()
    with pytest.raises(ValueError, match="out of range"):
        resolve_layers(tiny[0], DeltaSpec([5]))
    with pytest.raises(ValueError, match="unknown pool"):
        DeltaSpec(pool="max")


@pytest.mark.slow
def test_smollm2_matches_peft(smollm2, tmp_path):
    model, tok = smollm2
    probes = load_probes("generic", tok, count=3)
    spec = DeltaSpec()
    ads = [random_adapter(model, r=8, seed=i, std=0.05) for i in range(2)]
    got = compute_deltas(model, ads, probes, spec, adapters_per_batch=2)
    for i, ad in enumerate(ads):
        ref = _naive_peft_delta(model, ad, tmp_path / f"a{i}", probes, spec)
        assert ((got[i] - ref).norm() / ref.norm()).item() <= 1e-4
