"""Multiple-choice scoring throughput: batched shared-prefix scoring vs one option at a time.

Scores the same seeded held-out questions with llgbm's scorer (prompt once per question, batched,
label tokens over the repeated KV cache) and with the naive way (one full forward per option, no
batching), in the same run, and prints one JSON line: questions per second of each, the speed-up
ratio, and how closely the two agree.

    python benchmarks/scoring.py --model smollm2-135m-instruct --task arc-easy -n 32 --batch-size 16
    python benchmarks/scoring.py --scoring choice -n 32     # option text after the cloze prompt (acc, acc_norm)
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
    ap.add_argument("-n", type=int, default=32, help="held-out questions")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scoring", choices=["label", "choice"], default="label")
    args = ap.parse_args()
    load_start = os.getloadavg()

    import torch

    from llgbm_cli.models import load_base_model
    from llgbm_cli.tasks import score_multiple_choice
    from llgbm_cli.tasks.prompts import PromptForm
    from llgbm_cli.tasks.registry import builtin_registry

    model, tok = load_base_model(args.model, device="cpu")
    task = builtin_registry().get(args.task)
    form = PromptForm.of(task, scoring=args.scoring)
    recs = task.sample("test", args.n, seed=args.seed)
    score_multiple_choice(model, tok, recs[:2], batch_size=2, form=form)  # warm-up (allocations, kernels)

    t0 = time.perf_counter()
    fast = score_multiple_choice(model, tok, recs, batch_size=args.batch_size, form=form)
    t_fast = time.perf_counter() - t0
    t0 = time.perf_counter()
    slow = score_multiple_choice(model, tok, recs, batched=False, form=form)
    t_slow = time.perf_counter() - t0

    diff = max(abs(a - b) for qa, qb in zip(fast.per_question, slow.per_question) for a, b in zip(qa.scores, qb.scores))
    print(json.dumps({
        "benchmark": "scoring",
        "model": args.model,
        "task": args.task,
        "scoring": args.scoring,
        "questions": len(recs),
        "options_per_question": len(recs[0].options),
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "batched_qps": round(len(recs) / t_fast, 3),
        "one_option_at_a_time_qps": round(len(recs) / t_slow, 3),
        "speedup": round(t_slow / t_fast, 2),
        "same_predictions": [q.pred for q in fast.per_question] == [q.pred for q in slow.per_question],
        "max_abs_logprob_diff": diff,
        "accuracy": fast.accuracy,
        **({"acc_norm": fast.acc_norm} if fast.acc_norm is not None else {}),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
