"""Per-prompt deltas on a task's own prompts: one packed sequence vs the padded batch `pack_pays` picks.

Behavioural retrieval, `eval.task_probes` and the own-task delta loss measure deltas on a task's
train prompts, which are long (up to `probes.max_length` tokens) where the generic probes are
short. Packed, every prompt follows the shared prefix in one sequence under a block-diagonal
mask, so the attention grows with the square of the packed length; padded, each prompt is its own
row. Both ways in the same process, on the same prompts and adapters (each way's base activations
built afresh, as a new probe set has them); prints one JSON line with the seconds of each, the
ratio, which way `pack_pays` chose, the largest relative difference between the two, and the load
average at start and end.

    python benchmarks/task_prompt_deltas.py                      # 64 ARC-Easy train prompts, 8 random adapters
    python benchmarks/task_prompt_deltas.py --prompts 16 --zoo runs-research/zoo
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="arc-easy")
    ap.add_argument("--prompts", type=int, default=64, help="train prompts of the task")
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--last-layers", type=int, default=8, help="random adapters: LoRA on this many last layers")
    ap.add_argument("--max-length", type=int, default=128)
    ap.add_argument("--zoo", default=None, help="a zoo folder: use its adapters instead of random ones")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    load_start = os.getloadavg()

    import torch

    from _adapters import zoo_or_random
    from llgbm_cli.deltas import compute
    from llgbm_cli.deltas.compute import DeltaSpec, pack_pays, per_probe_deltas
    from llgbm_cli.deltas.probes import probes_from_texts
    from llgbm_cli.models import load_base_model
    from llgbm_cli.tasks.registry import builtin_registry

    model, tok = load_base_model(args.model, device="cpu")
    texts = [r.prompt for r in builtin_registry().get(args.task).sample("train", args.prompts, seed=args.seed)]
    probes = probes_from_texts(texts, tok, max_length=args.max_length)
    adapters = zoo_or_random(model, args)
    spec = DeltaSpec()

    def run(pack: bool):
        compute._MEMO.pop(model, None)  # a new probe set: its base activations are built within the timing
        t0 = time.perf_counter()
        d = per_probe_deltas(model, probes, spec, adapters, pack=pack)
        return d, time.perf_counter() - t0

    run(False)  # warm-up
    packed, t_packed = run(True)
    padded, t_padded = run(False)
    rows = [len(r) for r in probes.token_ids]
    print(json.dumps({
        "benchmark": "task_prompt_deltas", "model": args.model, "task": args.task, "prompts": len(rows),
        "adapters": len(adapters), "max_tokens": max(rows), "packed_tokens": probes.prefix_len + sum(
            n - probes.prefix_len for n in rows), "packed_s": round(t_packed, 2), "padded_s": round(t_padded, 2),
        "speedup": round(t_packed / t_padded, 2), "pack_pays": pack_pays(probes),
        "max_rel_diff": float((packed - padded).norm() / padded.norm()),
        "threads": torch.get_num_threads(), "load_start": load_start, "load_end": os.getloadavg(),
    }))


if __name__ == "__main__":
    main()
