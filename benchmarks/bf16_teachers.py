"""Teachers trained in float32 and in bfloat16 mixed precision score the same: accuracy on held-out test
questions of the same tasks, paired question by question.

For each task, `llgbm zoo build` trains the research profile's teacher twice with the same seed and data
(one trajectory on the first half of the train split, the profile's steps for the task, its last
checkpoint): once with ``zoo.mixed_precision = "no"`` (float32) and once with ``"bf16"`` (bfloat16
autocast, float32 LoRA weights and AdamW state). Both teachers are scored by option text on the same
``-n`` seeded test questions with the base model in float32. Per task: the two accuracies, their
difference with the 95% paired-bootstrap interval, the exact McNemar p-value (llgbm's
``evaluation.stats``, scipy underneath), the questions where the two disagree, the cosine between the
two teachers' ΔW, and each build's wall time (their ratio is the training speed-up). Prints one JSON
line with the load average at the start and the end.

    python benchmarks/bf16_teachers.py [--tasks arc-easy,boolq,arc-challenge] [-n 200]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", default=str(REPO / "profiles" / "research.toml"),
                    help="the project whose teacher settings are used (default: the research profile)")
    ap.add_argument("--tasks", default="arc-easy,boolq,arc-challenge", help="multiple-choice tasks")
    ap.add_argument("--steps", type=int, default=None, help="teacher steps (default: the project's, per task)")
    ap.add_argument("-n", type=int, default=200, help="test questions scored per task")
    ap.add_argument("--workdir", default=None, help="where the two zoos go (default: a temporary folder)")
    args = ap.parse_args()
    load_start = os.getloadavg()

    import torch

    from llgbm_cli.adapters import load_adapter
    from llgbm_cli.config import load_config
    from llgbm_cli.evaluation.stats import mcnemar_exact, paired_bootstrap
    from llgbm_cli.models import load_base_model
    from llgbm_cli.tasks.evaluate import form_for, score_records_with
    from llgbm_cli.tasks.registry import registry_for
    from llgbm_cli.zoo_manifest import Zoo

    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    work = Path(args.workdir or tempfile.mkdtemp(prefix="llgbm-bf16-teachers-"))
    resolved = load_config(args.project)
    cfg = resolved.config
    built, seconds = {}, {}
    for name, amp in (("fp32", "no"), ("bf16", "bf16")):
        zoo = work / f"zoo-{name}"
        cmd = [sys.executable, "-m", "llgbm_cli", "-p", args.project, "--quiet", "--json", "zoo", "build",
               "--tasks", ",".join(tasks), "--set", f"zoo.path={zoo}", "--set", "zoo.runs=1",
               "--set", "zoo.checkpoints=1", "--set", f"zoo.mixed_precision={amp}"]
        if args.steps:  # a quick run (the suite's smoke test): every task this many steps
            cmd += ["--steps", str(args.steps), "--set", "zoo.warmup_steps=0", "--set", "zoo.per_task={}"]
        t0 = time.perf_counter()
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
        if r.returncode != 0:
            sys.exit(f"zoo build ({name}) failed: {r.stderr.strip().splitlines()[-1] if r.stderr.strip() else r.returncode}")
        seconds[name] = time.perf_counter() - t0
        built[name] = Zoo.load(zoo)

    model, tok = load_base_model(cfg.model.base, dtype="float32", device="cpu")
    reg = registry_for(resolved)
    out: dict = {"benchmark": "bf16_teachers", "model": cfg.model.base, "n": args.n, "tasks": {},
                 "build_fp32_s": round(seconds["fp32"], 1), "build_bf16_s": round(seconds["bf16"], 1),
                 "build_speedup": round(seconds["fp32"] / seconds["bf16"], 2), "threads": torch.get_num_threads()}
    for t in tasks:
        task = reg.get(t)
        form = form_for(resolved, task)  # the project's scoring (the research profile: option text)
        recs = task.sample("test", args.n, seed=cfg.project.seed)
        res, mods = {}, {}
        for name, zoo in built.items():
            e = max((e for e in zoo.entries if e.task == t), key=lambda e: e.step)
            ad = load_adapter(zoo.path_of(e))
            mods[name] = ad
            s = score_records_with(model, tok, ad, form, recs, batch_size=cfg.eval.batch_size,
                                   max_length=cfg.data.max_length)
            res[name] = [float(v) for v in s.values()]
        mc = mcnemar_exact(res["bf16"], res["fp32"])
        boot = paired_bootstrap(res["bf16"], res["fp32"], seed=cfg.project.seed)
        acc = {k: sum(v) / len(v) for k, v in res.items()}
        out["tasks"][t] = {
            "fp32_accuracy": round(acc["fp32"], 4), "bf16_accuracy": round(acc["bf16"], 4),
            "difference": round(acc["bf16"] - acc["fp32"], 4),
            "difference_low": round(boot["low"], 4), "difference_high": round(boot["high"], 4),
            "mcnemar_p": round(mc["p"], 4), "disagree": mc["a_only"] + mc["b_only"],
            "within_1_point": abs(acc["bf16"] - acc["fp32"]) <= 0.01 + 1e-9,
            "dW_cosine_min": round(_dw_cosine_min(mods["fp32"], mods["bf16"]), 4),
        }
    out["load_start"], out["load_end"] = [round(x, 2) for x in load_start], [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(out))


def _dw_cosine_min(a, b) -> float:
    import torch

    cos = []
    for k in a.modules:
        x, y = a.modules[k].delta_weight().flatten(), b.modules[k].delta_weight().flatten()
        cos.append(float(torch.nn.functional.cosine_similarity(x, y, dim=0)))
    return min(cos)


if __name__ == "__main__":
    main()
