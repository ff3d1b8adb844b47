"""Parity table: llgbm's merge against a reference written from the published definitions.

The reference below is plain Python on lists, written from TIES (Yadav et al. 2023, "TIES-Merging":
trim to the top-k magnitudes, elect the sign of the summed values, disjoint mean over the agreeing
entries), DARE (Yu et al. 2023: drop with probability p, rescale the kept entries) and mergekit's
documented semantics for what the papers leave open (weights applied before the sign election, the
disjoint mean weighted by the agreeing weights, `+` elected on a zero sum, DARE rescaled to the
tensor's L1 norm, `normalize` dividing by the summed weights). Each row is checked twice: the
entry-wise kernel, and the whole merge of adapters whose ΔW is the given matrix (at full rank).
"""

from __future__ import annotations

import copy

import pytest
import torch

from llgbm_cli.adapters import LoraAdapter, LoraModule, load_adapter, random_adapter, save_adapter
from llgbm_cli.errors import InputError
from llgbm_cli.merging import MergeOptions, general_merge, mask_seed, merge_adapters, merge_with_report

Q = "model.layers.0.self_attn.q_proj"


# ---------------------------------------------------------------- the reference


def ref_trim(t: list[float], density: float) -> list[float]:
    """Keep the k = max(1, ⌊density·n⌋) largest magnitudes; among equal magnitudes the lowest index first."""
    k = max(1, int(density * len(t)))
    keep = set(sorted(range(len(t)), key=lambda i: (-abs(t[i]), i))[:k])
    return [x if i in keep else 0.0 for i, x in enumerate(t)]


def ref_rescale(orig: list[float], kept: list[float], how: str, keep_rate: float) -> list[float]:
    if how == "keep_rate":
        return [x / keep_rate for x in kept]
    if how == "l1" and sum(abs(x) for x in kept) > 0:
        f = sum(abs(x) for x in orig) / sum(abs(x) for x in kept)
        return [x * f for x in kept]
    return kept


def ref_merge(ts, weights, *, sparsify="none", consensus=False, normalize=False, density=1.0,
              rescale="none", masks=None) -> list[float]:
    """One tensor per adapter (flattened lists) -> the merged tensor."""
    parts = []
    for i, t in enumerate(ts):
        if sparsify == "magnitude":
            t = ref_rescale(t, ref_trim(t, density), rescale, density)
        elif sparsify == "random":
            t = ref_rescale(t, [x * m for x, m in zip(t, masks[i])], rescale, 1.0 - DROP)
        parts.append(t)
    n = len(parts[0])
    if not consensus:
        w = [x / sum(weights) for x in weights] if normalize else list(weights)
        return [sum(wi * p[j] for wi, p in zip(w, parts)) for j in range(n)]
    out = []
    for j in range(n):
        vals = [wi * p[j] for wi, p in zip(weights, parts)]
        elected = 1.0 if sum(vals) >= 0 else -1.0  # the sign of the sum; + on a zero sum
        agree = [(v > 0) if elected > 0 else (v < 0) for v in vals]  # zeros never agree
        total = sum(v for v, a in zip(vals, agree) if a)
        div = sum(wi for wi, a in zip(weights, agree) if a)
        out.append(total / div if normalize and div != 0 else total)
    return out


DROP = 0.5  # drop rate of the DARE rows


def dare_masks(n_adapters: int, shape, seed: int, key: str) -> list[list[float]]:
    """The seeded keep-masks llgbm draws: one per (seed, adapter, module), uniform < 1 - p."""
    return [(torch.rand(shape, generator=torch.Generator().manual_seed(mask_seed(seed, i, key))) < 1 - DROP)
            .float().flatten().tolist() for i in range(n_adapters)]


# ---------------------------------------------------------------- fixed tensors

# integer-valued, with many equal magnitudes (ties at the trim threshold), exact zeros, and
# columns whose weighted sum is exactly 0
T1 = [[3, -3, 2, 0], [-2, 2, 1, 5], [4, -1, -4, 0], [1, 1, -1, 2]]
T2 = [[-3, 3, 2, 1], [2, -2, -1, -5], [4, 1, 4, 0], [-1, 1, 1, -2]]
T3 = [[1, -1, -2, 2], [0, 3, -3, 1], [-4, 2, 2, 0], [2, -2, 1, 1]]

