"""Cost of the differentiable delta loss vs one no-grad probe forward of the base model.

Per adapter in the delta subset, the delta loss runs the frozen base over the probes with the
generated LoRA patched in, then backpropagates to A and B (input gradients only: base weights do
not require grad). The reference is one no-grad forward of the base over the same probes, measured
in the same run. Also reports one whole multitask step (generator forward, weight loss, backward)
with and without the delta loss. Prints one JSON line.

    python benchmarks/delta_loss_cost.py [--base smollm2-135m-instruct] [--delta-batch 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def timed(fn, repeats: int) -> float:
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--probes", default="generic")
    ap.add_argument("--probe-count", type=int, default=None)
    ap.add_argument("--delta-batch", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--rank", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.manual_seed(0)

    from llgbm_cli.adapters import random_adapter
    from llgbm_cli.deltas.compute import DeltaSpec, base_states, delta_for_stacked, pooled_states
    from llgbm_cli.deltas.probes import load_probes
    from llgbm_cli.generators import build_generator
    from llgbm_cli.losses import DeltaLoss, masked_token_mse
    from llgbm_cli.lora.patch import stack_adapters
    from llgbm_cli.lora.tokenizer import LoraTokenizer
    from llgbm_cli.models import load_base_model

    model, tok = load_base_model(args.base, device="cpu")
    assert not any(p.requires_grad for p in model.parameters())
    probes = load_probes(args.probes, tok, count=args.probe_count)
    spec = DeltaSpec()
    base = base_states(model, probes, spec)
    k = args.delta_batch
    ads = [random_adapter(model, r=args.rank, seed=i) for i in range(k)]
    stacked = stack_adapters(ads)
    target = torch.randn(k, base.shape[0])
    loss_fn = DeltaLoss("mse")

    def nograd_forward():
        with torch.no_grad():
            pooled_states(model, probes, spec, 1)

    def delta_loss_step():
        for s in stacked.values():
            s.A.requires_grad_(True)
            s.B.requires_grad_(True)
            s.A.grad = s.B.grad = None
        loss = loss_fn(delta_for_stacked(model, probes, spec, stacked, base), target)
        loss.backward()

    t_fwd = timed(nograd_forward, args.repeats)
    t_delta = timed(delta_loss_step, args.repeats)
    per_adapter = t_delta / k

    layout = LoraTokenizer.from_model(model, ["q_proj", "v_proj"], args.rank)
    gen = build_generator("hyperconv", layout, 384, {"scaling": 2.0, "n_prompts": 8})
    teacher = torch.stack([layout.tokenize_adapter(random_adapter(model, r=args.rank, seed=10 + i))
                           for i in range(args.batch)])
    mask = layout.mask()
    cond = torch.randn(args.batch, 8, 384)
    t_deltas = torch.randn(k, base.shape[0])

    def step(with_delta: bool):
        def run():
            gen.zero_grad(set_to_none=True)
            g = gen(cond)
            loss = masked_token_mse(g.tokens, teacher, mask)
            if with_delta:
                pred = delta_for_stacked(model, probes, spec, g.select(slice(0, k)).stacked(), base)
                loss = loss + loss_fn(pred, t_deltas)
            loss.backward()

        return run

    t_step_w = timed(step(False), args.repeats)
    t_step_wd = timed(step(True), args.repeats)
    print(json.dumps({
        "benchmark": "delta_loss_cost", "base": args.base, "probes": len(probes),
        "probe_tokens": int(sum(len(t) for t in probes.token_ids)), "delta_batch": k, "batch": args.batch,
        "threads": torch.get_num_threads(),
        "nograd_probe_forward_s": round(t_fwd, 4),
        "delta_loss_fwd_bwd_s": round(t_delta, 4),
        "delta_loss_per_adapter_s": round(per_adapter, 4),
        "ratio_per_adapter_vs_nograd_forward": round(per_adapter / t_fwd, 3),
        "step_weights_only_s": round(t_step_w, 4),
        "step_with_delta_s": round(t_step_wd, 4),
        "step_ratio_with_vs_without_delta": round(t_step_wd / t_step_w, 3),
        "generator_parameters": gen.num_parameters(),
    }))


if __name__ == "__main__":
    main()
