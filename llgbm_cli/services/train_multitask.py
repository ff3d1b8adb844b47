"""`llgbm train multitask`: train a LoRA generator on weights and behaviour at once.

Per step: sample ``batch_size`` zoo adapters and, for each, ``condition_prompts`` of its prompts
(or its task description); the generator produces their LoRAs; the weight loss compares them with
the teachers (masked token MSE, or MSE on ΔW); on the first ``delta_batch_size`` of them the
generated LoRA is patched into the frozen base model over the probes *with autograd*, and the
pooled delta is compared with the teacher's cached delta. ``loss = loss_weights + λ(step) ·
loss_delta``. Held-out tasks (``holdout_tasks``) are never trained on; their generated-vs-teacher
delta cosine is measured every ``eval_interval`` steps.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ..training.trainer import TrainerResult, TrainerSpec, finish, prepare


# Keys that may differ between a checkpoint's config and a resumed run's.
RESUMABLE = {"total_steps", "save_interval", "log_interval", "eval_interval"}


MultitaskResult = TrainerResult  # one result type for the generator trainers


# --------------------------------------------------------------------------- the service


def trainer_spec(resolved) -> TrainerSpec:
    mt = resolved.config.train.multitask
    return TrainerSpec(
        command="train multitask", output="multitask", section="multitask", resumable=frozenset(RESUMABLE),
        generator=mt.generator, generator_options=dict(mt.generator_options), holdout_tasks=list(mt.holdout_tasks),
        condition_mode=mt.condition, n_prompts=mt.condition_prompts if mt.condition == "prompts" else 1,
        mixed_precision=mt.mixed_precision, generator_preset=mt.generator_preset,
    )


def train_multitask(
    resolved,
    *,
    force: bool = False,
    resume: bool | str | Path = False,
    out_dir: Optional[str | Path] = None,
    progress=None,
) -> TrainerResult:
    """Train the configured generator; returns first/last metrics and the final checkpoint path.

    ``resume=True`` continues from the latest checkpoint in the output folder; a path continues
    from that checkpoint folder. ``force`` replaces a finished or partial earlier run.
    """
    import torch

    from ..deltas.compute import delta_for_stacked
    from ..losses import DeltaLoss, MultiTaskLoss, WeightLoss
    from ..training import LoopConfig, step_rng

    cfg = resolved.config
    mt = cfg.train.multitask
    run = prepare(resolved, trainer_spec(resolved), force=force, resume=resume, out_dir=out_dir, progress=progress)
    model, probes, spec, base, bank, layout = run.model, run.probes, run.delta_spec, run.base, run.bank, run.layout
    t_deltas, teacher_ab, teacher_tokens, scaling = run.t_deltas, run.teacher_ab, run.teacher_tokens, run.scaling
    device, n_train, n_all = run.acc.device, run.n_train, len(run.entries)
    mask = layout.mask(device)

    delta_loss = DeltaLoss(mt.delta_loss_type, mt.delta_normalize)
    mtl = MultiTaskLoss(mt.lambda_delta, mt.lambda_schedule, mt.lambda_warmup_steps)
    rank = run.acc.process_index
    bs = min(mt.batch_size, n_train)
    k_delta = min(mt.delta_batch_size, bs)

    weight_loss = WeightLoss(mt.weight_loss, mt.weight_loss_norm, layout, mask, scaling, teacher_tokens, teacher_ab,
                             n_train, mt.token_weighting, mt.condition_noise / 10)

    def step_fn(step: int, net):
        rng = step_rng(cfg.project.seed, step, rank)
        idx = torch.as_tensor(rng.choice(n_train, size=bs, replace=False))
        cond = bank.sample(idx.tolist(), rng, device)
        g = net(cond)
        lw = weight_loss(g, idx, rng)
        lam = mtl.lambda_at(step)
        out: dict[str, Any] = {"loss_weights": lw, "lambda_delta": lam}
        if k_delta > 0:
            sub = g.select(slice(0, k_delta))
            with torch.set_grad_enabled(lam > 0):
                pred = delta_for_stacked(model, probes, spec, sub.stacked(), base)
            tgt = t_deltas[idx[:k_delta]]
            ld = delta_loss(pred, tgt)
            total, _ = mtl(lw, ld if lam > 0 else None, step)
            with torch.no_grad():
                out.update(
                    loss_delta=ld,
                    delta_cosine_sim=torch.nn.functional.cosine_similarity(pred, tgt, dim=-1).mean(),
                    delta_pred_norm=pred.norm(dim=-1).mean(),
                    delta_target_norm=tgt.norm(dim=-1).mean(),
                )
        else:
            total = lw
        out["loss"] = total
        return out

    def eval_fn(step: int, net) -> dict[str, float]:
        res: dict[str, float] = {}
        groups = [("heldout", list(range(n_train, n_all)))] if run.held_e else []
        groups.append(("train", list(range(min(n_train, 8)))))
        with torch.no_grad():
            for name, ids in groups:
                preds = []
                for i in range(0, len(ids), max(1, cfg.delta.adapters_per_batch)):
                    chunk = ids[i : i + cfg.delta.adapters_per_batch]
                    g = net(bank.fixed(chunk, device))
                    preds.append(delta_for_stacked(model, probes, spec, g.stacked(), base))
                pred = torch.cat(preds)
                tgt = t_deltas[ids]
                res[f"{name}_delta_cosine"] = float(torch.nn.functional.cosine_similarity(pred, tgt, dim=-1).mean())
                if name == "heldout":
                    # Reference point: predicting the mean training delta for every held-out task.
                    mean = t_deltas[:n_train].mean(0, keepdim=True).expand_as(tgt)
                    res["heldout_mean_delta_cosine"] = float(torch.nn.functional.cosine_similarity(mean, tgt, dim=-1).mean())
        return res

    loop_cfg = LoopConfig(
        total_steps=mt.total_steps, learning_rate=mt.learning_rate, weight_decay=mt.weight_decay,
        warmup_steps=mt.warmup_steps, lr_schedule=mt.lr_schedule, max_grad_norm=mt.max_grad_norm,
        log_interval=mt.log_interval, save_interval=mt.save_interval, eval_interval=mt.eval_interval,
        mixed_precision=mt.mixed_precision, seed=cfg.project.seed,
    )
    return finish(run, loop_cfg, step_fn, eval_fn, progress=progress)
