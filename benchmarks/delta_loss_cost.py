"""Cost of the differentiable delta loss vs one no-grad probe forward of the base model.

Per adapter in the delta subset, the delta loss runs the frozen base over the probes with the
generated LoRA patched in, then backpropagates to A and B (input gradients only: base weights do
not require grad). Three ways, same adapters, same run:

* llgbm: the forward (and the backward) runs only the decoder layers from the lowest adapted one
  up, entering it with the base model's activations, computed once (``delta_for_stacked``);
* llgbm full depth: the same with ``reuse=False``, every layer recomputed (the path before
  activations were reused);
* naive PEFT loop: per adapter, PEFT's LoRA modules hold the adapter's A and B as parameters, the
  full causal LM runs the padded probes with ``output_hidden_states``, backward into A and B.

The reference is one no-grad forward of the whole base over the same (packed) probes. Also
reports one whole multitask step (generator forward, weight loss, backward) with the delta loss
through both llgbm paths and without it. Prints one JSON line, with ``os.getloadavg()`` at the
start and the end (the machine may be shared: compare ratios from one run).

    python benchmarks/delta_loss_cost.py [--last-layers 8] [--delta-batch 2] [--repeats 2] [--probe-count 8]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def shipped_last_layers() -> int:
    """``[lora] last_layers`` of the shipped project file (0 = all layers)."""
    from llgbm_cli.config import load_config

    return int(load_config(REPO / "llgbm.toml", explicit=True).config.lora.last_layers or 0)


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--probes", default="generic")
    ap.add_argument("--probe-count", type=int, default=None)
    ap.add_argument("--last-layers", type=int, default=None,
                    help="LoRA on the last N layers (default: the shipped llgbm.toml's value; 0: all layers)")
    ap.add_argument("--targets", default="q_proj,v_proj")
    ap.add_argument("--delta-batch", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-naive", action="store_true", help="skip the naive PEFT loop")
    args = ap.parse_args()
    load_start = os.getloadavg()
    torch.manual_seed(0)

    from llgbm_cli.adapters import random_adapter
    from llgbm_cli.anatomy import lowest_adapted_layer
    from llgbm_cli.deltas.compute import DeltaSpec, base_activations, base_states, delta_for_stacked, pooled_states
    from llgbm_cli.deltas.probes import load_probes
    from llgbm_cli.generators import build_generator
    from llgbm_cli.losses import DeltaLoss, masked_token_mse
    from llgbm_cli.lora.patch import stack_adapters
    from llgbm_cli.lora.tokenizer import LoraTokenizer
    from llgbm_cli.models import load_base_model
    from llgbm_cli.tasks.registry import builtin_registry

    last = shipped_last_layers() if args.last_layers is None else args.last_layers
    last_layers = last or None
    targets = args.targets.split(",")
    model, tok = load_base_model(args.base, device="cpu")
    assert not any(p.requires_grad for p in model.parameters())
    n_layers = int(model.config.num_hidden_layers)
    probes = load_probes(args.probes, tok, count=args.probe_count, tasks=builtin_registry())
    spec = DeltaSpec()
    acts = base_activations(model, probes)
    base = base_states(model, probes, spec, acts=acts)
    k = args.delta_batch
    ads = [random_adapter(model, r=args.rank, target_modules=targets, seed=i, last_layers=last_layers) for i in range(k)]
    start = lowest_adapted_layer(model, ads[0].modules)
    stacked = stack_adapters(ads)
    target = torch.randn(k, base.shape[0])
    loss_fn = DeltaLoss("mse")

    def nograd_forward():
        with torch.no_grad():
            pooled_states(model, probes, spec, 1)

    def delta_loss_step(reuse: bool):
        def run():
            for s in stacked.values():
                s.A.requires_grad_(True)
                s.B.requires_grad_(True)
                s.A.grad = s.B.grad = None
            loss = loss_fn(delta_for_stacked(model, probes, spec, stacked, base, acts=acts, reuse=reuse), target)
            loss.backward()

        return run

    # The naive loop: PEFT's own LoRA modules, the full causal LM on the padded probes, one adapter at a time.
    naive_s = None
    if not args.no_naive:
        from peft import LoraConfig, get_peft_model

        layers = list(range(n_layers - last, n_layers)) if last else None
        pm = get_peft_model(copy.deepcopy(model), LoraConfig(
            r=args.rank, lora_alpha=16.0, target_modules=targets, layers_to_transform=layers, lora_dropout=0.0))
        ids, am = probes.input_ids, probes.attention_mask
        rows, lastpos = torch.arange(ids.shape[0]), am.sum(1) - 1
        with torch.no_grad():
            h = model(input_ids=ids, attention_mask=am, output_hidden_states=True).hidden_states[-1]
        base_naive = h[rows, lastpos].mean(0)
        lora = {n: p for n, p in pm.named_parameters() if "lora_" in n}

        def naive_step():
            for i, ad in enumerate(ads):
                with torch.no_grad():
                    for name, m in ad.modules.items():
                        lora[f"base_model.model.{name}.lora_A.default.weight"].copy_(m.A)
                        lora[f"base_model.model.{name}.lora_B.default.weight"].copy_(m.B)
                pm.zero_grad(set_to_none=True)
                hs = pm(input_ids=ids, attention_mask=am, output_hidden_states=True).hidden_states[-1]
                loss_fn((hs[rows, lastpos].mean(0) - base_naive)[None], target[i:i + 1]).backward()

        naive_s = timed(naive_step, args.repeats)

    t_fwd = timed(nograd_forward, args.repeats)
    t_full = timed(delta_loss_step(False), args.repeats)
    t_reuse = timed(delta_loss_step(True), args.repeats)

    layout = LoraTokenizer.from_model(model, targets, args.rank, last_layers)
    gen = build_generator("hyperconv", layout, 384, {"scaling": 2.0, "n_prompts": 8})
    teacher = torch.stack([layout.tokenize_adapter(random_adapter(model, r=args.rank, target_modules=targets,
                                                                  seed=10 + i, last_layers=last_layers))
                           for i in range(args.batch)])
    mask = layout.mask()
    cond = torch.randn(args.batch, 8, 384)
    t_deltas = torch.randn(k, base.shape[0])

    def step(with_delta: bool, reuse: bool = True):
        def run():
            gen.zero_grad(set_to_none=True)
            g = gen(cond)
            loss = masked_token_mse(g.tokens, teacher, mask)
            if with_delta:
                pred = delta_for_stacked(model, probes, spec, g.select(slice(0, k)).stacked(), base,
                                         acts=acts, reuse=reuse)
                loss = loss + loss_fn(pred, t_deltas)
            loss.backward()

        return run

    t_step_w = timed(step(False), args.repeats)
    t_step_full = timed(step(True, reuse=False), args.repeats)
    t_step_reuse = timed(step(True), args.repeats)
    out = {
        "benchmark": "delta_loss_cost", "base": args.base, "probes": len(probes),
        "probe_tokens": int(sum(len(t) for t in probes.token_ids)), "layers": n_layers,
        "last_layers": last or n_layers, "start_layer": start, "targets": targets,
        "delta_batch": k, "batch": args.batch, "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "nograd_probe_forward_s": round(t_fwd, 4),
        "delta_loss_per_adapter_s": round(t_reuse / k, 4),
        "delta_loss_per_adapter_full_depth_s": round(t_full / k, 4),
        "ratio_per_adapter_vs_nograd_forward": round(t_reuse / k / t_fwd, 3),
        "ratio_full_depth_per_adapter_vs_nograd_forward": round(t_full / k / t_fwd, 3),
        "speedup_vs_full_depth": round(t_full / t_reuse, 3),
    }
    if naive_s is not None:
        out.update({"delta_loss_per_adapter_naive_peft_s": round(naive_s / k, 4),
                    "speedup_vs_naive_peft": round(naive_s / t_reuse, 3)})
    out.update({
        "step_weights_only_s": round(t_step_w, 4),
        "step_with_delta_s": round(t_step_reuse, 4),
        "step_with_delta_full_depth_s": round(t_step_full, 4),
        "step_ratio_with_vs_without_delta": round(t_step_reuse / t_step_w, 3),
        "step_ratio_full_depth_with_vs_without_delta": round(t_step_full / t_step_w, 3),
        "step_speedup_vs_full_depth": round(t_step_full / t_step_reuse, 3),
        "generator_parameters": gen.num_parameters(),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    })
    print(json.dumps(out))


if __name__ == "__main__":
    main()
