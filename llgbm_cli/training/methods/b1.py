"""B1's objective: a LoRA generator trained on the delta alone (``DeltaOnlyLoss``).

Per step a batch of training adapters (``batch_sampling``: at random, or spread over tasks, which the
relational term needs), their generated LoRAs patched into the base model over the probes, and the
delta loss against the teachers' cached deltas, with the optional norm, variance, logit-KL,
relational and norm-match terms (``delta_loss_type = "kl"``: the delta term is answer-level KL to
the teacher on training prompts of the adapter's task, :mod:`llgbm_cli.training.answer_kl`). Every ``eval_interval`` steps and at the end, generated adapters
(one per task) are checked for norm and diversity collapse. ``llgbm_cli.services.train_delta_only``
is the use case around it.
"""

from __future__ import annotations

from ...errors import InputError
from ..trainer import Objective


def b1_batch_sampling(do) -> str:
    """The batch sampling B1 uses: ``batch_sampling``, with ``auto`` resolved (``tasks`` when the
    relational term is on: it compares adapters of different tasks)."""
    if do.batch_sampling != "auto":
        return do.batch_sampling
    return "tasks" if do.relational_weight > 0 else "uniform"


def objective(resolved, run) -> Objective:
    """B1's objective on a run :func:`llgbm_cli.training.trainer.prepare` made."""
    import math

    import torch

    from ...deltas.compute import delta_for_stacked
    from ...deltas.logits import probe_logits
    from ...evaluation.degeneracy import degeneracy_report, mean_pairwise_cosine
    from ...losses import DeltaOnlyLoss
    from .. import LoopConfig, step_rng
    from ..sampling import task_stratified_batch

    cfg = resolved.config
    do = cfg.train.delta_only
    model, probes, spec, base, bank = run.model, run.probes, run.delta_spec, run.base, run.bank
    t_deltas, teacher_ab, scaling, device, n_train = run.t_deltas, run.teacher_ab, run.scaling, run.acc.device, run.n_train
    base_logits = None
    if do.logit_kl_weight > 0:
        with torch.no_grad():
            base_logits = probe_logits(model, probes)

    center = t_deltas[:n_train].mean(0) if do.delta_centered else None
    loss_fn = DeltaOnlyLoss(do.delta_loss_type, do.delta_normalize, do.lora_norm_weight, do.lora_variance_weight,
                            do.logit_kl_weight, relational_weight=do.relational_weight,
                            norm_match_weight=do.norm_match_weight, space=do.match_space, center=center)
    needs_ab = do.match_space == "delta_w" and (do.relational_weight > 0 or do.norm_match_weight > 0)
    answer_kl = None
    if do.delta_loss_type == "kl":
        if do.delta_centered or do.delta_normalize:
            raise InputError("train.delta_only.delta_loss_type = \"kl\" compares next-token distributions, not "
                             "probe deltas: set delta_centered and delta_normalize to false")
        from ..answer_kl import AnswerKL, teacher_stacked

        answer_kl = AnswerKL(resolved, model, run.tokenizer, [e.task for e in run.entries[:n_train]],
                             do.kl_examples, do.kl_temperature)
    # the probe deltas need a gradient unless the KL replaces them and no delta-space term reads them
    pred_grad = answer_kl is None or (do.match_space == "delta" and (do.relational_weight > 0
                                                                     or do.norm_match_weight > 0))
    bs = min(do.batch_size, n_train)
    total_steps = do.epochs * math.ceil(n_train / bs)
    rank = run.acc.process_index
    by_task = b1_batch_sampling(do) == "tasks"
    train_tasks = [e.task for e in run.entries[:n_train]]

    def step_fn(step: int, net):
        rng = step_rng(cfg.project.seed, step, rank)
        if by_task:
            idx = torch.as_tensor(task_stratified_batch(rng, train_tasks, bs))
        else:
            idx = torch.as_tensor(rng.choice(n_train, size=bs, replace=False))
        g = net(bank.sample(idx.tolist(), rng, device))
        stacked = g.stacked()
        with torch.set_grad_enabled(pred_grad):
            pred = delta_for_stacked(model, probes, spec, stacked, base)
        tgt = t_deltas[idx]
        logits = probe_logits(model, probes, stacked, bs) if base_logits is not None else None
        t_ab = {k: (A[idx], B[idx]) for k, (A, B) in teacher_ab.items()} if needs_ab else None
        ld = None
        if answer_kl is not None:
            ld = answer_kl(stacked, teacher_stacked(teacher_ab, idx, scaling), [train_tasks[int(i)] for i in idx], rng)
        terms = loss_fn(pred, tgt, g.loras, logits, base_logits, teacher_loras=t_ab, scaling=scaling, delta_term=ld)
        with torch.no_grad():
            terms.update(delta_cosine_sim=torch.nn.functional.cosine_similarity(pred, tgt, dim=-1).mean(),
                         delta_pred_norm=pred.norm(dim=-1).mean(), delta_target_norm=tgt.norm(dim=-1).mean())
        return terms

    # One adapter per task (first in zoo order) for the collapse checks: "different tasks".
    probe_ids = list({e.task: i for i, e in reversed(list(enumerate(run.entries)))}.values())
    warnings_seen: list[str] = []

    def eval_fn(step: int, net) -> dict[str, float]:
        res: dict[str, float] = {}
        with torch.no_grad():
            preds, gens = [], []
            for i in range(0, len(probe_ids), max(1, cfg.delta.adapters_per_batch)):
                chunk = probe_ids[i : i + cfg.delta.adapters_per_batch]
                g = net(bank.fixed(chunk, device))
                gens.append(g.loras)
                preds.append(delta_for_stacked(model, probes, spec, g.stacked(), base))
            pred = torch.cat(preds)
            gen_l = {k: (torch.cat([x[k][0] for x in gens]), torch.cat([x[k][1] for x in gens])) for k in gens[0]}
            tch_l = {k: (A[probe_ids], B[probe_ids]) for k, (A, B) in teacher_ab.items()}
            metrics, warns = degeneracy_report(gen_l, tch_l, scaling, norm_ratio=do.collapse_norm_ratio,
                                               max_cosine=do.collapse_cosine)
            res.update(metrics)
            cos = torch.nn.functional.cosine_similarity(pred, t_deltas[probe_ids], dim=-1)
            res["task_delta_cosine"] = float(cos.mean())
            res["gen_delta_pairwise_cosine"] = mean_pairwise_cosine(pred)
            res["teacher_delta_pairwise_cosine"] = mean_pairwise_cosine(t_deltas[probe_ids])
            held = [j for j, i in enumerate(probe_ids) if i >= n_train]
            if held:
                res["heldout_delta_cosine"] = float(cos[held].mean())
        warnings_seen[:] = warns
        return res

    loop_cfg = LoopConfig(
        total_steps=total_steps, learning_rate=do.learning_rate, weight_decay=cfg.train.multitask.weight_decay,
        warmup_steps=0, lr_schedule="constant", max_grad_norm=do.max_grad_norm, log_interval=do.log_interval,
        save_interval=do.save_interval, eval_interval=do.eval_interval, mixed_precision=do.mixed_precision, seed=cfg.project.seed,
    )
    return Objective(step_fn, eval_fn, loop_cfg, extra={"meta_extra": {"variant": "b1"}, "warnings": warnings_seen})
