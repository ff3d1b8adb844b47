"""Deltas that start at the lowest adapted layer equal the full-depth forward (and PEFT's)."""

import copy

import pytest
import torch

from llgbm_cli.adapters import random_adapter, save_adapter
from llgbm_cli.anatomy import lowest_adapted_layer
from llgbm_cli.deltas.compute import (
    BaseActivations, DeltaSpec, base_activations, base_states, compute_deltas, delta_for_stacked,
)
from llgbm_cli.deltas.probes import load_probes
from llgbm_cli.lora.patch import LoraPatch, stack_adapters

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
SPECS = [DeltaSpec(), DeltaSpec([0, 1, -1], "mean"), DeltaSpec([1], "last_token")]


def _peft_delta(model, adapter, path, probes, spec):
    """Each probe alone through PEFT's model with output_hidden_states, minus the base's."""
    from peft import PeftModel

    from llgbm_cli.deltas.compute import resolve_layers

    idx = resolve_layers(model, spec)

    def states(m):
        rows = []
        for ids in probes.token_ids:
            with torch.no_grad():
                hs = m(torch.tensor([ids]), output_hidden_states=True).hidden_states
            rows.append(torch.cat([hs[i][0, -1] if spec.pool == "last_token" else hs[i][0].mean(0) for i in idx]))
        return torch.stack(rows).mean(0)

    save_adapter(path, adapter)
    return states(PeftModel.from_pretrained(copy.deepcopy(model), str(path))) - states(model)


def _kinds(model, last: int):
    """Adapters on every layer, on the last ``last`` layers, and on one module of the last layer."""
    return {
        "all": random_adapter(model, r=4, target_modules=TARGETS, seed=0, std=0.05),
        "last": random_adapter(model, r=4, target_modules=TARGETS, seed=1, std=0.05, last_layers=last),
        "one": random_adapter(model, r=2, target_modules=["v_proj"], seed=2, std=0.05, last_layers=1),
    }


def _rel(a, b):
    return ((a - b).norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).max().item()


def test_lowest_adapted_layer(tiny):
    model = tiny[0]
    ads = _kinds(model, 1)
    assert [lowest_adapted_layer(model, a.modules) for a in ads.values()] == [0, 1, 1]
    assert lowest_adapted_layer(model, []) == 2
    assert lowest_adapted_layer(model, ["lm_head"]) == 0  # outside the decoder layers: no reuse
    assert lowest_adapted_layer(model, stack_adapters([ads["last"], ads["one"]])) == 1


@pytest.mark.parametrize("spec", SPECS, ids=["last", "mean-0-1-final", "layer1"])
@pytest.mark.parametrize("pack", [True, False], ids=["packed", "padded"])
def test_reuse_equals_full_forward_and_peft(tiny, tmp_path, spec, pack):
    model, tok = tiny
    probes = load_probes("generic", tok, count=4)
    ads = _kinds(model, 1)
    order = ["all", "last", "one"]
    # one batch that mixes all three kinds, and each kind alone
    mixed = delta_for_stacked(model, probes, spec, stack_adapters([ads[k] for k in order]), pack=pack)
    full = delta_for_stacked(model, probes, spec, stack_adapters([ads[k] for k in order]), pack=pack, reuse=False)
    assert torch.equal(mixed, full)  # the mixed batch starts at layer 0: the same computation
    alone = torch.cat([delta_for_stacked(model, probes, spec, stack_adapters([ads[k]]), pack=pack) for k in order])
    grouped = compute_deltas(model, [ads[k] for k in order], probes, spec, adapters_per_batch=3, pack=pack)
    for i, k in enumerate(order):
        ref = _peft_delta(model, ads[k], tmp_path / k, probes, spec)
        if spec.layers == (1,) and k != "all":  # read below the adapted layer: exactly nothing
            assert torch.count_nonzero(alone[i]) == 0 and torch.count_nonzero(grouped[i]) == 0
            assert ref.abs().max() < 1e-6
            continue
        assert ref.norm() > 1e-3
        for got in (alone[i], grouped[i], full[i]):
            assert _rel(got, ref) <= 1e-4
        assert _rel(alone[i], full[i]) <= 1e-5 and _rel(grouped[i], full[i]) <= 1e-5


