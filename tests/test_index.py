"""The delta index: exactness of `flat`, approximate kinds, save/load, refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest

from llgbm_cli.errors import InputError
from llgbm_cli.index import KINDS, DeltaIndex, brute_force, get_kind, normalize_rows

SOURCE = {"spec": {"layers": [-1], "pool": "last_token"}, "base_fingerprint": "aaaa", "probe_fingerprint": "pppp"}
PARAMS = {"hnsw_m": 16, "hnsw_ef_construction": 100, "hnsw_ef_search": 64, "ivf_nlist": 8, "ivf_nprobe": 8,
          "ivfpq_code_size": 16}


def _data(n=300, d=48, q=20, seed=0):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(12, d))
    x = centers[rng.integers(0, 12, n)] + 0.3 * rng.normal(size=(n, d))
    qs = centers[rng.integers(0, 12, q)] + 0.3 * rng.normal(size=(q, d))
    return x.astype(np.float32), qs.astype(np.float32)


def test_flat_equals_brute_force_exactly():
    x, q = _data()
    ids = [f"a{i}" for i in range(len(x))]
    idx = DeltaIndex.build(x, ids, kind="flat", source=SOURCE)
    s, r = idx.search(q, 10)
    bs, br = brute_force(x, q, 10)
    np.testing.assert_array_equal(r, br)
    np.testing.assert_allclose(s, bs, rtol=0, atol=1e-5)
    # scores are cosines of the raw (unnormalized) vectors
    cos = (normalize_rows(q) @ normalize_rows(x).T).max(axis=1)
    np.testing.assert_allclose(s[:, 0], cos, atol=1e-5)


def test_build_does_not_modify_input_and_keeps_zero_rows_finite():
    x, q = _data(n=50)
    x[3] = 0
    before = x.copy()
    idx = DeltaIndex.build(x, [str(i) for i in range(50)])
    np.testing.assert_array_equal(x, before)
    s, _ = idx.search(q, 50)
    assert np.isfinite(s).all()


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_kinds_find_most_true_neighbours(kind):
    x, q = _data()
    idx = DeltaIndex.build(x, [str(i) for i in range(len(x))], kind=kind, params=PARAMS)
    _, r = idx.search(q, 10)
    _, br = brute_force(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(r, br)])
    assert recall >= 0.9
    assert idx.meta["params"] == {k: PARAMS[k] for k in KINDS[kind].params}


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf", "ivfpq"])
def test_save_and_reload_give_the_same_answers(tmp_path, kind):
    x, q = _data()
    ids = [f"id-{i}" for i in range(len(x))]
    tasks = ["t%d" % (i % 3) for i in range(len(x))]
    idx = DeltaIndex.build(x, ids, kind=kind, params=PARAMS, tasks=tasks, source=SOURCE)
    s1, r1 = idx.search(q, 7)
    idx.save(tmp_path / "ix")
    back = DeltaIndex.load(tmp_path / "ix")
    s2, r2 = back.search(q, 7)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(s1, s2)
    assert back.ids == ids and back.tasks == tasks and back.meta["source"] == SOURCE
    assert back.hits(q[0], 1)[0].id == ids[r1[0, 0]]


def test_save_refuses_overwrite_without_force(tmp_path):
    x, _ = _data(n=20)
    idx = DeltaIndex.build(x, [str(i) for i in range(20)])
    idx.save(tmp_path / "ix")
    with pytest.raises(InputError, match="--force"):
        idx.save(tmp_path / "ix")
    idx.save(tmp_path / "ix", force=True)


def test_k_is_clamped_to_index_size():
    x, q = _data(n=5)
    idx = DeltaIndex.build(x, list("abcde"))
    s, r = idx.search(q[:1], 50)
    assert r.shape == (1, 5) and sorted(r[0].tolist()) == [0, 1, 2, 3, 4]


def test_unknown_kind_lists_valid_kinds():
    with pytest.raises(InputError) as e:
        get_kind("annoy")
    assert "flat" in e.value.message and "hnsw" in e.value.message and "ivf" in e.value.message


def test_refusals_dimension_spec_empty_nonfinite():
    x, q = _data(n=30, d=16)
    idx = DeltaIndex.build(x, [str(i) for i in range(30)], source=SOURCE)
    with pytest.raises(InputError, match="dimension 17"):
        idx.search(np.zeros((1, 17), np.float32), 3)
    with pytest.raises(InputError, match="dimension 8"):
        idx.check_source(SOURCE, what="the predictor", dim=8)
    other = dict(SOURCE, spec={"layers": [-2], "pool": "last_token"})
    with pytest.raises(InputError, match="delta spec"):
        idx.check_source(other, what="the predictor", dim=16)
    with pytest.raises(InputError, match="probe fingerprint"):
        idx.check_source(dict(SOURCE, probe_fingerprint="zz"), what="the predictor", dim=16)
    idx.check_source(SOURCE, what="the predictor", dim=16)  # same source: accepted
    with pytest.raises(InputError, match="empty"):
        DeltaIndex.build(np.zeros((0, 16), np.float32), [])
    bad = x.copy()
    bad[2, 0] = np.nan
    with pytest.raises(InputError, match="non-finite"):
        DeltaIndex.build(bad, [str(i) for i in range(30)])


def test_ivf_nlist_above_count_is_lowered_and_said():
    x, _ = _data(n=6, d=8)
    idx = DeltaIndex.build(x, list("abcdef"), kind="ivf", params=dict(PARAMS, ivf_nlist=100))
    assert idx.meta["params"]["ivf_nlist"] == 6 and "lowered" in idx.meta["notes"][0]


def test_cuda_without_gpu_is_a_clear_error():
    from llgbm_cli.index import gpu_count

    if gpu_count() > 0:
        pytest.skip("a GPU is visible to FAISS")
    x, _ = _data(n=10, d=8)
    with pytest.raises(InputError, match="index.device"):
        DeltaIndex.build(x, [str(i) for i in range(10)], device="cuda")


def test_corrupt_or_missing_index_folder(tmp_path):
    with pytest.raises(InputError, match="llgbm index build"):
        DeltaIndex.load(tmp_path / "nope")
    x, _ = _data(n=10, d=8)
    DeltaIndex.build(x, [str(i) for i in range(10)]).save(tmp_path / "ix")
    (tmp_path / "ix" / "ids.json").write_text(json.dumps({"ids": ["a"]}))
    with pytest.raises(InputError, match="does not match"):
        DeltaIndex.load(tmp_path / "ix")


def _recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1] for a, b in zip(found, truth)]))


def test_ivfpq_trades_bytes_per_vector_for_recall():
    import faiss

    x, q = _data(n=1000, q=40)
    ids = [str(i) for i in range(len(x))]
    _, truth = brute_force(x, q, 10)
    flat = faiss.serialize_index(DeltaIndex.build(x, ids).index).nbytes
    got = {}
    for code in (4, 48):  # 48 bytes = one code per dimension of 48: close to exact
        idx = DeltaIndex.build(x, ids, kind="ivfpq", params={**PARAMS, "ivfpq_code_size": code})
        got[code] = (_recall(idx.search(q, 10)[1], truth), faiss.serialize_index(idx.index).nbytes)
        assert idx.meta["params"]["ivfpq_code_size"] == code
    assert got[48][0] >= 0.85 > got[4][0]
    assert got[4][1] < got[48][1] < 0.6 * flat


@pytest.mark.parametrize("kind", ["ivf", "ivfpq"])
def test_shards_merged_answer_exactly_as_one_build(kind):
    x, q = _data(n=1000)
    ids = [str(i) for i in range(len(x))]
    params = {**PARAMS, "train_rows": 600}
    one = DeltaIndex.build(x, ids, kind=kind, params=params, seed=3)
    sharded = DeltaIndex.build(x, ids, kind=kind, params={**params, "shard_rows": 300}, seed=3)
    assert sharded.index.ntotal == 1000
    assert any("4 shards" in n for n in sharded.meta["notes"])
    assert any("600 of 1000" in n for n in one.meta["notes"])
    s1, r1 = one.search(q, 10)
    s2, r2 = sharded.search(q, 10)
    np.testing.assert_array_equal(r1, r2)
    np.testing.assert_array_equal(s1, s2)


def test_ivfpq_refuses_bad_code_size_and_tiny_zoos():
    x, _ = _data(n=300)
    ids = [str(i) for i in range(300)]
    with pytest.raises(InputError, match=r"index.ivfpq_code_size 10 must divide the delta dimension 48.*16"):
        DeltaIndex.build(x, ids, kind="ivfpq", params={**PARAMS, "ivfpq_code_size": 10})
    with pytest.raises(InputError, match="at least 256 deltas.*there are 100.*flat"):
        DeltaIndex.build(x[:100], ids[:100], kind="ivfpq", params=PARAMS)
