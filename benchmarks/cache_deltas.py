"""Benchmark: llgbm's delta computation vs the naive PEFT loop, same adapters, same probes, one run.

Naive loop (the obvious way): per adapter, wrap the base with ``PeftModel.from_pretrained``, run
the probes (one padded batch) through the full causal LM with ``output_hidden_states``, take the
final layer's last-token states, average, subtract the base's, then ``unload()``.
llgbm: ``compute_deltas`` (backbone only, stops at the deepest needed layer, probes packed with
their shared prefix computed once, adapters stacked through one LoRA patch, layers below the
lowest adapted one not recomputed: the base activations there are computed once), adapters
streamed from disk with ``load_adapter``. llgbm full depth: the same with ``reuse=False``.

The adapters carry LoRA on the last ``--last-layers`` layers (default: the shipped llgbm.toml's
value; 0: all layers). Prints one JSON line: adapters/s of the three, the speed-ups, the max
relative difference to the naive deltas, the achieved FLOP/s of llgbm's forwards and a dense fp32
matmul's FLOP/s measured in the same run, and ``os.getloadavg()`` at the start and the end.
Usage: ``python benchmarks/cache_deltas.py [--adapters 16] [--probes 8] [--last-layers 8] [--device cpu]``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import torch


REPO = Path(__file__).resolve().parents[1]


def shipped_last_layers() -> int:
    """``[lora] last_layers`` of the shipped project file (0 = all layers)."""
    from llgbm_cli.config import load_config

    return int(load_config(REPO / "llgbm.toml", explicit=True).config.lora.last_layers or 0)


def forward_flops(model, probes, spec, n_forwards: int, pack: bool = True, start: int = 0) -> float:
    """FLOPs of llgbm's forwards as executed: linear layers from ``start`` up to the deepest read
    layer + attention."""
    from llgbm_cli.anatomy import backbone
    from llgbm_cli.deltas.compute import pack_probes, resolve_layers

    cfg = model.config
    bb = backbone(model)
    depth = min(max(resolve_layers(model, spec)), len(bb.layers)) - start
    per_layer = sum(m.weight.numel() for m in bb.layers[0].modules() if isinstance(m, torch.nn.Linear))
    S = pack_probes(probes).input_ids.shape[1] if pack else probes.input_ids.numel()
    heads_dim = cfg.num_attention_heads * getattr(cfg, "head_dim", cfg.hidden_size // cfg.num_attention_heads)
    attn = 2 * 2 * S * S * heads_dim if pack else 2 * 2 * probes.input_ids.shape[1] * probes.input_ids.numel() * heads_dim
    return float(n_forwards * depth * (2 * S * per_layer + attn))


def main() -> None:
    from llgbm_cli.adapters import random_adapter, save_adapter
    from llgbm_cli.deltas.compute import DeltaSpec
    from llgbm_cli.deltas.probes import load_probes
    from llgbm_cli.models import load_base_model

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--adapters", type=int, default=16)
    ap.add_argument("--probes", type=int, default=8)
    ap.add_argument("--adapters-per-batch", type=int, default=None, help="default: 1 on CPU, 16 on CUDA")
    ap.add_argument("--last-layers", type=int, default=None,
                    help="LoRA on the last N layers (default: the shipped llgbm.toml's value; 0: all layers)")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()
    load_start = os.getloadavg()
    last_n = shipped_last_layers() if args.last_layers is None else args.last_layers

    model, tok = load_base_model(args.model, device=args.device)
    dev = next(model.parameters()).device
    apb = args.adapters_per_batch or (16 if dev.type == "cuda" else 1)
    probes = load_probes("generic", tok, count=args.probes)
    spec = DeltaSpec()
    tmp = Path(tempfile.mkdtemp(prefix="llgbm-bench-"))
    paths = []
    for i in range(args.adapters):
        ad = random_adapter(model, r=8, alpha=16.0, target_modules=["q_proj", "v_proj"], seed=i, std=0.05,
                            last_layers=last_n or None)
        paths.append(save_adapter(tmp / f"a{i}", ad))

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    def timed(fn):
        sync()
        t = time.perf_counter()
        out = fn()
        sync()
        return out, time.perf_counter() - t

    from peft import PeftModel

    from llgbm_cli.adapters import load_adapter
    from llgbm_cli.anatomy import lowest_adapted_layer
    from llgbm_cli.deltas.compute import base_activations, base_states, compute_deltas

    # The machine may be shared: naive, llgbm and a reference matmul are interleaved per adapter
    # batch, so load changes hit all three alike and the ratios stay meaningful.
    ids, am = probes.input_ids.to(dev), probes.attention_mask.to(dev)
    last, rows = am.sum(1) - 1, torch.arange(ids.shape[0], device=dev)

    def naive_states(m):
        with torch.no_grad():
            h = m(input_ids=ids, attention_mask=am, output_hidden_states=True).hidden_states[-1]
        return h[rows, last].float().mean(0)

    base_ref, t_naive = timed(lambda: naive_states(model))
    acts = base_activations(model, probes)
    base_mine, t_mine = timed(lambda: base_states(model, probes, spec, acts=acts))
    t_full = t_mine
    start_layer = lowest_adapted_layer(model, load_adapter(paths[0]).modules)
    a = torch.randn(1024, 1024, device=dev)
    b = torch.randn(1024, 1024, device=dev)
    t_mm, mm_flops = 0.0, 0.0
    ref, mine, full = [], [], []
    for start in range(0, len(paths), apb):
        chunk = paths[start:start + apb]

        def naive_chunk():
            nonlocal model
            out = []
            for p in chunk:
                pm = PeftModel.from_pretrained(model, str(p))
                out.append(naive_states(pm) - base_ref)
                model = pm.unload()
            return out

        out, t = timed(naive_chunk)
        ref.extend(out)
        t_naive += t
        out, t = timed(lambda: compute_deltas(model, (load_adapter(p) for p in chunk), probes, spec,
                                              adapters_per_batch=apb, base=base_mine))
        mine.append(out)
        t_mine += t
        out, t = timed(lambda: compute_deltas(model, (load_adapter(p) for p in chunk), probes, spec,
                                              adapters_per_batch=apb, base=base_mine, acts=acts, reuse=False))
        full.append(out)
        t_full += t
        _, t = timed(lambda: [a @ b for _ in range(8 * len(chunk))])
        t_mm += t
        mm_flops += 8 * len(chunk) * 2 * 1024 ** 3
    ref, mine, full = torch.stack(ref).cpu(), torch.cat(mine), torch.cat(full)
    rel = ((mine - ref).norm(dim=1) / ref.norm(dim=1)).max().item()
    rel_full = ((mine - full).norm(dim=1) / full.norm(dim=1)).max().item()
    # base forward (full depth, once) + one forward per adapter from the start layer
    flops = forward_flops(model, probes, spec, 1) + forward_flops(model, probes, spec, args.adapters, start=start_layer)
    mm = mm_flops / t_mm
    naive_rate, mine_rate, full_rate = args.adapters / t_naive, args.adapters / t_mine, args.adapters / t_full
    print(json.dumps({
        "benchmark": "cache_deltas",
        "device": str(dev),
        "threads": torch.get_num_threads(),
        "model": args.model,
        "adapters": args.adapters,
        "probes": len(probes),
        "probe_tokens_padded": int(probes.input_ids.numel()),
        "probe_tokens_packed": int(sum(len(t) for t in probes.token_ids) - (len(probes) - 1) * probes.prefix_len),
        "adapters_per_batch": apb,
        "layers": int(model.config.num_hidden_layers),
        "last_layers": last_n or int(model.config.num_hidden_layers),
        "start_layer": start_layer,
        "naive_s": round(t_naive, 3),
        "llgbm_s": round(t_mine, 3),
        "llgbm_full_depth_s": round(t_full, 3),
        "naive_adapters_per_s": round(naive_rate, 3),
        "llgbm_adapters_per_s": round(mine_rate, 3),
        "llgbm_full_depth_adapters_per_s": round(full_rate, 3),
        "speedup": round(mine_rate / naive_rate, 3),
        "speedup_full_depth_vs_naive": round(full_rate / naive_rate, 3),
        "speedup_vs_full_depth": round(mine_rate / full_rate, 3),
        "max_rel_diff": rel,
        "max_rel_diff_vs_full_depth": rel_full,
        "mean_delta_norm": round(ref.norm(dim=1).mean().item(), 4),
        "llgbm_gflops_per_s": round(flops / t_mine / 1e9, 2),
        "matmul_gflops_per_s": round(mm / 1e9, 2),
        "flops_fraction_of_matmul": round(flops / t_mine / mm, 3),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
