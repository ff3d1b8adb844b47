"""Multitask step time of each generator preset on the shipped CPU profile's layout.

The layout is the one `llgbm.toml` trains: SmolLM2-135M-Instruct, LoRA rank 8 on q_proj and v_proj
of the last 8 layers. For each (generator, preset, condition pooling) one multitask step is timed:
generator forward on a batch of 4 conditions, the token (or ΔW-free) weight loss, the delta loss on
2 of the 4 through the frozen base over the probes, backward and an AdamW step. The reference is
the `compact` preset (the default, the blocks llgbm had before the reference designs), measured in
the same run, round-robin over the cases repeat by repeat (medians); `paper` presets are only counted (built on the meta device), not timed. Prints one
JSON line.

    python benchmarks/generator_presets.py [--repeats 3] [--probe-count 8] [--no-delta]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="smollm2-135m-instruct")
    ap.add_argument("--probe-count", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--delta-batch", type=int, default=2)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--no-delta", action="store_true", help="time the weights-only step alone (quick)")
    args = ap.parse_args()
    load_start = os.getloadavg()
    torch.manual_seed(0)

    from llgbm_cli.adapters import random_adapter
    from llgbm_cli.deltas.compute import DeltaSpec, base_states, delta_for_stacked
    from llgbm_cli.deltas.probes import load_probes
    from llgbm_cli.generators import build_generator
    from llgbm_cli.losses import DeltaLoss, masked_token_mse
    from llgbm_cli.lora.tokenizer import LoraTokenizer
    from llgbm_cli.models import load_base_model

    model, tok = load_base_model(args.base, device="cpu")
    probes = load_probes("generic", tok, count=args.probe_count)
    spec = DeltaSpec()
    base = base_states(model, probes, spec)
    layout = LoraTokenizer.from_model(model, ["q_proj", "v_proj"], 8, last_layers=8)
    teachers = [random_adapter(model, r=8, seed=10 + i, last_layers=8) for i in range(args.batch)]
    teacher = torch.stack([layout.tokenize_adapter(a) for a in teachers])
    mask = layout.mask()
    t_deltas = torch.randn(args.delta_batch, base.shape[0])
    delta_loss = DeltaLoss("mse")
    cases = [("hyperconv", "compact", "mean"), ("hyperconv", "small", "mean"), ("hyperconv", "small", "none"),
             ("hypernet", "compact", "mean"), ("hypernet", "small", "mean"), ("hypernet", "small", "none")]
    steps = {}
    for name, preset, pooling in cases:
        tokens = args.tokens if pooling == "none" else 0
        torch.manual_seed(0)
        gen = build_generator(name, layout, 384, {"scaling": 2.0, "n_prompts": args.prompts, "cond_tokens": tokens,
                                                   "preset": preset})
        gen.init_output(teacher.mean(0), {})
        opt = torch.optim.AdamW(gen.parameters(), lr=1e-3)
        shape = (args.batch, args.prompts) + ((tokens,) if tokens else ()) + (384,)
        cond = torch.randn(*shape)

        def step(with_delta: bool, gen=gen, opt=opt, cond=cond):
            def run():
                opt.zero_grad(set_to_none=True)
                g = gen(cond)
                pred = g.tokens if g.tokens is not None else layout.tokenize(g.loras)
                loss = masked_token_mse(pred, teacher, mask)
                if with_delta:
                    d = delta_for_stacked(model, probes, spec, g.select(slice(0, args.delta_batch)).stacked(), base)
                    loss = loss + delta_loss(d, t_deltas)
                loss.backward()
                opt.step()

            return run

        steps[f"{name}/{preset}/{pooling}"] = (gen.num_parameters(), step(False), step(True))
    # Round-robin over the cases, repeat by repeat, so a change in machine load hits all of them.
    kinds = [("step_weights_only_s", 1)] + ([] if args.no_delta else [("step_with_delta_s", 2)])
    times = {k: {kind: [] for kind, _ in kinds} for k in steps}
    for rep in range(args.repeats + 1):  # the first round is a warm-up
        for key, entry in steps.items():
            for kind, j in kinds:
                t = time.perf_counter()
                entry[j]()
                if rep:
                    times[key][kind].append(time.perf_counter() - t)
    rows = {key: {"parameters": steps[key][0], **{kind: round(statistics.median(v), 4) for kind, v in t.items()}}
            for key, t in times.items()}
    paper = {}
    for name in ("hyperconv", "hypernet"):
        with torch.device("meta"):
            g = build_generator(name, layout, 384, {"n_prompts": 128, "cond_tokens": 384, "preset": "paper"})
        paper[name] = g.num_parameters()
    ratios = {}
    for name in ("hyperconv", "hypernet"):
        ref = rows[f"{name}/compact/mean"]
        for key, r in rows.items():
            if key.startswith(name + "/") and key != f"{name}/compact/mean":
                ratios[key] = {kind: round(r[kind] / ref[kind], 3) for kind, _ in kinds}
    print(json.dumps({
        "benchmark": "generator_presets", "base": args.base, "layout": list(layout.grid_shape),
        "probes": len(probes), "batch": args.batch, "delta_batch": args.delta_batch, "prompts": args.prompts,
        "tokens": args.tokens, "threads": torch.get_num_threads(), "repeats": args.repeats,
        "cases": rows, "ratio_vs_compact": ratios, "paper_parameters": paper,
        "loadavg_start": [round(x, 2) for x in load_start], "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
