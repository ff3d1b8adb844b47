"""Few-shot composition's loss: each weighting alone vs the search's batched, layer-skipping loss.

`llgbm compose` evaluates the k examples' answer-only cross-entropy under many weightings
w of n candidate adapters (CMA-ES asks a generation at a time). Alone, each weighting is composed
into one adapter (exact Σ wᵢΔWᵢ, rank Σ rᵢ) and the whole model runs over the examples with it
patched in. The search's way (``composition.FewShotLoss``) runs the base model's layers below the
adapters once for the whole search, then ``--members`` weightings per forward pass through the
layers from there up, with the head applied at answer positions only. Both ways in the same process,
on the same examples and weightings; prints one JSON line with weightings per second of each, the
ratio, the largest difference between the two losses, and the load average at start and end.

    python benchmarks/compose.py                      # 12 random rank-8 q/v adapters, last 8 layers
    python benchmarks/compose.py --zoo runs-research/zoo --adapters 12
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="arc-challenge")
    ap.add_argument("-k", type=int, default=16, help="labelled train examples")
    ap.add_argument("--adapters", type=int, default=12)
    ap.add_argument("--weightings", type=int, default=24)
    ap.add_argument("--members", type=int, default=8)
    ap.add_argument("--last-layers", type=int, default=8, help="random adapters: LoRA on this many last layers")
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--zoo", default=None, help="a zoo folder: use its adapters instead of random ones")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    load_start = os.getloadavg()

    import numpy as np
    import torch

    from _adapters import zoo_or_random
    from llgbm_cli.composition import FewShotLoss, compose_adapter
    from llgbm_cli.lora.patch import LoraPatch, stack_adapters
    from llgbm_cli.models import load_base_model
    from llgbm_cli.tasks.prompts import PromptForm
    from llgbm_cli.tasks.registry import builtin_registry
    from llgbm_cli.training.task_loss import collate_examples

    model, tok = load_base_model(args.model, device="cpu")
    task = builtin_registry().get(args.task)
    form = PromptForm.of(task, scoring=None if task.kind == "generate" else "choice")
    examples = [form.training_example(tok, r, max_length=args.max_length)
                for r in task.sample("train", args.k, seed=args.seed)]
    adapters = zoo_or_random(model, args)
    W = np.random.default_rng(args.seed).uniform(-1.0, 1.0, size=(args.weightings, len(adapters)))
    ids, mask, labels = collate_examples(examples, tok.pad_token_id or 0, "cpu")
    tgt = labels[:, 1:]
    sel = tgt != -100

    def alone(w):
        with torch.no_grad(), LoraPatch(model, stack_adapters([compose_adapter(adapters, w)])):
            logits = model(input_ids=ids, attention_mask=mask).logits
        return float(torch.nn.functional.cross_entropy(logits[:, :-1][sel].float(), tgt[sel]))

    alone(W[0])  # warm-up
    t0 = time.perf_counter()
    naive = [alone(w) for w in W]
    t_alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    loss = FewShotLoss(model, tok, adapters, examples, members=args.members)  # its set-up (the lower layers) counts
    batched = loss(W)
    t_batched = time.perf_counter() - t0
    print(json.dumps({
        "benchmark": "compose_loss", "model": args.model, "task": args.task, "examples": args.k,
        "adapters": len(adapters), "weightings": args.weightings, "members": args.members,
        "lowest_adapted_layer": loss.lower.start if loss.lower is not None else 0,
        "alone_weightings_per_s": round(args.weightings / t_alone, 3),
        "batched_weightings_per_s": round(args.weightings / t_batched, 3),
        "speedup": round(t_alone / t_batched, 2),
        "max_loss_diff": float(max(abs(a - b) for a, b in zip(naive, batched))),
        "threads": torch.get_num_threads(), "load_start": load_start, "load_end": os.getloadavg(),
    }))


if __name__ == "__main__":
    main()