ROWS = [  # id, strategy, weights, options, reference settings
    ("linear sums to 1", "linear", [0.5, 0.3, 0.2], {}, dict(normalize=True)),
    ("linear not summing to 1", "linear", [2.0, 1.0, 1.0], {}, dict(normalize=True)),
    ("linear --no-normalize", "linear", [2.0, 1.0, 1.0], {"normalize": False}, dict()),
    ("task_arithmetic negative", "task_arithmetic", [1.0, -0.5, 0.25], {}, dict()),
    ("task_arithmetic --normalize", "task_arithmetic", [1.0, 3.0, 1.0], {"normalize": True}, dict(normalize=True)),
    ("ties ties-at-threshold", "ties", [1.0, 1.0, 1.0], {"density": 0.5},
     dict(sparsify="magnitude", consensus=True, normalize=True, density=0.5)),
    ("ties zero sums (equal weights, 2)", "ties", [1.0, 1.0], {"density": 0.75},
     dict(sparsify="magnitude", consensus=True, normalize=True, density=0.75)),
    ("ties negative weight", "ties", [1.0, -0.5, 0.7], {"density": 0.4},
     dict(sparsify="magnitude", consensus=True, normalize=True, density=0.4)),
    ("ties not summing to 1, --no-normalize", "ties", [0.9, 0.6, 0.3], {"density": 0.5, "normalize": False},
     dict(sparsify="magnitude", consensus=True, density=0.5)),
    ("ties --rescale l1", "ties", [1.0, 2.0, 1.0], {"density": 0.3, "rescale": "l1"},
     dict(sparsify="magnitude", consensus=True, normalize=True, density=0.3, rescale="l1")),
    ("ties --rescale keep_rate", "ties", [1.0, 2.0, 1.0], {"density": 0.3, "rescale": "keep_rate"},
     dict(sparsify="magnitude", consensus=True, normalize=True, density=0.3, rescale="keep_rate")),
    ("ties density 1", "ties", [0.5, 0.3, 0.2], {"density": 1.0},
     dict(sparsify="magnitude", consensus=True, normalize=True, density=1.0)),
    ("dare_linear (l1)", "dare_linear", [0.5, 0.3, 0.2], {"drop_rate": DROP, "seed": 3},
     dict(sparsify="random", rescale="l1")),
    ("dare_linear keep_rate", "dare_linear", [0.5, 0.3, 0.2], {"drop_rate": DROP, "seed": 3, "rescale": "keep_rate"},
     dict(sparsify="random", rescale="keep_rate")),
    ("dare_linear none, --normalize", "dare_linear", [2.0, 1.0, 1.0],
     {"drop_rate": DROP, "seed": 4, "rescale": "none", "normalize": True}, dict(sparsify="random", normalize=True)),
    ("dare_ties (l1)", "dare_ties", [1.0, -0.5, 0.7], {"drop_rate": DROP, "seed": 5},
     dict(sparsify="random", consensus=True, rescale="l1")),
    ("dare_ties --normalize keep_rate", "dare_ties", [0.5, 0.3, 0.2],
     {"drop_rate": DROP, "seed": 6, "normalize": True, "rescale": "keep_rate"},
     dict(sparsify="random", consensus=True, normalize=True, rescale="keep_rate")),
]


def one_module(mats) -> list[LoraAdapter]:
    """Adapters whose single module has ΔW = the given matrix exactly (A = I, scaling 1)."""
    out = []
    for m in mats:
        m = torch.as_tensor(m, dtype=torch.float32)
        out.append(LoraAdapter({Q: LoraModule(torch.eye(m.shape[1]), m.clone(), 1.0)}, m.shape[1],
                               float(m.shape[1]), ["q_proj"], base_model="x"))
    return out


