"""The multitask generator's objective: weights and behaviour at once.

Per step: sample ``batch_size`` training adapters and, for each, ``condition_prompts`` of its prompts
(or its task description); the generator produces their LoRAs; the weight loss compares them with
the teachers (masked token MSE, or MSE on ΔW); on the first ``delta_batch_size`` of them the
generated LoRA is patched into the frozen base model over the probes *with autograd*, and the
pooled delta is compared with the teacher's cached delta. ``loss = loss_weights + λ(step) ·
loss_delta``. Held-out tasks are never trained on; their generated-vs-teacher delta cosine is
measured every ``eval_interval`` steps.

Levers (all off by default): ``loss_balance`` (``gradnorm``: the delta term rescaled to the weight
term's gradient norm; ``uncertainty``: learned weights ``exp(−s)·L + s``), ``delta_centered`` (the
delta loss on deltas minus the mean training teacher delta, saved as ``delta_mean.safetensors``
in every checkpoint) and ``task_weight`` (``+ task_weight · loss_task``, the answer-only
cross-entropy of the adapter's task's training examples with the generated LoRA applied).
``delta_probes = "own-task"`` measures both deltas of the delta loss on prompts of the adapter's
own task and ``delta_per_probe`` compares them probe by probe (:class:`ProbeTargets`).
``delta_loss_type = "kl"`` replaces the probe-delta comparison by answer-level matching
(:mod:`llgbm_cli.training.answer_kl`: KL from the teacher's next-token distribution at the answer
position of the task's training prompts); the probe delta is then only logged. The
formulas are in docs/concepts.md. :func:`objective` builds the step and eval functions the shared
loop (:func:`llgbm_cli.training.trainer.finish`) runs; ``llgbm_cli.services.train_multitask`` is the
use case around it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...errors import InputError
from ..trainer import Objective

DELTA_MEAN = "delta_mean.safetensors"  # the mean training delta of a delta_centered run, in each checkpoint


def delta_mean_of(checkpoint: str | Path):
    """The mean training delta ``[D]`` a ``delta_centered`` run subtracted (None for other runs)."""
    p = Path(checkpoint) / DELTA_MEAN
    if not p.exists():
        return None
    from safetensors.torch import load_file

    return load_file(str(p))["mean"]


def objective(resolved, run) -> Objective:
    """The multitask objective on a run :func:`llgbm_cli.training.trainer.prepare` made."""
    import torch

    from ...deltas.compute import delta_for_stacked
    from ...losses import CenteredDeltaLoss, DeltaLoss, MultiTaskLoss, UncertaintyWeights, WeightLoss, gradnorm_scale
    from .. import LoopConfig, step_rng

    cfg = resolved.config
    mt = cfg.train.multitask
    model, probes, spec, base, bank, layout = run.model, run.probes, run.delta_spec, run.base, run.bank, run.layout
    t_deltas, teacher_ab, teacher_tokens, scaling = run.t_deltas, run.teacher_ab, run.teacher_tokens, run.scaling
    device, n_train, n_all = run.acc.device, run.n_train, len(run.entries)
    mask = layout.mask(device)

    kl = mt.delta_loss_type == "kl"
    if kl and (mt.delta_centered or mt.delta_normalize):
        raise InputError("train.multitask.delta_loss_type = \"kl\" compares next-token distributions, not probe "
                         "deltas: set delta_centered and delta_normalize to false")
    on_probes = mt.delta_probes == "own-task" or mt.delta_per_probe  # targets measured here, not the cache's
    if on_probes and (kl or mt.delta_centered):
        raise InputError(f"train.multitask.delta_probes = {mt.delta_probes!r} / delta_per_probe = "
                         f"{str(mt.delta_per_probe).lower()}: the deltas are measured per task's prompts or per probe, "
                         "which delta_loss_type = \"kl\" and delta_centered do not read; use one or the other")
    probe_deltas = ProbeTargets(resolved, run, mt) if on_probes else None
    delta_mean = t_deltas[:n_train].mean(0) if mt.delta_centered else None  # training teachers only
    answer_kl = None
    if kl:
        from ..answer_kl import AnswerKL, teacher_stacked

        answer_kl = AnswerKL(resolved, model, run.tokenizer, [e.task for e in run.train_e], mt.kl_examples,
                             mt.kl_temperature)
    elif delta_mean is not None:
        delta_loss = CenteredDeltaLoss(delta_mean, mt.delta_loss_type, mt.delta_normalize)
    else:
        delta_loss = DeltaLoss(mt.delta_loss_type, mt.delta_normalize)
    mtl = MultiTaskLoss(mt.lambda_delta, mt.lambda_schedule, mt.lambda_warmup_steps)
    rank = run.acc.process_index
    bs = min(mt.batch_size, n_train)
    k_delta = min(mt.delta_batch_size, bs)

    weight_loss = WeightLoss(mt.weight_loss, mt.weight_loss_norm, layout, mask, scaling, teacher_tokens, teacher_ab,
                             n_train, mt.token_weighting, mt.condition_noise / 10)
    balance = mt.loss_balance
    uncertainty = UncertaintyWeights().to(device) if balance == "uncertainty" else None
    task_loss = None
    if mt.task_weight > 0:
        from ..task_loss import TaskLoss

        task_loss = TaskLoss(resolved, model, run.tokenizer, [e.task for e in run.train_e], mt.task_examples)
    k_task = max(1, k_delta)

    def balanced(net, lw, ld, lam: float, out: dict[str, Any]):
        """The weight and delta terms under ``loss_balance`` (``ld`` None: no delta term this step)."""
        if balance == "gradnorm":
            if ld is None:
                out.update(balance_weight_weights=1.0, balance_weight_delta=0.0)
                return lw
            c, gw, gd = gradnorm_scale(lw, ld, [p for p in net.parameters() if p.requires_grad])
            out.update(balance_weight_weights=1.0, balance_weight_delta=lam * c, grad_norm_weights=gw,
                       grad_norm_delta=gd)
            return lw + lam * c * ld
        total = uncertainty.term("weights", lw)
        if ld is not None:
            total = total + lam * uncertainty.term("delta", ld)
        s = uncertainty.log_vars.detach().clone()  # the values this step used (the optimizer updates in place)
        out.update(balance_weight_weights=uncertainty.weight("weights"),
                   balance_weight_delta=lam * uncertainty.weight("delta") if ld is not None else 0.0,
                   uncertainty_s_weights=s[0], uncertainty_s_delta=s[1])
        return total

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
            tgt = t_deltas[idx[:k_delta]]
            if answer_kl is not None:
                with torch.set_grad_enabled(lam > 0):
                    ld = answer_kl(sub.stacked(), teacher_stacked(teacher_ab, idx[:k_delta], scaling),
                                   [run.train_e[int(i)].task for i in idx[:k_delta]], rng)
                with torch.no_grad():  # the probe delta, for the logged delta metrics only
                    pred = delta_for_stacked(model, probes, spec, sub.stacked(), base)
            elif probe_deltas is not None:
                with torch.set_grad_enabled(lam > 0):
                    pred = probe_deltas.generated(sub, idx[:k_delta])
                tgt = probe_deltas.targets[idx[:k_delta]]
                ld = delta_loss(pred, tgt)
            else:
                with torch.set_grad_enabled(lam > 0):
                    pred = delta_for_stacked(model, probes, spec, sub.stacked(), base)
                ld = delta_loss(pred, tgt)
            if balance == "none":
                total, _ = mtl(lw, ld if lam > 0 else None, step)
            else:
                total = balanced(net, lw, ld if lam > 0 else None, lam, out)
            with torch.no_grad():
                out.update(
                    loss_delta=ld,
                    delta_cosine_sim=torch.nn.functional.cosine_similarity(pred, tgt, dim=-1).mean(),
                    delta_pred_norm=pred.norm(dim=-1).mean(),
                    delta_target_norm=tgt.norm(dim=-1).mean(),
                )
                if delta_mean is not None:
                    out["delta_centered_cosine_sim"] = torch.nn.functional.cosine_similarity(
                        pred - delta_mean, tgt - delta_mean, dim=-1).mean()
        else:
            total = lw if balance == "none" else balanced(net, lw, None, lam, out)
        if task_loss is not None:
            sub_t = g.select(slice(0, k_task))
            lt = task_loss(sub_t.stacked(), [run.train_e[int(i)].task for i in idx[:k_task]], rng)
            total = total + mt.task_weight * lt
            out["loss_task"] = lt
        out["loss"] = total
        return out

    def eval_fn(step: int, net) -> dict[str, float]:
        from ...evaluation.delta_metrics import mean_of, norm_ratio

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
                res[f"{name}_delta_norm_ratio"] = mean_of([norm_ratio(a, b) for a, b in zip(pred, tgt)])
                if delta_mean is not None:
                    res[f"{name}_delta_centered_cosine"] = float(torch.nn.functional.cosine_similarity(
                        pred - delta_mean, tgt - delta_mean, dim=-1).mean())
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
    extra: dict[str, Any] = {}
    if delta_mean is not None:
        from ...io import save_safetensors as save_file

        mean_cpu = delta_mean.detach().float().cpu().contiguous()
        about = {"file": DELTA_MEAN, "adapters": n_train, "dim": int(mean_cpu.numel()),
                 "norm": float(mean_cpu.norm())}

        def save_mean(folder: Path) -> None:
            save_file({"mean": mean_cpu}, str(folder / DELTA_MEAN))

        extra = dict(meta_extra={"delta_mean": about}, save_extra=save_mean, provenance_extra={"delta_mean": about})
    return Objective(step_fn, eval_fn, loop_cfg, aux=uncertainty, extra=extra)


class ProbeTargets:
    """The delta loss's deltas measured on the prompts ``delta_probes`` names (``own-task``: each
    adapter's own task's train prompts; ``generic``: the project's probes), averaged over them or per
    probe (``delta_per_probe``, flattened to ``[P·D]``). The training teachers' deltas are computed once
    here (no gradient); :meth:`generated` measures generated adapters the same way, with autograd."""

    def __init__(self, resolved, run, mt):
        import torch

        from ...deltas.compute import base_activations, base_per_probe, base_states, delta_for_stacked, pack_pays
        from ...deltas.probes import load_probes
        from ...tasks.registry import registry_for
        from ..answer_kl import teacher_stacked

        cfg = resolved.config
        self.model, self.spec, self.average = run.model, run.delta_spec, not mt.delta_per_probe
        self.tasks = [e.task for e in run.train_e]
        self.ids = [e.id for e in run.train_e]
        self.own = mt.delta_probes == "own-task"
        reg = registry_for(resolved)
        keys = list(dict.fromkeys(self.tasks)) if self.own else [None]
        self.probes, self.acts, self.base = {}, {}, {}
        for t in keys:
            ps = (load_probes(f"task:{t}", run.tokenizer, count=mt.own_task_probes, seed=cfg.project.seed, tasks=reg,
                              chat_template=cfg.probes.chat_template, max_length=cfg.probes.max_length)
                  if self.own else run.probes)
            self.probes[t] = ps
            # the generic probes as the delta cache has them; a task's own prompts packed only where it pays
            pack = pack_pays(ps, cfg.delta.pack) if self.own else cfg.delta.pack
            self.acts[t] = base_activations(self.model, ps, pack=pack, dtype=self.spec.dtype)
            self.base[t] = (base_states(self.model, ps, self.spec, acts=self.acts[t]) if self.average
                            else base_per_probe(self.model, ps, self.spec, self.acts[t]))
        rows: list = [None] * len(self.tasks)
        per = max(1, cfg.delta.adapters_per_batch)
        with torch.no_grad():
            for t in keys:
                ids = [i for i, u in enumerate(self.tasks) if not self.own or u == t]
                for s in range(0, len(ids), per):
                    chunk = ids[s : s + per]
                    d = delta_for_stacked(self.model, self.probes[t], self.spec,
                                          teacher_stacked(run.teacher_ab, chunk, run.scaling), self.base[t],
                                          acts=self.acts[t], average=self.average)
                    for i, row in zip(chunk, d.reshape(len(chunk), -1)):
                        rows[i] = row
        self.targets = torch.stack(rows)

    def generated(self, sub, idx):
        """``[k, ·]`` deltas of the generated adapters ``sub`` (rows for the training adapters ``idx``)."""
        import torch

        from ...deltas.compute import delta_for_stacked

        keys = [self.tasks[int(i)] if self.own else None for i in idx]
        out: list = [None] * len(keys)
        for t in dict.fromkeys(keys):
            pos = [j for j, u in enumerate(keys) if u == t]
            d = delta_for_stacked(self.model, self.probes[t], self.spec, sub.select(pos).stacked(), self.base[t],
                                  acts=self.acts[t], average=self.average)
            for j, row in zip(pos, d.reshape(len(pos), -1)):
                out[j] = row
        return torch.stack(out)
