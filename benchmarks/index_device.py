"""FAISS on the GPU against the CPU: the same delta index built and searched on both, in one run.

Random unit vectors stand in for deltas (``--rows`` x ``--dim``, the SmolLM2 delta width by default);
a ``flat`` (exact) and an ``ivf`` index are built through :class:`llgbm_cli.index.DeltaIndex` on each
device, then ``--queries`` batched top-``k`` searches run. Prints one JSON line: build and search
seconds per device and kind, the GPU/CPU speed ratios, the share of GPU top-k ids that equal the
CPU's, and ``os.getloadavg()`` at the start and the end. ``--device cpu`` times the CPU alone (the
device check's dry run).

    python benchmarks/index_device.py [--rows 200000] [--dim 576] [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--dim", type=int, default=576)
    ap.add_argument("--queries", type=int, default=1000)
    ap.add_argument("-k", type=int, default=10)
    ap.add_argument("--device", default="cuda", choices=["cpu", "cuda"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    load_start = os.getloadavg()

    import numpy as np

    from llgbm_cli.index import DeltaIndex

    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal((args.rows, args.dim), dtype=np.float32)
    q = rng.standard_normal((args.queries, args.dim), dtype=np.float32)
    ids = [str(i) for i in range(args.rows)]
    out = {"benchmark": "index_device", "rows": args.rows, "dim": args.dim, "queries": args.queries, "k": args.k}
    devices = ["cpu"] + (["cuda"] if args.device == "cuda" else [])
    for kind, params in (("flat", {}), ("ivf", {"ivf_nlist": max(1, min(1024, args.rows // 39)), "ivf_nprobe": 16})):
        found = {}
        for dev in devices:
            t0 = time.perf_counter()
            idx = DeltaIndex.build(x, ids, kind=kind, params=params, device=dev, seed=args.seed)
            out[f"{kind}_{dev}_build_s"] = round(time.perf_counter() - t0, 4)
            idx.search(q[:8], args.k)  # warm-up
            t0 = time.perf_counter()
            _, found[dev] = idx.search(q, args.k)
            out[f"{kind}_{dev}_search_s"] = round(time.perf_counter() - t0, 4)
        if "cuda" in found:
            out[f"{kind}_build_speedup"] = round(out[f"{kind}_cpu_build_s"] / max(out[f"{kind}_cuda_build_s"], 1e-9), 2)
            out[f"{kind}_search_speedup"] = round(out[f"{kind}_cpu_search_s"] / max(out[f"{kind}_cuda_search_s"], 1e-9), 2)
            out[f"{kind}_same_ids"] = round(float(np.mean(np.asarray(found["cpu"]) == np.asarray(found["cuda"]))), 4)
    out["load_start"], out["load_end"] = [round(v, 2) for v in load_start], [round(v, 2) for v in os.getloadavg()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
