import copy
import json
from pathlib import Path

import pytest
import torch

from llgbm_cli.adapters import LoraAdapter, LoraModule, load_adapter, random_adapter, save_adapter, weights_sha256
from llgbm_cli.errors import InputError
from llgbm_cli.merging import STRATEGIES, MergeOptions, general_merge, merge_adapters, merge_with_report
from llgbm_cli.services.merge import merge_to_folder

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
Q = "model.layers.0.self_attn.q_proj"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # Per-module linear algebra here is tiny; on a shared, oversubscribed CPU a second BLAS thread
    # only adds waiting (a 32x32 eigh went from 0.3 ms to 100 ms). Results do not depend on it.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def folders(tiny, tmp_path_factory):
    """Three saved rank-4 adapters on every projection of the tiny model, plus a rank-8 one."""
    model, _ = tiny
    root = tmp_path_factory.mktemp("adapters")
    paths = [save_adapter(root / f"a{i}", random_adapter(model, r=4, alpha=8.0, target_modules=SEVEN, seed=i),
                          base_model="tiny-llama") for i in range(3)]
    paths.append(save_adapter(root / "r8", random_adapter(model, r=8, alpha=16.0, target_modules=SEVEN, seed=7),
                              base_model="tiny-llama"))
    return paths


def dense(ad: LoraAdapter) -> dict:
    return {k: m.delta_weight() for k, m in ad.modules.items()}


def weighted_sum(adapters, weights) -> dict:
    return {k: sum(w * a.modules[k].delta_weight() for w, a in zip(weights, adapters)) for k in adapters[0].modules}


def rel(a, b) -> float:
    return float((a - b).norm() / b.norm())


def one_module(mats, name=Q) -> list[LoraAdapter]:
    """Adapters whose single module has ΔW = the given matrix exactly (A = I, scaling 1)."""
    out = []
    for m in mats:
        m = torch.as_tensor(m, dtype=torch.float32)
        r = m.shape[1]
        out.append(LoraAdapter({name: LoraModule(torch.eye(r), m.clone(), 1.0)}, r, float(r), ["q_proj"], base_model="x"))
    return out


# ---------------------------------------------------------------- every strategy, both spaces