@pytest.mark.parametrize("row", ROWS, ids=[r[0] for r in ROWS])
def test_parity_table(row):
    _, strategy, weights, options, settings = row
    mats = [T1, T2, T3][: len(weights)]
    flat = [[float(x) for r in m for x in r] for m in mats]
    masks = dare_masks(len(mats), (4, 4), options.get("seed", 0), Q) if settings.get("sparsify") == "random" else None
    expected = torch.tensor(ref_merge(flat, weights, masks=masks, **settings)).view(4, 4)

    opts = MergeOptions(strategy, **options)
    coefs = [w / sum(weights) for w in weights] if opts.normalized and opts.spec.consensus == "none" else weights
    got = general_merge([torch.tensor(m, dtype=torch.float32) for m in mats], coefs, opts, key=Q)
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)

    out, rep = merge_with_report(one_module(mats), opts.replace(weights=tuple(weights), rank=4))
    assert torch.allclose(out.modules[Q].delta_weight(), expected, atol=1e-4)
    assert rep.exact and rep.parameters["normalize"] == opts.normalized


def test_table_covers_the_edge_cases_it_claims():
    """The fixed tensors really hold ties at the threshold and zero sums (else the rows test less)."""
    flat = [float(x) for r in T1 for x in r]
    k = int(0.5 * 16)
    mags = sorted((abs(x) for x in flat), reverse=True)
    assert mags[k - 1] == mags[k]  # a tie across the threshold: keeping every tied entry keeps > k
    assert sum(1 for x in ref_trim(flat, 0.5) if x != 0) == k
    sums = [a + b for a, b in zip(flat, [float(x) for r in T2 for x in r])]
    assert sum(1 for s, a in zip(sums, flat) if s == 0 and a != 0) >= 3


def test_exactly_k_survive_and_ties_go_to_the_lowest_index():
    from llgbm_cli.merging import magnitude_trim

    t = torch.tensor([1.0, -2.0, 2.0, 2.0, -2.0, 0.5])
    assert magnitude_trim(t, 0.5).tolist() == [0.0, -2.0, 2.0, 2.0, 0.0, 0.0]
    big = torch.ones(1000)
    assert int((magnitude_trim(big, 0.3) != 0).sum()) == 300


def test_zero_sum_elects_plus_as_the_references_do():
    a, b = torch.tensor([[2.0, -1.0]]), torch.tensor([[-2.0, 1.0]])
    got = general_merge([a, b], [1.0, 1.0], MergeOptions("ties", density=1.0))
    assert got.tolist() == [[2.0, 1.0]]  # + elected on both zero sums: the positive entries survive


def test_drop_rate_zero_is_the_undropped_merge():
    mats = [T1, T2, T3]
    w = [0.5, -0.3, 0.4]
    ta = merge_adapters(one_module(mats), "task_arithmetic", w, rank=4).modules[Q].delta_weight()
    dl = merge_adapters(one_module(mats), "dare_linear", w, drop_rate=0.0, rank=4).modules[Q].delta_weight()
    assert torch.allclose(dl, ta, atol=1e-5)
    ties = merge_adapters(one_module(mats), "ties", w, density=1.0, normalize=False, rank=4).modules[Q].delta_weight()
    dt = merge_adapters(one_module(mats), "dare_ties", w, drop_rate=0.0, rank=4).modules[Q].delta_weight()
    assert torch.allclose(dt, ties, atol=1e-5)


def test_l1_rescale_preserves_the_total_magnitude_keep_rate_the_expectation():
    g = torch.Generator().manual_seed(0)
    m = torch.randn(64, 64, generator=g)
    l1 = general_merge([m], [1.0], MergeOptions("dare_linear", drop_rate=0.8, seed=1), key="k")
    assert float(l1.abs().sum()) == pytest.approx(float(m.abs().sum()), rel=1e-5)
    runs = torch.stack([general_merge([m], [1.0], MergeOptions("dare_linear", drop_rate=0.8, seed=s,
                                                                rescale="keep_rate"), key="k") for s in range(400)])
    assert float((runs.mean(0) - m).norm() / m.norm()) < 0.12  # unbiased: E[kept/(1-p)] = m


def test_defaults_follow_mergekit_registry():
    expect = {"linear": (True, "none"), "task_arithmetic": (False, "none"), "ties": (True, "none"),
              "dare_linear": (False, "l1"), "dare_ties": (False, "l1")}
    for name, (norm, resc) in expect.items():
        o = MergeOptions(name)
        assert (o.normalized, o.rescaling) == (norm, resc), name