def test_layers_below_the_adapters_are_not_recomputed(tiny):
    model, tok = tiny
    probes = load_probes("generic", tok, count=3)
    spec = DeltaSpec()
    ads = _kinds(model, 1)
    calls = []
    h = model.model.layers[0].mlp.down_proj.register_forward_hook(lambda *a: calls.append(1))
    try:
        acts = base_activations(model, probes)
        base_states(model, probes, spec)
        forwards = acts.forwards
        delta_for_stacked(model, probes, spec, stack_adapters([ads["last"], ads["one"]]))
        assert acts.forwards - forwards <= 1  # the state entering layer 1, once
        calls.clear()
        for _ in range(3):
            delta_for_stacked(model, probes, spec, stack_adapters([ads["last"]]))
        assert calls == [] and acts.forwards - forwards <= 1
        # grouped: the all-layer adapter's batch is the only one to run layer 0
        compute_deltas(model, [ads["last"], ads["all"], ads["one"]], probes, spec, adapters_per_batch=2)
        assert len(calls) == 1
        calls.clear()
        compute_deltas(model, [ads["last"], ads["one"]], probes, spec, reuse=False)
        assert len(calls) == 1  # today's full-depth path, for comparison
    finally:
        h.remove()


def test_gradients_equal_the_full_depth_path(tiny):
    model, tok = tiny
    probes = load_probes("generic", tok, count=3)
    spec = DeltaSpec([1, -1], "mean")
    ads = _kinds(model, 1)
    grads = []
    for reuse in (True, False):
        stacked = stack_adapters([ads["last"], ads["one"]])
        for w in stacked.values():
            w.A.requires_grad_(True)
            w.B.requires_grad_(True)
        d = delta_for_stacked(model, probes, spec, stacked, reuse=reuse)
        d.pow(2).sum().backward()
        grads.append(torch.cat([torch.cat([w.A.grad.flatten(), w.B.grad.flatten()]) for w in stacked.values()]))
    assert grads[0].abs().sum() > 0 and torch.allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)
    assert all(p.grad is None for p in model.parameters())


def test_activations_follow_the_weights_and_refuse_a_patched_model(tiny_model_copy, tiny):
    model, tok = tiny_model_copy, tiny[1]
    probes = load_probes("generic", tok, count=3)
    spec = DeltaSpec()
    acts = base_activations(model, probes)
    before = base_states(model, probes, spec)
    assert base_activations(model, probes) is acts
    assert base_activations(model, probes, pack=False) is not acts
    with torch.no_grad():
        model.model.layers[0].mlp.up_proj.weight.mul_(1.5)
    again = base_activations(model, probes)
    assert again is not acts and not torch.allclose(base_states(model, probes, spec), before)
    fresh = BaseActivations(model, probes)
    with LoraPatch(model, stack_adapters([random_adapter(model, r=2, seed=0)])):
        with pytest.raises(RuntimeError, match="LoRA patch is active"):
            fresh.ensure(model, [1])
    fresh.ensure(model, [1])
    again.ensure(model, [1])
    assert torch.equal(fresh.states[1], again.states[1])


