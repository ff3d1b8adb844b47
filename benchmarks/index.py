"""Delta index: query latency and recall@10 of `flat` and `hnsw` against NumPy brute force.

Synthetic deltas of dimension 576 (SmolLM2's hidden size) with the structure of an adapter zoo:
many task clusters, each spread along a low-dimensional subspace (a training trajectory), plus a
little isotropic noise. Queries are fresh draws from the same clusters (not indexed rows).
Everything is measured in one run: NumPy brute force (the naive way) is the reference for
latency, and its exact top-10 is the ground truth for recall.

    python benchmarks/index.py                 # 100k vectors
    python benchmarks/index.py --sizes 100000 1000000

Prints one JSON line: per size, build seconds, index memory, median single-query latency and
recall@10 for numpy / flat / hnsw, and the latency ratio brute force / hnsw.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llgbm_cli.index import DeltaIndex, brute_force, normalize_rows  # noqa: E402


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def synthetic(n: int, d: int, clusters: int, latent: int, seed: int, chunk: int = 100_000) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, d)).astype(np.float32)
    bases = (rng.normal(size=(clusters, latent, d)) * (0.5 / np.sqrt(latent))).astype(np.float32)
    out = np.empty((n, d), dtype=np.float32)
    for s in range(0, n, chunk):
        m = min(chunk, n - s)
        c = rng.integers(0, clusters, m)
        z = rng.normal(size=(m, 1, latent)).astype(np.float32)
        out[s : s + m] = centers[c] + (z @ bases[c])[:, 0] + 0.05 * rng.normal(size=(m, d)).astype(np.float32)
    return out


def single_query_ms(fn, queries: np.ndarray) -> float:
    fn(queries[:1])  # warm-up
    times = []
    for q in queries:
        t = time.perf_counter()
        fn(q[None, :])
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times)


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    k = truth.shape[1]
    return float(np.mean([len(set(a.tolist()) & set(b.tolist())) / k for a, b in zip(found, truth)]))


def say(msg: str) -> None:
    print(f"[index bench] {msg}", file=sys.stderr, flush=True)


def run_size(n: int, args) -> dict:
    d = args.dim
    say(f"n={n}: generating")
    data = synthetic(n + args.queries, d, max(10, n // 1000), 16, args.seed)
    # Normalized in place once (cosine is unchanged) so the 1M run holds fewer 2.3 GB copies.
    data /= np.maximum(np.linalg.norm(data, axis=1, keepdims=True), 1e-12)
    x, queries = data[:n], data[n:]
    xn = x
    ids = [str(i) for i in range(n)]
    res = {"n": n, "dim": d}

    say(f"n={n}: numpy brute force")
    t = time.perf_counter()
    _, truth = brute_force(xn, queries, 10)
    res["numpy_batch_seconds"] = round(time.perf_counter() - t, 3)
    single = queries[: args.brute_single]

    def numpy_one(q):
        sims = xn @ normalize_rows(q)[0]
        top = np.argpartition(-sims, 9)[:10]
        return top[np.argsort(-sims[top])]

    res["numpy_single_ms"] = round(single_query_ms(numpy_one, single), 3)
    res["numpy_memory_bytes"] = int(xn.nbytes)
    say(f"n={n}: numpy single query {res['numpy_single_ms']} ms")

    out = {}
    for kind in ("flat", "hnsw"):
        params = {"hnsw_m": args.hnsw_m, "hnsw_ef_construction": args.ef_construction, "hnsw_ef_search": args.ef_search}
        say(f"n={n}: building {kind}")
        before = rss_bytes()
        t = time.perf_counter()
        idx = DeltaIndex.build(x, ids, kind=kind, params=params)
        build = time.perf_counter() - t
        grown = rss_bytes() - before
        _, found = idx.search(queries, 10)
        lat = single_query_ms(lambda q: idx.search(q, 10), queries[: args.single])
        import faiss

        out[kind] = {
            "build_seconds": round(build, 3),
            "memory_bytes": int(faiss.serialize_index(idx.index).nbytes),
            "rss_growth_bytes": int(grown),
            "single_ms": round(lat, 4),
            "recall_at_10": round(recall(found, truth), 4),
            "speedup_vs_numpy": round(res["numpy_single_ms"] / lat, 1),
        }
        if kind == "flat":
            out[kind]["equals_numpy_top10"] = bool(np.array_equal(found, truth))
        say(f"n={n}: {kind} {out[kind]}")
        del idx
    res.update(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--queries", type=int, default=200, help="queries for recall (batched)")
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time (flat/hnsw)")
    ap.add_argument("--brute-single", type=int, default=20, help="queries timed one at a time (numpy)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import faiss

    results = [run_size(n, args) for n in args.sizes]
    print(json.dumps({
        "benchmark": "index",
        "threads": faiss.omp_get_max_threads(),
        "hnsw": {"m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search},
        "results": results,
    }))


if __name__ == "__main__":
    main()
