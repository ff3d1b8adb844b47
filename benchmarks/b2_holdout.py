"""B2 on held-out tasks: leave one task out of training, predict its adapters' deltas from their
condition prompts, and retrieve from an index of the other tasks' adapters.

Figures per held-out task and averaged: cosine between predicted and teacher delta (and the same
for the naive predictor, the training tasks' mean delta), and top-1 retrieval accuracy: the
retrieved adapter belongs to the held-out task's nearest task (by mean teacher delta), against
the mean-delta query and chance.

Teachers. With ``--project FILE`` the project's zoo and delta cache are used as they are (real
teachers from `llgbm zoo build` + `llgbm cache-deltas`). Without it a world is built here: on the
real base model (SmolLM2-135M by default) and the real MiniLM encoder, with each task's real
prompts from the shipped pack as conditions, but with *synthetic* teacher adapters (a seeded
random LoRA direction per task plus per-checkpoint noise; ARC-Challenge and OpenBookQA share part
of ARC-Easy's direction, so related tasks have related deltas). Deltas are computed by the same
code as `cache-deltas`.

    python benchmarks/b2_holdout.py                       # built-in base, synthetic teachers
    python benchmarks/b2_holdout.py --project llgbm.toml  # a real zoo + cache

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

TASKS = ["arc-easy", "arc-challenge", "boolq", "openbookqa", "piqa"]
SHARE = {"arc-challenge": ("arc-easy", 0.6), "openbookqa": ("arc-easy", 0.4)}


def build_world(folder: Path, base: str, per_task: int, prompts: int, probes: int, seed: int):
    import torch

    from llgbm_cli.adapters import LoraAdapter, LoraModule, random_adapter, save_adapter
    from llgbm_cli.config import load_config
    from llgbm_cli.data import sample
    from llgbm_cli.models import load_base_model
    from llgbm_cli.services.cache_deltas import run_cache_deltas
    from llgbm_cli.zoo_manifest import Zoo, ZooEntry

    p = folder / "llgbm.toml"
    p.write_text(f"""