# ---------------------------------------------------------------- output rank


def test_rank_auto_keeps_the_energy_asked_for_and_respects_max_rank():
    u, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(1)))
    v, _ = torch.linalg.qr(torch.randn(8, 8, generator=torch.Generator().manual_seed(2)))
    m = u @ torch.diag(torch.tensor([4.0, 3.0, 2.0, 1.0, 0, 0, 0, 0])) @ v.T  # σ² = 16, 9, 4, 1: total 30
    ads = one_module([m, m])
    for energy, k in [(0.5, 1), (0.83, 2), (0.84, 3), (0.96, 3), (0.97, 4), (1.0, 4)]:
        out, rep = merge_with_report(ads, "ties", density=1.0, energy=energy)
        assert out.modules[Q].rank == k and rep.retained_energy >= energy - 1e-6, (energy, rep.retained_energy)
    out, rep = merge_with_report(ads, "ties", density=1.0, energy=1.0, max_rank=2)
    assert out.modules[Q].rank == 2 and rep.retained_energy == pytest.approx(25 / 30, rel=1e-4)


def test_rank_auto_differs_per_module_and_peft_loads_the_rank_pattern(tiny, tmp_path):
    from peft import PeftModel

    model, tok = tiny
    ads = [random_adapter(model, r=4, alpha=8.0, target_modules=["q_proj", "v_proj"], seed=s) for s in range(3)]
    # one module of adapter 0 made rank-deficient: the exact merge there has a lower rank
    name = next(iter(ads[0].modules))
    for a in ads[1:]:
        a.modules[name] = LoraModule(ads[0].modules[name].A.clone(), ads[0].modules[name].B.clone() * 0.5, 2.0)
    merged, rep = merge_with_report(ads, "linear")
    assert rep.exact and rep.rank == 12 and merged.modules[name].rank == 4 and rep.rank_range == [4, 12]
    path = save_adapter(tmp_path / "m", merged)
    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(path))
    for n, m in merged.modules.items():
        lin = pm.base_model.model.get_submodule(n)
        assert lin.lora_A["default"].weight.shape[0] == m.rank
        assert torch.allclose(lin.get_delta_weight("default"), m.delta_weight(), atol=1e-6), n
    assert load_adapter(path).modules[name].rank == 4


def test_ties_auto_reports_what_it_kept(tiny):
    model, _ = tiny
    ads = [random_adapter(model, r=4, alpha=8.0, target_modules=["q_proj", "v_proj"], seed=s) for s in range(3)]
    _, fixed = merge_with_report(ads, "ties", rank=4)
    _, auto = merge_with_report(ads, "ties")
    assert auto.retained_energy >= 0.99 > fixed.retained_energy and not auto.exact
    assert auto.truncation_error == pytest.approx((1 - auto.retained_energy) ** 0.5, rel=1e-6)


# ---------------------------------------------------------------- full merged model


def test_full_model_equals_the_adapter_on_the_base(tiny, tmp_path):
    from transformers import AutoModelForCausalLM

    from llgbm_cli.models import resolve_model_path
    from llgbm_cli.services.merge import merge_to_folder

    model, tok = tiny
    ins = [save_adapter(tmp_path / f"a{s}", random_adapter(model, r=4, alpha=8.0, target_modules=["q_proj", "v_proj"],
                                                          seed=s), base_model="tiny-llama") for s in range(2)]
    base = resolve_model_path("tiny-llama")
    res = merge_to_folder(ins, tmp_path / "m", "linear", full_model=base)
    full = AutoModelForCausalLM.from_pretrained(res.full_model)
    from peft import PeftModel

    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "m"))
    ids = tok("a merged model", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.allclose(full(ids).logits, pm(ids).logits, atol=1e-4)
        assert not torch.allclose(full(ids).logits, model(ids).logits, atol=1e-4)
    assert sorted(p.name for p in (tmp_path / "m" / "merged-model").glob("*.safetensors")) == \
        sorted(p.name for p in base.glob("*.safetensors"))
    with pytest.raises(InputError, match="no model.safetensors"):
        merge_to_folder(ins, tmp_path / "m2", "linear", full_model=tmp_path)
    assert not (tmp_path / "m2").exists()