@pytest.mark.parametrize("space", ["delta", "factors"])
@pytest.mark.parametrize("strategy", list(STRATEGIES))
def test_every_strategy_writes_a_peft_adapter(tiny, folders, tmp_path, strategy, space):
    from peft import PeftModel

    model, tok = tiny
    inputs = [str(p) for p in folders[:3]]
    before = [weights_sha256(p) for p in inputs]
    res = merge_to_folder(inputs, tmp_path / "m", strategy, [0.5, 0.3, 0.2], space=space, density=0.5,
                          drop_rate=0.5, seed=1)
    assert [weights_sha256(p) for p in inputs] == before
    merged = load_adapter(tmp_path / "m")
    src = load_adapter(inputs[0])
    assert set(merged.modules) == set(src.modules) and len(merged.modules) == 14
    # rank auto: linear, task_arithmetic and cat exact (3 x rank 4 = 12); ties/dare by energy
    if strategy in ("linear", "task_arithmetic", "cat") or space == "factors":
        assert merged.r == res.rank == (4 if space == "factors" and strategy != "cat" else 12)
    if space == "delta":
        assert res.exact == (strategy in ("linear", "task_arithmetic", "cat"))
        assert res.retained_energy >= 0.99 - 1e-9
    prov = json.loads((tmp_path / "m" / "llgbm.json").read_text())
    assert prov["strategy"] == strategy and [i["sha256"] for i in prov["inputs"]] == before
    pm = PeftModel.from_pretrained(copy.deepcopy(model), str(tmp_path / "m"))
    lin = pm.base_model.model.get_submodule(Q)
    # PEFT's own ΔW equals llgbm's: scaling and rank were written so PEFT reads them back.
    assert torch.allclose(lin.get_delta_weight("default"), merged.modules[Q].delta_weight(), atol=1e-6)
    for name in merged.modules:
        assert "default" in pm.base_model.model.get_submodule(name).lora_A
    ids = tok("merge test", return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.isfinite(pm(ids).logits).all()


# ---------------------------------------------------------------- exactness


@pytest.mark.parametrize("strategy", ["linear", "task_arithmetic"])
def test_linear_and_task_arithmetic_exact_at_full_rank(folders, strategy):
    ads = [load_adapter(p) for p in folders]  # ranks 4, 4, 4, 8
    w = [0.5, -0.3, 0.2, 0.4]
    out, rep = merge_with_report(ads, strategy, w)  # rank auto: exact
    coef = [x / sum(w) for x in w] if strategy == "linear" else w
    assert rep.weights == pytest.approx(coef) and rep.exact
    ref = weighted_sum(ads, coef)
    for k, d in dense(out).items():
        assert rel(d, ref[k]) < 1e-5, k
    # at a lower rank it is the best approximation: the error the report states is the real one
    low, rep = merge_with_report(ads, strategy, w, rank=3)
    num = sum(float((d - ref[k]).norm() ** 2) for k, d in dense(low).items())
    den = sum(float(r.norm() ** 2) for r in ref.values())
    assert rep.truncation_error == pytest.approx((num / den) ** 0.5, rel=1e-3) and rep.truncation_error > 0.1


def test_cat_is_exact_at_any_input_ranks(folders):
    ads = [load_adapter(p) for p in (folders[0], folders[3])]  # ranks 4 and 8
    out, rep = merge_with_report(ads, "cat", [0.7, -1.5])
    assert rep.rank == 12 and rep.exact and rep.truncation_error == 0.0
    ref = weighted_sum(ads, [0.7, -1.5])
    for k, d in dense(out).items():
        assert torch.allclose(d, ref[k], atol=1e-6), k
    with pytest.raises(InputError, match="cat"):
        merge_adapters(ads, "cat", rank=6)


D1 = [[16, -1, -9, 2], [-3, 15, 4, -10], [11, -5, 14, 6], [-7, 12, -8, 13]]
D2 = [[12, 10, 3, -16], [9, -1, 13, 2], [-14, 4, -6, 15], [5, -11, 7, -8]]
# density 0.5 keeps the 8 largest magnitudes (9..16) of each; signs elected from the weighted sum;
# each entry is the weighted mean of the kept values that agree with the elected sign.
TIES_EQUAL = [[14, 10, -9, -16], [9, 15, 13, -10], [-14, 0, 14, 15], [0, 12, 0, 13]]
TIES_1_3 = [[13, 10, -9, -16], [9, 15, 13, -10], [-14, 0, 14, 15], [0, -11, 0, 13]]


@pytest.mark.parametrize("weights,expected", [([1, 1], TIES_EQUAL), ([1, 3], TIES_1_3)])
def test_ties_hand_computed_4x4(weights, expected):
    exp = torch.tensor(expected, dtype=torch.float32)
    t = general_merge([torch.tensor(D1, dtype=torch.float32), torch.tensor(D2, dtype=torch.float32)],
                      weights, MergeOptions("ties", density=0.5))
    assert torch.equal(t, exp)
    out = merge_adapters(one_module([D1, D2]), "ties", weights, density=0.5, rank=4)  # full rank
    assert torch.allclose(out.modules[Q].delta_weight(), exp, atol=1e-4)


def test_dare_mean_over_seeds_approaches_the_undropped_merge():
    g = torch.Generator().manual_seed(0)
    mats = [torch.randn(12, 6, generator=g) @ torch.randn(6, 20, generator=g) for _ in range(3)]
    ads = [LoraAdapter({Q: LoraModule(torch.randn(6, 20, generator=g), torch.randn(12, 6, generator=g), 0.5)},
                       6, 3.0, ["q_proj"]) for _ in mats]
    w = [0.5, 0.3, 0.2]
    ref = weighted_sum(ads, w)[Q]
    runs = [merge_adapters(ads, "dare_linear", w, drop_rate=0.5, seed=s, rank=12, rescale="keep_rate")
            .modules[Q].delta_weight()
            for s in range(120)]
    one, few, many = rel(runs[0], ref), rel(torch.stack(runs[:20]).mean(0), ref), rel(torch.stack(runs).mean(0), ref)
    assert one > 0.3 and many < few < one and many < 0.1


def test_dare_same_seed_same_output_independent_of_module_order(folders):
    ads = [load_adapter(p) for p in folders[:3]]
    a = merge_adapters(ads, "dare_ties", drop_rate=0.7, seed=5)
    b = merge_adapters(ads, "dare_ties", drop_rate=0.7, seed=5)
    c = merge_adapters(ads, "dare_ties", drop_rate=0.7, seed=6)
    rev = [LoraAdapter(dict(reversed(list(x.modules.items()))), x.r, x.alpha, x.target_modules, base_model=x.base_model)
           for x in ads]
    d = merge_adapters(rev, "dare_ties", drop_rate=0.7, seed=5)
    for k in a.modules:
        assert torch.equal(a.modules[k].A, b.modules[k].A) and torch.equal(a.modules[k].B, b.modules[k].B)
        assert torch.allclose(a.modules[k].delta_weight(), d.modules[k].delta_weight(), atol=1e-6)
    assert not torch.allclose(a.modules[Q].delta_weight(), c.modules[Q].delta_weight())


def test_factor_space_has_cross_terms_delta_space_does_not(folders):
    ads = [load_adapter(p) for p in folders[:2]]
    ref = weighted_sum(ads, [0.5, 0.5])
    delta = merge_adapters(ads, "linear", rank=8)
    factors = merge_adapters(ads, "linear", space="factors")
    assert rel(delta.modules[Q].delta_weight(), ref[Q]) < 1e-5
    assert rel(factors.modules[Q].delta_weight(), ref[Q]) > 0.3
    same = merge_adapters([ads[0], ads[0]], "linear", space="factors")  # no cross terms when equal
    assert rel(same.modules[Q].delta_weight(), ads[0].modules[Q].delta_weight()) < 1e-5
    with pytest.raises(InputError, match="equal ranks"):
        merge_adapters([ads[0], load_adapter(folders[3])], "ties", space="factors")


def test_module_above_16m_elements_merges():
    # torch.quantile refuses inputs above 16M elements; trimming uses kthvalue instead.
    out_f, in_f = 128, 131_100
    assert out_f * in_f > 16_777_216
    g = torch.Generator().manual_seed(0)
    ads = [LoraAdapter({"model.layers.0.mlp.down_proj": LoraModule(torch.randn(2, in_f, generator=g),
                                                                    torch.randn(out_f, 2, generator=g), 1.0)},
                       2, 2.0, ["down_proj"]) for _ in range(2)]
    out, rep = merge_with_report(ads, "ties", density=0.3, rank=2)
    m = out.modules["model.layers.0.mlp.down_proj"]
    assert m.A.shape == (2, in_f) and m.B.shape == (out_f, 2)
    assert torch.isfinite(m.A).all() and torch.isfinite(m.B).all() and 0 < rep.truncation_error < 1


# ---------------------------------------------------------------- bad input


def test_mismatched_adapters_one_error_lists_each(tiny, tmp_path, folders):
    model, _ = tiny
    other = save_adapter(tmp_path / "other", random_adapter(model, r=4, target_modules=["q_proj", "v_proj"], seed=1),
                         base_model="another-base")
    with pytest.raises(InputError) as e:
        merge_to_folder([folders[0], other], tmp_path / "m")
    msg = e.value.message
    assert "different base models" in msg and "tiny-llama" in msg and "another-base" in msg
    assert "lacks 10 module(s)" in msg
    wide = load_adapter(folders[1])
    wide.modules[Q] = LoraModule(torch.randn(4, 48), torch.randn(40, 4), 2.0)
    big = save_adapter(tmp_path / "big", wide, base_model="tiny-llama")
    with pytest.raises(InputError, match=r"q_proj maps 48->40 but .* maps 32->32"):
        merge_to_folder([folders[0], big], tmp_path / "m")
    assert not (tmp_path / "m").exists()


def test_bad_arguments(folders, tmp_path):
    ins = [str(p) for p in folders[:2]]
    with pytest.raises(InputError, match="nope"):
        merge_to_folder([ins[0], str(tmp_path / "nope")], tmp_path / "m")
    with pytest.raises(InputError, match="--weights: 3 value"):
        merge_to_folder(ins, tmp_path / "m", weights=[1, 2, 3])
    for kw, flag in [({"density": 0.0}, "--density"), ({"density": 1.2}, "--density"),
                     ({"drop_rate": -0.1}, "--drop-rate"), ({"drop_rate": 1.5}, "--drop-rate"),
                     ({"drop_rate": 1.0}, "--drop-rate: 1 drops every entry"), ({"rank": 0}, "--rank"),
                     ({"rank": 33}, "--rank: 33 is above the size of module"), ({"energy": 0}, "--energy"),
                     ({"rescale": "l2"}, "--rescale")]:
        with pytest.raises(InputError, match=flag):
            merge_to_folder(ins, tmp_path / "m", "ties", **kw)
    with pytest.raises(InputError, match="valid: linear, task_arithmetic, ties"):
        merge_to_folder(ins, tmp_path / "m", "tie")
    with pytest.raises(InputError, match="overlaps the input"):
        merge_to_folder(ins, folders[0], force=True)
    with pytest.raises(InputError, match="sum to 0"):
        merge_to_folder(ins, tmp_path / "m", "linear", weights=[1, -1])
    assert not (tmp_path / "m").exists()


def test_existing_out_needs_force_and_inputs_stay_untouched(folders, tmp_path):
    ins = [str(p) for p in folders[:3]]
    before = {p: (weights_sha256(p), (Path(p) / "adapter_config.json").read_text()) for p in ins}
    merge_to_folder(ins, tmp_path / "m", "ties")
    first = weights_sha256(tmp_path / "m")
    with pytest.raises(InputError, match="--force"):
        merge_to_folder(ins, tmp_path / "m", "linear")
    assert weights_sha256(tmp_path / "m") == first
    merge_to_folder(ins, tmp_path / "m", "linear", force=True)
    assert weights_sha256(tmp_path / "m") != first
    assert {p: (weights_sha256(p), (Path(p) / "adapter_config.json").read_text()) for p in ins} == before


# ---------------------------------------------------------------- CLI


def test_cli_list_and_merge_by_zoo_id(cli, tiny_project, folders):
    from llgbm_cli.zoo_manifest import Zoo, ZooEntry

    r = cli("--json", "merge", "--list")
    assert r.exit_code == 0, r.stderr
    rows = {s["name"]: s for s in json.loads(r.stdout)["strategies"]}
    assert list(rows) == ["linear", "task_arithmetic", "ties", "dare_linear", "dare_ties", "cat"]
    assert rows["ties"]["params"]["density"] == 0.5 and rows["dare_ties"]["params"]["drop_rate"] == 0.9
    assert all(s["reference"].startswith("https://") for s in rows.values())

    zoo = Zoo(tiny_project.parent / "runs" / "zoo")
    for i, p in enumerate(folders[:2]):
        zoo.upsert(ZooEntry(id=f"t{i}", path=str(p), task="arc-easy"))
    zoo.folder.mkdir(parents=True)
    zoo.save()
    out = tiny_project.parent / "merged"
    r = cli("-p", tiny_project, "merge", "--strategy", "ties", "t0", str(folders[2]), "--weights", "0.5,0.5",
            "--density", "0.4", "--out", out, "--json")
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["strategy"] == "ties" and d["parameters"] == {"density": 0.4, "normalize": True, "rescale": "none"}
    assert d["retained_energy"] >= 0.99
    assert d["inputs"][0]["input"] == "t0" and d["inputs"][0]["sha256"] == weights_sha256(folders[0])
    prov = json.loads((out / "llgbm.json").read_text())
    assert prov["config"]["merge"]["density"] == 0.4 and prov["config"]["model"]["base"] == "tiny-llama"

    r = cli("-p", tiny_project, "merge", "t0", "t1", "--out", out)
    assert r.exit_code == 2 and "--force" in r.stderr and "Traceback" not in r.stderr + r.stdout
    r = cli("-p", tiny_project, "merge", "t0", "t9", "--out", tiny_project.parent / "x")
    assert r.exit_code == 2 and "t9" in r.stderr and "zoo.jsonl" in r.stderr
    r = cli("-p", tiny_project, "merge", "-s", "dare", "t0", "t1", "--out", tiny_project.parent / "x")
    assert r.exit_code == 2 and "--strategy: unknown merge strategy" in r.stderr and "dare_ties" in r.stderr
    r = cli("-p", tiny_project, "merge", "t0", "t1", "--density", "1.5", "--out", tiny_project.parent / "x")
    assert r.exit_code == 2 and "--density: 1.5 must be in (0, 1]" in r.stderr and "llgbm.toml" not in r.stderr
    r = cli("-p", tiny_project, "merge", "t0", "t1", "--set", "merge.drop_rate=1.0", "--out", tiny_project.parent / "x")
    assert r.exit_code == 2 and "--set merge.drop_rate=1.0: 1 drops every entry" in r.stderr
    r = cli("-p", tiny_project, "merge", "t0", "t1", "--rank", "64", "--out", tiny_project.parent / "x")
    assert r.exit_code == 2 and "--rank: 64 is above the size of module" in r.stderr
    text = tiny_project.read_text()
    tiny_project.write_text(text + "\n[merge]\ndensity = 0\n")
    r = cli("-p", tiny_project, "merge", "t0", "t1", "--out", tiny_project.parent / "x")
    assert r.exit_code == 2 and "merge.density: 0 must be in (0, 1]" in r.stderr and tiny_project.name in r.stderr
    tiny_project.write_text(text)
    r = cli("-p", tiny_project, "merge", "t0", "t1", "--weights", "1,x", "--out", tiny_project.parent / "x")
    assert r.exit_code == 2 and "--weights" in r.stderr
    assert not (tiny_project.parent / "x").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message shown when no GPU is present")
def test_cuda_without_gpu_is_a_clear_error(folders):
    with pytest.raises(InputError, match="no CUDA device"):
        merge_adapters([load_adapter(p) for p in folders[:2]], "ties", device="cuda")


def test_cli_options_reach_the_engine_and_full_model(cli, tiny_project, folders):
    out = tiny_project.parent / "m"
    r = cli("-p", tiny_project, "--json", "merge", str(folders[0]), str(folders[1]), "-s", "dare_linear",
            "--drop-rate", "0", "--rescale", "keep_rate", "--normalize", "--rank", "3", "--full-model", "--out", out)
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["parameters"] == {"normalize": True, "drop_rate": 0.0, "seed": 0, "rescale": "keep_rate"}
    assert d["rank"] == 3 and d["rank_range"] == [3, 3] and d["weights"] == [0.5, 0.5]
    assert (out / "merged-model" / "model.safetensors").exists() and (out / "merged-model" / "config.json").exists()
    r = cli("-p", tiny_project, "merge", str(folders[0]), str(folders[1]), "--rank", "three", "--out", out, "--force")
    assert r.exit_code == 2 and "--rank 'three'" in r.stderr
    r = cli("-p", tiny_project, "merge", str(folders[0]), str(folders[1]), "--max-rank", "0", "--out", out, "--force")
    assert r.exit_code == 2 and "--max-rank: 0 must be a positive integer" in r.stderr


def test_options_from_config_name_their_source(tmp_path):
    from llgbm_cli.config import load_config
    from llgbm_cli.errors import ConfigError
    from llgbm_cli.services.merge import merge_options

    p = tmp_path / "llgbm.toml"
    p.write_text("[merge]\nstrategy = 'dare_ties'\nrank = 8\ndrop_rate = 0.0\n")
    r = load_config(p, {"merge.density": 0.3, "merge.energy": 0.9}, flags={"merge.energy": "--energy"})
    o = merge_options(r)
    assert (o.strategy, o.rank, o.drop_rate, o.density, o.energy) == ("dare_ties", 8, 0.0, 0.3, 0.9)
    assert o.source("rank") == "llgbm.toml: merge.rank" and o.source("density") == "--set merge.density=0.3"
    assert o.source("energy") == "--energy" and o.source("seed") == "merge.seed (default)"
    with pytest.raises(InputError, match=r"^eval method merge:x: unknown merge strategy"):
        merge_options(r, strategy=("x", "eval method merge:x"))
    with pytest.raises(InputError, match=r"llgbm.toml: merge.rank: 8 is above the size of module"):
        merge_adapters(one_module([torch.ones(4, 4)] * 2), o)
    p.write_text("[merge]\nrank = 'eight'\n")
    with pytest.raises(ConfigError, match="merge.rank"):
        load_config(p)
    assert load_config(p, {"merge.rank": "auto"}).config.merge.rank == "auto"