[project]
workdir = "runs"
seed = {seed}
[model]
base = "{base}"
device = "cpu"
[lora]
rank = 8
alpha = 16.0
[probes]
source = "generic"
count = {probes}
[delta]
adapters_per_batch = 8
""")
    resolved = load_config(p, explicit=True)
    model, _ = load_base_model(base, device="cpu")
    std = 0.05
    dirs = {t: random_adapter(model, r=8, alpha=16.0, seed=seed * 100 + i, std=std) for i, t in enumerate(TASKS)}
    zoo_dir = resolved.resolve_path("zoo")
    entries = []
    for ti, task in enumerate(TASKS):
        own = dirs[task]
        mix = SHARE.get(task)
        texts = [r.prompt for r in sample(task, "train", prompts, seed=seed)]
        for j in range(per_task):
            g = torch.Generator().manual_seed(seed * 10_000 + ti * 100 + j)
            mods = {}
            for k, m in own.modules.items():
                A, B = m.A.clone(), m.B.clone()
                if mix is not None:  # a related task: part of another task's direction
                    other, w = dirs[mix[0]].modules[k], mix[1]
                    A, B = w * other.A + (1 - w) * A, w * other.B + (1 - w) * B
                A = A + 0.3 * std * torch.randn(A.shape, generator=g)
                B = B + 0.3 * std * torch.randn(B.shape, generator=g)
                mods[k] = LoraModule(A, B, m.scaling)
            aid = f"{task}-{j}"
            save_adapter(zoo_dir / "adapters" / aid, LoraAdapter(mods, 8, 16.0, own.target_modules, base_model=base),
                         base_model=base)
            cond = texts[(j * prompts) // per_task :] + texts[: (j * prompts) // per_task]
            entries.append(ZooEntry(id=aid, path=f"adapters/{aid}", task=task, step=j, seed=seed, condition=cond))
    Zoo(zoo_dir, entries).save()
    run_cache_deltas(resolved)
    return resolved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--project", help="use this project's zoo and delta cache (real teachers)")
    ap.add_argument("--base", default="smollm2-135m-instruct", help="base model of the built world")
    ap.add_argument("--per-task", type=int, default=6)
    ap.add_argument("--prompts", type=int, default=32, help="condition prompts per task in the built world")
    ap.add_argument("--probes", type=int, default=8, help="generic probes in the built world")
    ap.add_argument("--epochs", type=int, default=None, help="override train.b2.epochs")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    import numpy as np
    import torch

    torch.set_num_threads(1)
    from llgbm_cli.config import load_config
    from llgbm_cli.deltas.cache import DeltaCache
    from llgbm_cli.generators.predictor import condition_vector, encode_conditions, fit_predictor
    from llgbm_cli.index import DeltaIndex
    from llgbm_cli.models import load_encoder
    from llgbm_cli.zoo_manifest import Zoo

    t0 = time.perf_counter()
    tmp = None
    if args.project:
        resolved = load_config(args.project, explicit=True)
        world = "project"
    else:
        tmp = tempfile.TemporaryDirectory(prefix="b2bench-")
        resolved = build_world(Path(tmp.name), args.base, args.per_task, args.prompts, args.probes, args.seed)
        world = f"built: {args.base}, synthetic teachers"
    world_s = time.perf_counter() - t0
    cfg = resolved.config
    do = cfg.train.delta_only
    cache = DeltaCache.open(resolved.resolve_path(cfg.delta.cache))
    zoo = Zoo.load(resolved.resolve_path(cfg.zoo.path))
    entries = [e for e in zoo.entries if e.id in cache and e.condition]
    tasks = sorted({e.task for e in entries})
    encoder = load_encoder(cfg.model.encoder, device="cpu")
    embs = dict(zip([e.id for e in entries], encode_conditions(encoder, [e.condition for e in entries])))
    deltas = {e.id: cache.row(e.id).float() for e in entries}
    task_mean = {t: torch.stack([deltas[e.id] for e in entries if e.task == t]).mean(0) for t in tasks}
    epochs = args.epochs or cfg.train.b2.epochs

    per_task = {}
    t1 = time.perf_counter()
    for held in tasks:
        train = [e for e in entries if e.task != held]
        test = [e for e in entries if e.task == held]
        res = fit_predictor([embs[e.id] for e in train], torch.stack([deltas[e.id] for e in train]),
                            hidden=cfg.train.b2.hidden, dropout=cfg.train.b2.dropout,
                            learning_rate=cfg.train.b2.learning_rate, epochs=epochs,
                            batch_size=cfg.train.b2.batch_size, prompts_per_condition=cfg.train.b2.condition_prompts,
                            loss=cfg.train.b2.loss, seed=args.seed, log_interval=epochs)
        model = res.model
        with torch.no_grad():
            pred = model(torch.stack([condition_vector(embs[e.id]) for e in test]))
        tgt = torch.stack([deltas[e.id] for e in test])
        mean = torch.stack([deltas[e.id] for e in train]).mean(0)
        cos = torch.nn.functional.cosine_similarity(pred, tgt, dim=-1)
        mcos = torch.nn.functional.cosine_similarity(mean[None].expand_as(tgt), tgt, dim=-1)
        others = [t for t in tasks if t != held]
        nearest = max(others, key=lambda t: float(torch.nn.functional.cosine_similarity(task_mean[t], task_mean[held], dim=0)))
        idx = DeltaIndex.build(np.stack([deltas[e.id].numpy() for e in train]), [e.id for e in train],
                               tasks=[e.task for e in train])
        _, rows = idx.search(pred.numpy(), 1)
        hit = [idx.tasks[r] == nearest for r in rows[:, 0]]
        _, mrows = idx.search(mean[None].numpy(), 1)
        per_task[held] = {
            "adapters": len(test),
            "cosine": round(float(cos.mean()), 4),
            "mean_delta_cosine": round(float(mcos.mean()), 4),
            "nearest_task": nearest,
            "top1_nearest_task": round(float(np.mean(hit)), 4),
            "mean_delta_top1_nearest_task": float(idx.tasks[mrows[0, 0]] == nearest),
            "retrieved_tasks": sorted({idx.tasks[r] for r in rows[:, 0]}),
        }
    avg = lambda k: round(float(np.mean([v[k] for v in per_task.values()])), 4)  # noqa: E731
    print(json.dumps({
        "benchmark": "b2_holdout",
        "world": world,
        "adapters": len(entries),
        "tasks": len(tasks),
        "dim": cache.dim,
        "epochs": epochs,
        "hidden": cfg.train.b2.hidden,
        "cosine": avg("cosine"),
        "mean_delta_cosine": avg("mean_delta_cosine"),
        "top1_nearest_task": avg("top1_nearest_task"),
        "mean_delta_top1_nearest_task": avg("mean_delta_top1_nearest_task"),
        "chance_top1": round(1 / max(1, len(tasks) - 1), 4),
        "per_task": per_task,
        "world_seconds": round(world_s, 1),
        "train_eval_seconds": round(time.perf_counter() - t1, 1),
    }))
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
