"""Scoring many adapters on one task: each adapter alone vs the base layers below them shared.

The oracle-best reference (``eval.oracle_candidates``) scores the same test questions under many
adapters. Alone, every adapter runs the whole model (``score_adapter``, how each adapter is scored
by itself). Shared (``score_multiple_choice_adapters``, ``score_generative_adapters``), each batch
runs the decoder layers below the lowest adapted one once, with the base model, and every adapter
runs only the layers from there up and the head (a generative task: its prompt pass; every decoding
step runs the whole model). Both ways run in the same process on the same questions and adapters;
prints one JSON line with adapter-questions per second of each, the ratio, how many predictions (or
decoded texts) agree, the largest option-score difference, and the load average at start and end.

    python benchmarks/adapter_scoring.py --adapters 4 -n 48
    python benchmarks/adapter_scoring.py --zoo runs-research/zoo --adapters 8 -n 48
    python benchmarks/adapter_scoring.py --zoo runs-research/zoo --adapters 8 -n 48 --task mawps

The adapters are seeded random rank-8 q/v LoRAs on the last ``--last-layers`` layers, or with
``--zoo`` the first ``--adapters`` adapter folders of a built zoo. Questions are scored on the option
text (the research profile's ``choice`` form) or decoded greedily (a generative task), ``--batch-size``
questions per batch.
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
    ap.add_argument("-n", type=int, default=48, help="test questions")
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--last-layers", type=int, default=8, help="random adapters: LoRA on this many last layers")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=192)
    ap.add_argument("--zoo", default=None, help="a zoo folder: use its adapters instead of random ones")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    load_start = os.getloadavg()

    import torch

    from _adapters import zoo_or_random
    from llgbm_cli.anatomy import lowest_adapted_layer
    from llgbm_cli.models import load_base_model
    from llgbm_cli.tasks.prompts import PromptForm
    from llgbm_cli.tasks.registry import builtin_registry
    from llgbm_cli.lora.patch import patch_adapters
    from llgbm_cli.tasks.generation import score_generative, score_generative_adapters
    from llgbm_cli.tasks.scoring import score_adapter, score_multiple_choice_adapters

    model, tok = load_base_model(args.model, device="cpu")
    model.eval()
    task = builtin_registry().get(args.task)
    form = PromptForm.of(task, scoring=None if task.kind == "generate" else "choice")
    recs = task.sample("test", args.n, seed=args.seed)
    adapters = zoo_or_random(model, args)
    start = lowest_adapted_layer(model, {m for a in adapters for m in a.modules})
    generative = form.kind == "generate"

    def one(a, rs):
        if generative:
            with patch_adapters(model, [a]):
                return score_generative(model, tok, rs, form, batch_size=args.batch_size, max_length=args.max_length)
        return score_adapter(model, tok, a, rs, batch_size=args.batch_size, max_length=args.max_length, form=form)

    one(adapters[0], recs[:2])  # warm-up
    t0 = time.perf_counter()
    alone = [one(a, recs) for a in adapters]
    t_alone = time.perf_counter() - t0
    t0 = time.perf_counter()
    if generative:
        shared = score_generative_adapters(model, tok, adapters, recs, form, batch_size=args.batch_size,
                                           max_length=args.max_length)
    else:
        shared = score_multiple_choice_adapters(model, tok, adapters, recs, batch_size=args.batch_size,
                                                max_length=args.max_length, form=form)
    t_shared = time.perf_counter() - t0

    cells = len(adapters) * len(recs)
    if generative:
        diff = None
        same = sum(x["output"] == y["output"] for a, b in zip(alone, shared) for x, y in zip(a.outputs, b.outputs))
    else:
        diff = max(abs(x - y) for a, b in zip(alone, shared) for qa, qb in zip(a.per_question, b.per_question)
                   for x, y in zip(qa.scores, qb.scores))
        same = sum(qa.pred == qb.pred for a, b in zip(alone, shared)
                   for qa, qb in zip(a.per_question, b.per_question))
    print(json.dumps({
        "benchmark": "adapter_scoring",
        "model": args.model,
        "task": args.task,
        "questions": len(recs),
        "adapters": len(adapters),
        "adapter_source": args.zoo or "random",
        "first_adapted_layer": start,
        "layers": model.config.num_hidden_layers,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "alone_per_s": round(cells / t_alone, 3),
        "shared_per_s": round(cells / t_shared, 3),
        "speedup": round(t_alone / t_shared, 2),
        "max_score_diff": diff,
        "same_outputs" if generative else "same_predictions": same,
        "of": cells,
        "accuracy_alone": [round(a.accuracy, 4) for a in alone],
        "accuracy_shared": [round(a.accuracy, 4) for a in shared],
        "seconds_alone": round(t_alone, 1),
        "seconds_shared": round(t_shared, 1),
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