def test_cache_deltas_groups_and_records_the_activations(tiny, tiny_project):
    from llgbm_cli.config import load_config
    from llgbm_cli.deltas.cache import DeltaCache
    from llgbm_cli.deltas.compute import activations_fingerprint
    from llgbm_cli.deltas.probes import load_probes as lp
    from llgbm_cli.models import model_fingerprint
    from llgbm_cli.services.cache_deltas import run_cache_deltas

    model = tiny[0]
    folder = tiny_project.parent / "ads"
    kinds = _kinds(model, 1)
    names = []
    for i, k in enumerate(["last", "all", "one", "last"]):
        ad = kinds[k] if i < 3 else random_adapter(model, r=4, target_modules=TARGETS, seed=7, std=0.05,
                                                   last_layers=1)
        names.append(f"a{i}-{k}")
        save_adapter(folder / names[-1], ad)
    resolved = load_config(tiny_project, {"delta.adapters_per_batch": 2}, explicit=True)
    r = run_cache_deltas(resolved, adapters=[str(folder / "*")])
    assert (r.computed, r.failed) == (4, [])
    cache = DeltaCache.open(tiny_project.parent / "runs" / "deltas")
    cfg = resolved.config
    probes = lp(cfg.probes.source, tiny[1], count=cfg.probes.count, chat_template=cfg.probes.chat_template,
                max_length=cfg.probes.max_length, seed=cfg.project.seed)
    assert cache.header["activations_fingerprint"] == activations_fingerprint(
        model_fingerprint(model), probes.fingerprint, cfg.delta.pack, cfg.delta.dtype)
    assert cache.ids[0] == "a1-all"  # the all-layer group runs first
    from llgbm_cli.adapters import load_adapter

    ref = compute_deltas(model, [load_adapter(folder / n) for n in names], probes, DeltaSpec.from_config(cfg.delta),
                         adapters_per_batch=1, pack=cfg.delta.pack, reuse=False)
    for n, row in zip(names, ref):
        assert _rel(cache.row(n), row) <= 1e-5


@pytest.mark.slow
def test_smollm2_reuse_equals_full_forward_and_peft(smollm2, tmp_path):
    model, tok = smollm2
    probes = load_probes("generic", tok, count=3)
    spec = DeltaSpec()
    ads = {
        "all": random_adapter(model, r=8, seed=0, std=0.05),
        "last8": random_adapter(model, r=8, seed=1, std=0.05, last_layers=8),
        "last2": random_adapter(model, r=8, target_modules=TARGETS, seed=2, std=0.02, last_layers=2),
    }
    order = list(ads)
    mixed = delta_for_stacked(model, probes, spec, stack_adapters([ads[k] for k in order]))
    full = compute_deltas(model, [ads[k] for k in order], probes, spec, adapters_per_batch=1, reuse=False)
    grouped = compute_deltas(model, [ads[k] for k in order], probes, spec, adapters_per_batch=3)
    for i, k in enumerate(order):
        ref = _peft_delta(model, ads[k], tmp_path / k, probes, spec)
        for got in (mixed[i], full[i], grouped[i]):
            assert _rel(got, ref) <= 1e-4
        assert _rel(grouped[i], full[i]) <= 1e-5
    # the differentiable path: same deltas and gradients from layer 22 as from layer 0
    out = []
    for reuse in (True, False):
        stacked = stack_adapters([ads["last8"]])
        for w in stacked.values():
            w.A.requires_grad_(True)
            w.B.requires_grad_(True)
        d = delta_for_stacked(model, probes, spec, stacked, reuse=reuse)
        d.pow(2).sum().backward()
        out.append((d.detach(), torch.cat([w.B.grad.flatten() for w in stacked.values()])))
    assert _rel(out[0][0], out[1][0]) <= 1e-5 and _rel(out[0][1], out[1][1]) <= 1e-4


def test_shares_of_the_batches_are_the_whole_computation(tiny):
    """Each process's share (every world-th batch, batched by lowest layer as in compute_deltas)
    holds each adapter once, and the shares together are compute_deltas' rows, bit for bit."""
    from llgbm_cli.deltas.compute import compute_delta_share

    model, tok = tiny
    probes = load_probes("generic", tok, count=4)
    ads = [random_adapter(model, r=2, target_modules=["q_proj", "v_proj"], seed=s, std=0.05,
                          last_layers=1 + s % 2) for s in range(7)]
    whole = compute_deltas(model, ads, probes, DeltaSpec(), adapters_per_batch=2)
    for world in (1, 2, 3):
        shares = [compute_delta_share(model, ads, probes, DeltaSpec(), 2, rank, world) for rank in range(world)]
        got = [p for share in shares for p, _ in share]
        assert sorted(got) == list(range(len(ads)))
        assert all(torch.equal(row, whole[p]) for share in shares for p, row in share)
        if world > 1:
            assert all(shares)  # four batches: every process computes some
