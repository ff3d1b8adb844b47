"""Generative scoring throughput: llgbm's batched greedy decoding vs one `generate` call per question.

Decodes the same seeded MAWPS test questions (the preset's chat-wrapped prompt) with llgbm's
decoder (left-padded batches, KV cache, per-row stop) and with one Hugging Face
``model.generate(do_sample=False)`` call per question, in the same run; prints one JSON line with the
questions per second of each, the speed-up ratio, whether the outputs are the same, the `number`
accuracy, and the load average at start and end.

    python benchmarks/generation.py --model smollm2-135m-instruct -n 32 --batch-size 16 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="mawps")
    ap.add_argument("-n", type=int, default=32, help="held-out questions")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    load_start = os.getloadavg()

    import torch

    from llgbm_cli.models import load_base_model
    from llgbm_cli.tasks.generation import cut_at_stop, greedy_generate, stop_ids
    from llgbm_cli.tasks.answer_metrics import score_text
    from llgbm_cli.tasks.prompts import PromptForm
    from llgbm_cli.tasks.registry import builtin_registry

    model, tok = load_base_model(args.model, device="cpu")
    model.eval()
    task = builtin_registry().get(args.task)
    form = PromptForm.of(task)
    recs = task.sample("test", args.n, seed=args.seed)
    prompts = [form.prompt_ids(tok, r) for r in recs]
    greedy_generate(model, tok, prompts[:2], max_new_tokens=4, batch_size=2)  # warm-up

    t0 = time.perf_counter()
    fast = greedy_generate(model, tok, prompts, max_new_tokens=args.max_new_tokens, stop=form.stop,
                           batch_size=args.batch_size)
    t_fast = time.perf_counter() - t0

    ends = sorted(stop_ids(tok))
    slow = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for p in prompts:
            out = model.generate(torch.tensor([p]), attention_mask=torch.ones(1, len(p), dtype=torch.long),
                                 max_new_tokens=args.max_new_tokens, do_sample=False, eos_token_id=ends,
                                 pad_token_id=tok.pad_token_id, stop_strings=list(form.stop) or None, tokenizer=tok)
            ids = [i for i in out[0, len(p):].tolist() if i not in ends]
            slow.append(cut_at_stop(tok.decode(ids, skip_special_tokens=True), form.stop)[0].strip())
    t_slow = time.perf_counter() - t0

    correct = [score_text(form.metric, t, r.gold, form.tolerance) for t, r in zip(fast, recs)]
    print(json.dumps({
        "benchmark": "generation",
        "model": args.model,
        "task": args.task,
        "questions": len(recs),
        "max_new_tokens": args.max_new_tokens,
        "batch_size": args.batch_size,
        "threads": torch.get_num_threads(),
        "batched_qps": round(len(recs) / t_fast, 3),
        "one_generate_per_question_qps": round(len(recs) / t_slow, 3),
        "speedup": round(t_slow / t_fast, 2),
        "same_outputs": sum(a == b for a, b in zip(fast, slow)),
        "of": len(recs),
        form.metric: sum(correct) / len(correct),
        "example_output": fast[0],
        "loadavg_start": [round(x, 2) for x in load_start],
        "loadavg_end": [round(x, 2) for x in os.getloadavg()],
    }))


if __name__ == "__main__":
    main()
