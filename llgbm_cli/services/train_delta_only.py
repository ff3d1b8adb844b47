"""`train delta-only`: variants that learn from deltas alone.

* B2 (:func:`train_b2`): the DeltaPredictor, frozen encoder -> MLP -> delta, trained on
  (condition prompts, cached delta) pairs; held-out loss and cosine are logged.
* B1 (:func:`train_b1`): a generator trained on the delta alone through ``DeltaOnlyLoss``.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import workdir
from ..config import ResolvedConfig
from ..errors import InputError
from ..holdout import split_entries
from ..progress import NULL_PROGRESS
from ..training.trainer import TrainerResult, TrainerSpec, finish, prepare, trainer_call


@dataclass
class B2Result:
    path: str
    adapters: int
    train: int
    validation: int
    holdout_tasks: list[str]
    epochs: int
    seconds: float
    first: dict[str, float] = field(default_factory=dict)
    last: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _pairs(resolved: ResolvedConfig):
    """Zoo entries that have a cached delta and condition prompts, with the cache."""
    from ..zoo_manifest import Zoo
    from ..deltas.context import open_cache

    cache = open_cache(workdir.path(resolved, "deltas"))
    zoo = Zoo.load(workdir.path(resolved, "zoo"))
    notes = []
    entries = [e for e in zoo.entries if e.id in cache]
    missing = len(zoo.entries) - len(entries)
    if missing:
        notes.append(f"{missing} zoo adapters have no cached delta and are skipped ({workdir.hint('deltas', None)})")
    no_cond = [e.id for e in entries if not e.condition]
    if no_cond:
        notes.append(f"{len(no_cond)} adapters have no condition prompts and are skipped")
        entries = [e for e in entries if e.condition]
    if not entries:
        raise InputError(
            f"no (condition prompts, delta) pairs: the zoo {zoo.manifest_path} and the cache {cache.folder} share no "
            f"adapter with condition prompts; {workdir.hint('zoo', None)} then `{workdir.made_by('deltas')}`"
        )
    return zoo, cache, entries, notes


def train_b2(
    resolved: ResolvedConfig,
    *,
    force: bool = False,
    out_dir: Optional[str | Path] = None,
    encoder=None,
    progress=NULL_PROGRESS,
) -> B2Result:
    """Train the DeltaPredictor on the zoo's condition prompts and the cached deltas; save to train/b2."""
    import torch

    from ..generators.predictor import encode_conditions, fit_predictor, save_predictor
    from ..io import FileLock, atomic_dir, atomic_write_text, check_output, provenance, write_provenance
    from ..models import load_encoder

    cfg = resolved.config
    do = cfg.train.delta_only
    out = Path(out_dir) if out_dir is not None else workdir.path(resolved, "b2")
    check_output(out, workdir.kind("b2"), force=force, roots=[resolved.workdir, resolved.root],
                 inputs=[workdir.path(resolved, "zoo"), workdir.path(resolved, "deltas")])
    zoo, cache, entries, notes = _pairs(resolved)
    train, val = split_entries(entries, list(do.holdout_tasks), do.predictor_val_fraction, cfg.project.seed)
    if encoder is None:
        encoder = load_encoder(cfg.model.encoder, device="cpu")
    task = progress.add("b2: encoding condition prompts", total=None)
    max_len = cfg.train.multitask.max_text_length
    embs = encode_conditions(encoder, [e.condition for e in entries], max_length=min(max_len, 512))
    by_id = {e.id: emb for e, emb in zip(entries, embs)}
    targets = lambda es: torch.stack([cache.row(e.id) for e in es]).float()  # noqa: E731
    progress.update(task, description="b2: training the delta predictor", total=do.predictor_epochs, completed=0)
    log: list[dict] = []

    def on_epoch(epoch: int, rec: dict) -> None:
        log.append(rec)
        progress.update(task, completed=epoch)

    t0 = time.perf_counter()
    res = fit_predictor(
        [by_id[e.id] for e in train], targets(train),
        val_embs=[by_id[e.id] for e in val], val_targets=targets(val) if val else None,
        hidden=do.predictor_hidden, dropout=do.predictor_dropout, learning_rate=do.predictor_learning_rate,
        epochs=do.predictor_epochs, batch_size=do.predictor_batch_size,
        prompts_per_condition=do.predictor_condition_prompts, loss=do.predictor_loss, seed=cfg.project.seed,
        log_interval=max(1, min(do.log_interval, do.predictor_epochs)), on_epoch=on_epoch,
    )
    seconds = time.perf_counter() - t0
    progress.update(task, completed=do.predictor_epochs)
    meta = {
        "variant": "b2",
        "encoder": cfg.model.encoder,
        "base_model": cfg.model.base,
        "cache": {"folder": str(cache.folder), **{k: cache.header.get(k) for k in
                  ("base_model", "base_fingerprint", "probe_fingerprint", "spec", "dim")}},
        "condition_prompts": do.predictor_condition_prompts,
        "max_text_length": min(max_len, 512),
        "train_ids": [e.id for e in train],
        "val_ids": [e.id for e in val],
        "holdout_tasks": list(do.holdout_tasks),
        "final": res.final,
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(out.parent / f".{out.name}.lock", what="this training run"):
        with atomic_dir(out, force=force) as tmp:
            save_predictor(tmp, res.model, meta)
            atomic_write_text(tmp / "metrics.jsonl", "".join(json.dumps(r) + "\n" for r in log))
            write_provenance(tmp, provenance("train delta-only --variant b2", resolved.to_dict(),
                                             cache=str(cache.folder), adapters=len(entries)))
    return B2Result(
        path=str(out), adapters=len(entries), train=len(train), validation=len(val),
        holdout_tasks=list(do.holdout_tasks), epochs=do.predictor_epochs, seconds=round(seconds, 2),
        first=log[0] if log else {}, last=log[-1] if log else {}, notes=notes,
    )


# --------------------------------------------------------------------------- B1


# Keys that may change between a B1 checkpoint and the run that resumes it.
RESUMABLE_B1 = {"epochs", "save_interval", "log_interval", "eval_interval", "collapse_norm_ratio", "collapse_cosine"}


def b1_trainer_spec(resolved: ResolvedConfig) -> TrainerSpec:
    do = resolved.config.train.delta_only
    return TrainerSpec(
        command="train delta-only --variant b1", output="b1", section="delta_only", resumable=frozenset(RESUMABLE_B1),
        generator=do.generator, generator_options=dict(do.generator_options), holdout_tasks=list(do.holdout_tasks),
        condition_mode="prompts", n_prompts=do.condition_prompts, init_from_teachers=do.init_from_teachers,
        generator_preset=do.generator_preset,
        not_compared=lambda k: k.startswith("predictor_"),  # B2's keys
        steps_key="epochs",
    )


def b1_batch_sampling(do) -> str:
    """The batch sampling B1 uses: ``batch_sampling``, with ``auto`` resolved (``tasks`` when the
    relational term is on: it compares adapters of different tasks)."""
    if do.batch_sampling != "auto":
        return do.batch_sampling
    return "tasks" if do.relational_weight > 0 else "uniform"


@trainer_call
def train_b1(
    resolved: ResolvedConfig,
    *,
    force: bool = False,
    resume: bool | str | Path = False,
    out_dir: Optional[str | Path] = None,
    progress=None,
) -> TrainerResult:
    """B1: train the configured generator on the delta alone (``DeltaOnlyLoss``), with the shared loop
    (accelerate, checkpoints, resume, NaN guard, metrics.jsonl). Every ``eval_interval`` steps and at
    the end, generated adapters (one per task) are checked for norm and diversity collapse."""
    import math

    import torch

    from ..deltas.compute import delta_for_stacked
    from ..deltas.logits import probe_logits
    from ..evaluation.degeneracy import degeneracy_report, mean_pairwise_cosine
    from ..losses import DeltaOnlyLoss
    from ..training import LoopConfig, step_rng
    from ..training.sampling import task_stratified_batch

    cfg = resolved.config
    do = cfg.train.delta_only
    if do.relational_weight > 0 and do.batch_size < 2:
        raise InputError(f"train.delta_only.relational_weight = {do.relational_weight:g} compares the adapters of a "
                         f"batch with each other: train.delta_only.batch_size must be at least 2 (it is {do.batch_size})")
    run = prepare(resolved, b1_trainer_spec(resolved), force=force, resume=resume, out_dir=out_dir, progress=progress)
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
        pred = delta_for_stacked(model, probes, spec, stacked, base)
        tgt = t_deltas[idx]
        logits = probe_logits(model, probes, stacked, bs) if base_logits is not None else None
        t_ab = {k: (A[idx], B[idx]) for k, (A, B) in teacher_ab.items()} if needs_ab else None
        terms = loss_fn(pred, tgt, g.loras, logits, base_logits, teacher_loras=t_ab, scaling=scaling)
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
        save_interval=do.save_interval, eval_interval=do.eval_interval, mixed_precision="no", seed=cfg.project.seed,
    )
    return finish(run, loop_cfg, step_fn, eval_fn, progress=progress, meta_extra={"variant": "b1"},
                  warnings=warnings_seen)
