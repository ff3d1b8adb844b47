"""Merge speed and fidelity: llgbm's delta-space merge vs PEFT's ``add_weighted_adapter``, same run.

Three random adapters shaped for SmolLM2-135M (all seven projections of the last ``--layers``
layers, rank 8 and 16). For each strategy llgbm merges at its default output rank (``auto``: exact
for linear, task_arithmetic and cat; for ties and dare_* the smallest rank per module keeping
``--energy`` of the merged ΔW), and PEFT, which takes one rank for every module, merges the same
adapters with the same parameters at the largest rank llgbm chose, or the smallest module's
smaller side where that is lower (PEFT fails above it; ``cat``: the sum of ranks).
Each row records both tools' retained energy ‖ΔW_r‖²/‖ΔW‖² against their own dense merge.
``--rank inputs`` instead gives both tools the inputs' rank (the like-for-like speed comparison).
The DARE rows use PEFT's conventions on both sides (kept entries divided by 1 − p; dare_ties
normalized per entry), so the two tools compute the same merge:

* ``ties`` vs PEFT ``ties_svd``, ``dare_ties`` vs ``dare_ties_svd``, ``dare_linear`` vs
  ``dare_linear_svd`` (weights 1/3 each, so both define the same weighted average);
* ``linear`` (weights 1/3) vs PEFT ``svd`` (dense ΔW + SVD) and PEFT ``linear`` (factor space);
* ``task_arithmetic`` (weights 1) vs PEFT ``svd``; ``cat`` vs PEFT ``cat``.

Fidelity is ‖ΔW_merged − ΔW_ref‖/‖ΔW_ref‖ over all modules, where ΔW_ref is the exact dense
merge of the same strategy before any rank truncation. For DARE each tool draws its own masks,
so each is compared with its own dense merge (PEFT's is recorded while it runs; likewise for
TIES, where the two dense merges differ only by entries at the trim threshold that rounding
moves: ``ties_dense_agreement``). Times are wall-clock seconds of the
merge call alone (adapters already in memory; PEFT's adapters already loaded in the model).

    python benchmarks/merge.py [--layers 6] [--ranks 8,16] [--threads N] [--rank auto|inputs]

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

SEVEN = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PAIRS = [  # (llgbm strategy, PEFT combination_type, weights)
    ("ties", "ties_svd", "ones"),
    ("dare_ties", "dare_ties_svd", "ones"),
    ("dare_linear", "dare_linear_svd", "thirds"),
    ("linear", "svd", "thirds"),
    ("task_arithmetic", "svd", "ones"),
    ("cat", "cat", "ones"),
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--layers", type=int, default=6, help="LoRA on the last N of SmolLM2's 30 layers")
    ap.add_argument("--ranks", default="8,16")
    ap.add_argument("--density", type=float, default=0.5)
    ap.add_argument("--drop-rate", type=float, default=0.9)
    ap.add_argument("--energy", type=float, default=0.99, help="llgbm's merge.energy for rank auto")
    ap.add_argument("--rank", choices=["auto", "inputs"], default="auto",
                    help="llgbm's output rank: its default `auto`, or the inputs' rank for both tools")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own)")
    ap.add_argument("--no-big", action="store_true", help="skip the >16M-element module line")
    args = ap.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import model as peft_lora_model

    from llgbm_cli.adapters import random_adapter
    from llgbm_cli.merging import MergeOptions, general_merge, merge_adapters, merge_with_report
    from llgbm_cli.models import load_base_model

    if args.threads:
        torch.set_num_threads(args.threads)
    base, _ = load_base_model("smollm2-135m-instruct", device="cpu")
    result: dict = {"benchmark": "merge", "layers": args.layers, "modules": args.layers * 7,
                    "threads": torch.get_num_threads(), "density": args.density, "drop_rate": args.drop_rate,
                    "energy": args.energy, "rank_mode": args.rank, "loadavg_start": os.getloadavg(), "runs": []}

    # Record PEFT's dense merge (its reference) per module while it runs: wrap its merge functions.
    recorded: dict[str, torch.Tensor] = {}
    current: list = [None]
    names_of: dict[int, str] = {}
    originals = {k: getattr(peft_lora_model, k) for k in ("ties", "dare_ties", "dare_linear", "task_arithmetic")}

    def recording(fn):
        def wrapped(*a, **kw):
            out = fn(*a, **kw)
            recorded[names_of[id(current[0])]] = out.detach().clone()
            return out
        return wrapped

    for k, fn in originals.items():
        setattr(peft_lora_model, k, recording(fn))

    def rel_err(pairs) -> float:
        num = den = 0.0
        for got, ref in pairs:
            num += float((got - ref).double().norm() ** 2)
            den += float(ref.double().norm() ** 2)
        return (num / den) ** 0.5

    for r in [int(x) for x in args.ranks.split(",")]:
        ads = [random_adapter(base, r=r, alpha=2.0 * r, target_modules=SEVEN, seed=s, last_layers=args.layers)
               for s in range(3)]
        names = list(ads[0].modules)
        cfg = LoraConfig(r=r, lora_alpha=2.0 * r, target_modules=names, lora_dropout=0.0)
        pm = get_peft_model(copy.deepcopy(base), cfg, adapter_name="a0")
        pm.add_adapter("a1", cfg)
        pm.add_adapter("a2", cfg)
        inner = pm.base_model.model
        with torch.no_grad():
            for i, ad in enumerate(ads):
                for n, m in ad.modules.items():
                    lin = inner.get_submodule(n)
                    lin.lora_A[f"a{i}"].weight.copy_(m.A)
                    lin.lora_B[f"a{i}"].weight.copy_(m.B)
        for n in names:
            names_of[id(inner.get_submodule(n))] = n
        orig_method = pm.base_model._svd_generalized_task_arithmetic_weighted_adapter

        def tracking(*a, **kw):
            current[0] = kw.get("target") if "target" in kw else a[4]
            return orig_method(*a, **kw)

        pm.base_model._svd_generalized_task_arithmetic_weighted_adapter = tracking
        deltas = {n: [a.modules[n].delta_weight() for a in ads] for n in names}
        min_side = min(min(d[0].shape) for d in deltas.values())

        for ours, theirs, wkind in PAIRS:
            w = [1.0, 1.0, 1.0] if wkind == "ones" else [1 / 3] * 3
            kw = dict(density=args.density, drop_rate=args.drop_rate, seed=0, energy=args.energy)
            if args.rank == "inputs":
                kw["rank"] = 3 * r if ours == "cat" else r
            if ours.startswith("dare"):  # PEFT's DARE: kept / (1 - p); its dare_ties divides per entry
                kw.update(rescale="keep_rate", normalize=ours == "dare_ties")
            opts = MergeOptions(ours, **kw)
            st = opts.spec
            peft_density = 1.0 - args.drop_rate if ours.startswith("dare") else args.density
            row = {"rank": r, "strategy": ours, "peft": theirs, "weights": wkind}

            t = time.perf_counter()
            merged, rep = merge_with_report(ads, opts, w)
            row["llgbm_s"] = round(time.perf_counter() - t, 4)
            row["llgbm_rank_range"] = rep.rank_range
            row["llgbm_retained_energy"] = round(rep.retained_energy, 6)
            if st.low_rank:
                refs = {n: sum(c * d for c, d in zip(w, deltas[n])) for n in names}
            else:
                coef = [c / sum(w) for c in w] if st.consensus == "none" and opts.normalized else w
                refs = {n: general_merge(deltas[n], coef, opts, key=n) for n in names}
            row["llgbm_rel_err"] = rel_err((merged.modules[n].delta_weight(), refs[n]) for n in names)

            recorded.clear()
            # PEFT takes one rank for every module, and breaks above a module's smaller side
            svd_rank = min(rep.rank_range[1], min_side)
            row["peft_rank"] = svd_rank
            t = time.perf_counter()
            pm.add_weighted_adapter(["a0", "a1", "a2"], w, "m", combination_type=theirs, density=peft_density,
                                    svd_rank=None if theirs == "cat" else svd_rank)
            row["peft_s"] = round(time.perf_counter() - t, 4)
            peft_dw = {n: inner.get_submodule(n).get_delta_weight("m").detach() for n in names}
            pm.delete_adapter("m")
            # Where PEFT forms a dense merge (its own DARE masks; its own rounding of which entries
            # TIES keeps), that merge is its reference; otherwise the exact weighted sum.
            peft_refs = recorded if recorded else refs
            if ours == "ties":
                row["ties_dense_agreement"] = rel_err((recorded[n], refs[n]) for n in names)
            row["peft_rel_err"] = rel_err((peft_dw[n], peft_refs[n]) for n in names)
            row["peft_retained_energy"] = round(1 - row["peft_rel_err"] ** 2, 6)
            row["speedup"] = round(row["peft_s"] / row["llgbm_s"], 2)
            if ours == "linear":  # PEFT's factor-space `linear`: fast, but with cross terms
                t = time.perf_counter()
                pm.add_weighted_adapter(["a0", "a1", "a2"], w, "f", combination_type="linear")
                row["peft_factor_linear_s"] = round(time.perf_counter() - t, 4)
                row["peft_factor_linear_rel_err"] = rel_err(
                    (inner.get_submodule(n).get_delta_weight("f").detach(), refs[n]) for n in names)
                pm.delete_adapter("f")
            result["runs"].append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        del pm, inner

    for k, fn in originals.items():
        setattr(peft_lora_model, k, fn)

    if not args.no_big:
        # An lm_head-shaped module (49152 x 576 = 28.3M elements): torch.quantile refuses it.
        from llgbm_cli.adapters import LoraAdapter, LoraModule

        g = torch.Generator().manual_seed(0)
        big = [LoraAdapter({"lm_head": LoraModule(torch.randn(8, 576, generator=g) * 0.02,
                                                  torch.randn(49152, 8, generator=g) * 0.02, 2.0)},
                           8, 16.0, ["lm_head"]) for _ in range(3)]
        try:
            torch.quantile(big[0].modules["lm_head"].delta_weight().abs().flatten(), 0.5)
            quantile_ok = True
        except RuntimeError:
            quantile_ok = False
        t = time.perf_counter()
        out = merge_adapters(big, "ties", density=args.density, rank=8)
        m = out.modules["lm_head"]
        result["big_module"] = {"shape": [49152, 576], "elements": 49152 * 576, "strategy": "ties",
                                "seconds": round(time.perf_counter() - t, 3),
                                "finite": bool(torch.isfinite(m.A).all() and torch.isfinite(m.B).all()),
                                "torch_quantile_works": quantile_ok}

    result["loadavg_end"] = os.getloadavg()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
