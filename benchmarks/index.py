"""Delta index: memory per vector, query latency and recall@10 of `flat`, `hnsw` and `ivfpq`.

Synthetic deltas of dimension 576 (SmolLM2's hidden size) with the structure of an adapter zoo:
one task cluster per 1,000 vectors, each spread along its own 16-dimensional subspace (a training
trajectory), plus a little isotropic noise. Queries are fresh draws from the same clusters (not
indexed rows). The vectors come in blocks of 50,000, each from its own seeded generator, so any
block can be made again instead of kept: sizes above ``--materialize-max`` are never held in
memory as floats. There only `ivfpq` is built (trained on a sample, filled shard by shard with
:func:`llgbm_cli.index.fill_in_shards`), and the exact top-10 of every query is found by brute
force over the same blocks as they stream past (a running top-10), which is the recall reference.
Up to ``--materialize-max`` the whole matrix is held and NumPy brute force, `flat` and `hnsw` run
beside `ivfpq` on the same vectors.

    python benchmarks/index.py --sizes 100000                      # quick
    nice -n 10 python benchmarks/index.py --sizes 1000000 --ef-construction 100
    nice -n 10 python benchmarks/index.py --sizes 5000000 --kinds ivfpq

Prints one JSON line: per size and kind, build seconds, bytes per vector (serialized index size
divided by the vector count), median single-query latency and recall@10 against exact search,
with the latency ratio NumPy brute force / kind where brute force ran, the load average at start
and end, and the process's peak resident memory.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llgbm_cli.index import brute_force, fill_in_shards, get_kind, normalize_rows  # noqa: E402

BLOCK = 50_000
LATENT = 16


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class Synthetic:
    """n clustered vectors (plus queries) made block by block; block b is the same on every call."""

    def __init__(self, n: int, d: int, seed: int):
        self.n, self.d, self.seed = n, d, seed
        self.clusters = max(10, n // 1000)
        rng = np.random.default_rng([seed, n])
        self.centers = rng.normal(size=(self.clusters, d)).astype(np.float32)
        self.bases = (rng.normal(size=(self.clusters, LATENT, d)) * (0.5 / np.sqrt(LATENT))).astype(np.float32)

    def _draw(self, rng, m: int) -> np.ndarray:
        c = rng.integers(0, self.clusters, m)
        z = rng.normal(size=(m, LATENT)).astype(np.float32)
        out = 0.05 * rng.normal(size=(m, self.d)).astype(np.float32)
        out += self.centers[c]
        order = np.argsort(c, kind="stable")  # one small matmul per cluster present in the block
        cs = c[order]
        cuts = np.flatnonzero(np.diff(cs)) + 1
        for grp in np.split(order, cuts):
            out[grp] += z[grp] @ self.bases[c[grp[0]]]
        return normalize_rows(out)  # cosine is unchanged; stored normalized so it is done once

    def block(self, b: int) -> np.ndarray:
        m = min(BLOCK, self.n - b * BLOCK)
        return self._draw(np.random.default_rng([self.seed, self.n, b]), m)

    def blocks(self, start_row: int = 0, stop_row: int | None = None):
        stop_row = self.n if stop_row is None else stop_row
        for b in range(start_row // BLOCK, -(-stop_row // BLOCK)):
            lo, hi = max(start_row, b * BLOCK), min(stop_row, (b + 1) * BLOCK)
            yield lo, self.block(b)[lo - b * BLOCK : hi - b * BLOCK]

    def queries(self, q: int) -> np.ndarray:
        return self._draw(np.random.default_rng([self.seed, self.n, 10**9]), q)

    def matrix(self) -> np.ndarray:
        out = np.empty((self.n, self.d), dtype=np.float32)
        for s, blk in self.blocks():
            out[s : s + len(blk)] = blk
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
    print(f"[index bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


class RunningTopK:
    """Exact top-k by inner product over row blocks that arrive one at a time."""

    def __init__(self, queries: np.ndarray, k: int):
        self.q, self.k = queries, k
        self.scores = np.full((len(queries), 0), -np.inf, dtype=np.float32)
        self.rows = np.zeros((len(queries), 0), dtype=np.int64)

    def update(self, start: int, block: np.ndarray) -> None:
        sims = self.q @ block.T
        kk = min(self.k, block.shape[0])
        part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        s = np.concatenate([self.scores, np.take_along_axis(sims, part, axis=1)], axis=1)
        r = np.concatenate([self.rows, part + start], axis=1)
        order = np.argsort(-s, axis=1, kind="stable")[:, : self.k]
        self.scores, self.rows = np.take_along_axis(s, order, axis=1), np.take_along_axis(r, order, axis=1)


def ivfpq_index(data: Synthetic, args, x: np.ndarray | None, topk: RunningTopK | None):
    """Train on the first ``train_rows`` vectors (a fair sample: rows are i.i.d.), fill in shards, merge."""
    params = {"ivf_nlist": args.nlist, "ivf_nprobe": args.nprobe[0], "ivfpq_code_size": args.code_size}
    index = get_kind("ivfpq").make(data.d, data.n, params)
    index.cp.seed = args.seed
    ntrain = min(args.train_rows, data.n)
    t = time.perf_counter()
    train = x[:ntrain] if x is not None else np.concatenate([b for _, b in data.blocks(0, ntrain)])[:ntrain]
    index.train(train)
    del train
    train_s = time.perf_counter() - t

    def shards():
        for s in range(0, data.n, args.shard_rows):
            stop = min(data.n, s + args.shard_rows)
            if x is not None:
                yield x[s:stop]
                continue
            parts = []
            for start, blk in data.blocks(s, stop):
                topk.update(start, blk)  # the exact reference, from the same pass over the data
                parts.append(blk)
            yield np.concatenate(parts)

    index = fill_in_shards(index, shards())
    return index, train_s, time.perf_counter() - t


def run_size(n: int, args) -> dict:
    import faiss

    d = args.dim
    data = Synthetic(n, d, args.seed)
    queries = data.queries(args.queries)
    res: dict = {"n": n, "dim": d, "clusters": data.clusters}
    materialize = n <= args.materialize_max
    x = truth = None
    if materialize:
        say(f"n={n}: generating")
        x = data.matrix()
        say(f"n={n}: numpy brute force")
        t = time.perf_counter()
        _, truth = brute_force(x, queries, 10)
        res["numpy_batch_seconds"] = round(time.perf_counter() - t, 3)

        def numpy_one(q):
            sims = x @ q[0]
            top = np.argpartition(-sims, 9)[:10]
            return top[np.argsort(-sims[top])]

        res["numpy"] = {"single_ms": round(single_query_ms(numpy_one, queries[: args.brute_single]), 3),
                        "bytes_per_vector": d * 4, "memory_bytes": int(x.nbytes), "recall_at_10": 1.0}
        say(f"n={n}: numpy {res['numpy']}")
    else:
        res["not_materialized"] = (f"{n} x {d} float32 = {n * d * 4 / 1e9:.1f} GB is never held; `flat`/`hnsw` "
                                   "need all of it in memory and are left out at this size")

    out = {}
    for kind in args.kinds:
        if kind in ("flat", "hnsw") and not materialize:
            continue
        say(f"n={n}: building {kind}")
        before = rss_bytes()
        t = time.perf_counter()
        entry: dict = {}
        if kind == "ivfpq":
            topk = None if materialize else RunningTopK(queries, 10)
            index, train_s, build_s = ivfpq_index(data, args, x, topk)
            if not materialize:
                truth = topk.rows
                entry["exact_reference"] = "running top-10 over the streamed blocks"
            entry.update(train_seconds=round(train_s, 3), train_rows=min(args.train_rows, n),
                         shard_rows=args.shard_rows, nlist=args.nlist, code_size=args.code_size)
            search = index.search
            recalls = {}
            for p in args.nprobe:
                index.nprobe = p
                recalls[str(p)] = round(recall(index.search(queries, 10)[1], truth), 4)
            entry["recall_at_10_by_nprobe"] = recalls
            index.nprobe = args.nprobe[0]
            entry["nprobe_timed"] = args.nprobe[0]
            entry["recall_at_10"] = recalls[str(args.nprobe[0])]
        else:
            params = {"hnsw_m": args.hnsw_m, "hnsw_ef_construction": args.ef_construction,
                      "hnsw_ef_search": args.ef_search}
            # What DeltaIndex.build does, minus its normalized copy: x is normalized already, and a
            # second 2.3 GB copy at 1M does not fit beside the other jobs on this machine.
            index = get_kind(kind).make(d, n, params)
            index.add(x)
            build_s = time.perf_counter() - t
            search = index.search
            found = index.search(queries, 10)[1]
            entry["recall_at_10"] = round(recall(found, truth), 4)
            if kind == "flat":
                entry["equals_numpy_top10"] = bool(np.array_equal(found, truth))
        grown = rss_bytes() - before
        lat = single_query_ms(lambda q: search(q, 10), queries[: args.single])
        size = int(faiss.serialize_index(index).nbytes)
        entry.update(build_seconds=round(build_s, 3), memory_bytes=size, bytes_per_vector=round(size / n, 2),
                     rss_growth_bytes=int(grown), single_ms=round(lat, 4))
        if "numpy" in res:
            entry["speedup_vs_numpy"] = round(res["numpy"]["single_ms"] / lat, 1)
        entry["bytes_ratio_vs_float32"] = round(d * 4 / entry["bytes_per_vector"], 2)
        out[kind] = entry
        say(f"n={n}: {kind} {entry}")
        del index, search
    res.update(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    ap.add_argument("--kinds", nargs="+", default=["flat", "hnsw", "ivfpq"], choices=["flat", "hnsw", "ivfpq"])
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--queries", type=int, default=200, help="queries for recall (batched)")
    ap.add_argument("--single", type=int, default=200, help="queries timed one at a time (indexes)")
    ap.add_argument("--brute-single", type=int, default=20, help="queries timed one at a time (numpy)")
    ap.add_argument("--materialize-max", type=int, default=1_000_000,
                    help="largest size held in memory as floats (above: streamed, ivfpq only)")
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef-construction", type=int, default=200)
    ap.add_argument("--ef-search", type=int, default=128)
    ap.add_argument("--nlist", type=int, default=1024)
    ap.add_argument("--nprobe", type=int, nargs="+", default=[16, 64], help="first one is timed")
    ap.add_argument("--code-size", type=int, default=64, help="IVF-PQ bytes per vector")
    ap.add_argument("--train-rows", type=int, default=50_000)
    ap.add_argument("--shard-rows", type=int, default=500_000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    import faiss

    load_start = os.getloadavg()
    t0 = time.perf_counter()
    results = [run_size(n, args) for n in args.sizes]
    print(json.dumps({
        "benchmark": "index",
        "threads": faiss.omp_get_max_threads(),
        "faiss": faiss.__version__,
        "hnsw": {"m": args.hnsw_m, "ef_construction": args.ef_construction, "ef_search": args.ef_search},
        "results": results,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "peak_rss_bytes": peak_rss_bytes(),
        "load_start": [round(v, 2) for v in load_start],
        "load_end": [round(v, 2) for v in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
