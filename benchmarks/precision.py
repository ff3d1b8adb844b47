"""Float32 against bfloat16, the same work in one run: a teacher's training step, a multitask step,
choice scoring, greedy decoding and the delta computation of cache-deltas.

Teacher step: :func:`llgbm_cli.training.teacher.train_trajectory` on ``--task``'s train examples (the
research profile's layout: rank 8 on q/v of the last 8 layers, batch 8), float32 against
``zoo.mixed_precision = bf16`` (bfloat16 autocast, float32 LoRA weights and AdamW state), the same seed
and batches; seconds per step of each, and the cosine between the two trajectories' final ΔW.
Multitask step: the compact hyperconv generator on the research layout, a batch of 4 conditions, the
token loss against 4 teachers and the delta loss on 2 of them through the frozen base over 8 probes,
backward and AdamW, in float32 against bfloat16 autocast (``train.multitask.mixed_precision = "bf16"``:
float32 generator weights and optimizer state), the same seed; median seconds of ``--steps`` steps.
Scoring, decoding and deltas: the base model loaded in float32 and in bfloat16 (``[model] dtype``);
questions (or adapters) per second of each, whether the predictions agree, the decoded outputs that
match, and the cosine between the float32 and bfloat16 deltas of the same adapters. Prints one JSON
line with each ratio (bf16 / fp32 speed) and ``os.getloadavg()`` at the start and the end; a figure
taken while other jobs share the cores is not a figure (measure near idle).

    python benchmarks/precision.py [--model smollm2-135m-instruct] [--steps 6] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--task", default="arc-easy", help="choice task: teacher steps and scoring")
    ap.add_argument("--gen-task", default="mawps", help="generative task: decoding")
    ap.add_argument("--steps", type=int, default=6, help="teacher steps timed (after one warm-up step)")
    ap.add_argument("-n", type=int, default=48, help="questions scored; decoded: n / 3")
    ap.add_argument("--adapters", type=int, default=8, help="adapters whose deltas are computed")
    ap.add_argument("--last-layers", type=int, default=8, help="LoRA on this many last layers (the research layout)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    load_start = os.getloadavg()

    import torch

    from llgbm_cli.adapters import random_adapter
    from llgbm_cli.config import LlgbmConfig
    from llgbm_cli.deltas.compute import DeltaSpec, compute_deltas
    from llgbm_cli.deltas.probes import load_probes
    from llgbm_cli.models import load_base_model, native_bf16, resolve_device
    from llgbm_cli.progress import NULL_PROGRESS
    from llgbm_cli.tasks.generation import greedy_generate
    from llgbm_cli.tasks.prompts import PromptForm
    from llgbm_cli.tasks.registry import builtin_registry
    from llgbm_cli.tasks.scoring import score_multiple_choice
    from llgbm_cli.training.teacher import train_trajectory

    device = resolve_device(args.device)
    cfg = LlgbmConfig.model_validate({"lora": {"rank": 8, "alpha": 16.0, "target_modules": ["q_proj", "v_proj"],
                                               "last_layers": args.last_layers},
                                      "zoo": {"steps": args.steps + 1, "batch_size": 8, "learning_rate": 1e-3,
                                              "lr_warmup_steps": 1}})
    reg = builtin_registry()
    task = reg.get(args.task)
    form = PromptForm.of(task, scoring="choice")
    out: dict = {"benchmark": "precision", "model": args.model, "device": str(device),
                 "native_bf16": native_bf16(device), "threads": torch.get_num_threads()}

    # --- teacher steps: float32 and bf16 autocast on the float32 model
    model, tok = load_base_model(args.model, dtype="float32", device=str(device))
    train = task.sample("train", 64, seed=args.seed)
    examples = [form.training_example(tok, r, max_length=192) for r in train]
    final = {}
    for name, amp in (("fp32", "no"), ("bf16", "bf16")):
        zc = cfg.zoo.model_copy(update={"mixed_precision": amp})
        saved = {}

        def keep(step, k, mods, loss, saved=saved):
            saved["mods"], saved["loss"] = mods, loss

        run = train_trajectory(model, tok, examples, task=args.task, zc=zc, lc=cfg.lora, seed=args.seed,
                               checkpoints=[args.steps + 1], done=[False], states=[_tmp_state(name)],
                               on_checkpoint=keep, progress=NULL_PROGRESS, label=name)
        final[name] = saved["mods"]
        out[f"teacher_{name}_s_per_step"] = round(run.seconds / run.steps_run, 4)
        out[f"teacher_{name}_loss"] = round(saved["loss"], 4)
    out["teacher_speedup"] = round(out["teacher_fp32_s_per_step"] / out["teacher_bf16_s_per_step"], 2)
    cos = [float(torch.nn.functional.cosine_similarity(final["fp32"][k].delta_weight().flatten(),
                                                       final["bf16"][k].delta_weight().flatten(), dim=0))
           for k in final["fp32"]]
    out["teacher_dW_cosine_min"] = round(min(cos), 4)

    # --- multitask steps: float32 and bf16 autocast, the same generator initialisation and inputs
    out.update(_multitask_steps(model, tok, args, device))

    # --- scoring, decoding, deltas: the model in float32, then in bfloat16
    recs = task.sample("test", args.n, seed=args.seed)
    gtask = reg.get(args.gen_task)
    gform = PromptForm.of(gtask)
    grecs = gtask.sample("test", max(1, args.n // 3), seed=args.seed)
    probes = load_probes("generic", tok, count=16, tasks=reg)
    adapters = [random_adapter(model, seed=args.seed + i, last_layers=args.last_layers, std=0.05) for i in range(args.adapters)]
    res = {}
    for name, dtype in (("fp32", "float32"), ("bf16", "bfloat16")):
        m, tk = (model, tok) if name == "fp32" else load_base_model(args.model, dtype=dtype, device=str(device))
        score_multiple_choice(m, tk, recs[:2], batch_size=8, max_length=192, form=form)  # warm-up
        t0 = time.perf_counter()
        s = score_multiple_choice(m, tk, recs, batch_size=8, max_length=192, form=form)
        t_score = time.perf_counter() - t0
        prompts = [gform.prompt_ids(tk, r) for r in grecs]
        t0 = time.perf_counter()
        gen = greedy_generate(m, tk, prompts, max_new_tokens=32, stop=gform.stop, batch_size=16)
        t_gen = time.perf_counter() - t0
        t0 = time.perf_counter()
        deltas = compute_deltas(m, adapters, probes, DeltaSpec((-1,), "last_token", dtype), adapters_per_batch=1).float()
        t_delta = time.perf_counter() - t0
        res[name] = {"preds": [q.pred for q in s.per_question], "acc": s.accuracy, "gen": gen, "deltas": deltas}
        out[f"score_{name}_q_per_s"] = round(len(recs) / t_score, 2)
        out[f"decode_{name}_q_per_s"] = round(len(grecs) / t_gen, 3)
        out[f"deltas_{name}_adapters_per_s"] = round(len(adapters) / t_delta, 3)
        out[f"score_{name}_accuracy"] = round(s.accuracy, 4)
    for k in ("score", "decode", "deltas"):
        unit = {"score": "q_per_s", "decode": "q_per_s", "deltas": "adapters_per_s"}[k]
        out[f"{k}_speedup"] = round(out[f"{k}_bf16_{unit}"] / out[f"{k}_fp32_{unit}"], 2)
    out["score_same_predictions"] = sum(a == b for a, b in zip(res["fp32"]["preds"], res["bf16"]["preds"]))
    out["score_of"] = len(recs)
    out["decode_same_outputs"] = sum(a == b for a, b in zip(res["fp32"]["gen"], res["bf16"]["gen"]))
    out["decode_of"] = len(grecs)
    dc = torch.nn.functional.cosine_similarity(res["fp32"]["deltas"], res["bf16"]["deltas"], dim=-1)
    out["delta_cosine_min"] = round(float(dc.min()), 5)
    out["load_start"], out["load_end"] = [round(x, 2) for x in load_start], [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))


def _multitask_steps(model, tok, args, device) -> dict:
    import statistics

    import torch

    from llgbm_cli.adapters import random_adapter
    from llgbm_cli.deltas.compute import DeltaSpec, base_states, delta_for_stacked
    from llgbm_cli.deltas.probes import load_probes
    from llgbm_cli.generators import build_generator
    from llgbm_cli.losses import DeltaLoss, masked_token_mse
    from llgbm_cli.lora.tokenizer import LoraTokenizer

    probes = load_probes("generic", tok, count=8)
    spec = DeltaSpec()
    base = base_states(model, probes, spec)
    layout = LoraTokenizer.from_model(model, ["q_proj", "v_proj"], 8, last_layers=args.last_layers)
    torch.manual_seed(args.seed)
    teachers = [random_adapter(model, r=8, seed=10 + i, last_layers=args.last_layers) for i in range(4)]
    teacher = torch.stack([layout.tokenize_adapter(a) for a in teachers]).to(device)
    mask = layout.mask().to(device)
    t_deltas = torch.randn(2, base.shape[0], device=device)
    cond = torch.randn(4, 8, 384, device=device)
    res, losses = {}, {}
    for name, amp in (("fp32", False), ("bf16", True)):
        torch.manual_seed(args.seed)
        gen = build_generator("hyperconv", layout, 384, {"scaling": 2.0, "n_prompts": 8, "preset": "compact"}).to(device)
        gen.init_output(teacher.mean(0), {})
        opt = torch.optim.AdamW(gen.parameters(), lr=1e-3)
        times = []
        for i in range(args.steps + 1):  # the first step is a warm-up
            t = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp):
                g = gen(cond)
                pred = g.tokens if g.tokens is not None else layout.tokenize(g.loras)
                loss = masked_token_mse(pred.float(), teacher, mask)
                d = delta_for_stacked(model, probes, spec, g.select(slice(0, 2)).stacked(), base)
                loss = loss + DeltaLoss("mse")(d.float(), t_deltas)
            loss.backward()
            opt.step()
            if i:
                times.append(time.perf_counter() - t)
        res[name] = statistics.median(times)
        losses[name] = float(loss.detach())
    return {"multitask_fp32_s_per_step": round(res["fp32"], 4), "multitask_bf16_s_per_step": round(res["bf16"], 4),
            "multitask_speedup": round(res["fp32"] / res["bf16"], 2),
            "multitask_fp32_loss": round(losses["fp32"], 5), "multitask_bf16_loss": round(losses["bf16"], 5)}


def _tmp_state(name: str):
    import tempfile
    from pathlib import Path

    return Path(tempfile.mkdtemp(prefix=f"llgbm-precision-{name}-")) / "state.pt"


if __name__ == "__main__":
    main()
