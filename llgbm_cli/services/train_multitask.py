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

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError

log = logging.getLogger(__name__)

OUT_SUBDIR = Path("train") / "multitask"
# Keys that may differ between a checkpoint's config and a resumed run's.
RESUMABLE = {"total_steps", "save_interval", "log_interval", "eval_interval"}


@dataclass
class MultitaskResult:
    out_dir: str
    final_checkpoint: str
    steps: int
    resumed_from: Optional[int]
    generator: str
    parameters: int
    train_adapters: int
    heldout_adapters: int
    teacher_deltas: str
    first: dict = field(default_factory=dict)
    last: dict = field(default_factory=dict)
    eval: dict = field(default_factory=dict)
    seconds: float = 0.0
    is_main: bool = True
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("is_main")
        return d


# --------------------------------------------------------------------------- inputs


def _zoo_split(resolved, mt):
    from ..zoo import Zoo

    zoo = Zoo.load(resolved.resolve_path(resolved.config.zoo.path))
    if not zoo.entries:
        raise InputError(f"{zoo.manifest_path}: the zoo is empty; run `llgbm zoo build` first")
    unknown = [t for t in mt.holdout_tasks if t not in zoo.tasks()]
    if unknown:
        raise InputError(
            f"train.multitask.holdout_tasks: {', '.join(unknown)} not in the zoo (its tasks: {', '.join(zoo.tasks())})"
        )
    train = [e for e in zoo.entries if e.task not in mt.holdout_tasks]
    held = [e for e in zoo.entries if e.task in mt.holdout_tasks]
    if not train:
        raise InputError("train.multitask.holdout_tasks: every zoo task is held out; nothing left to train on")
    return zoo, train, held


def _teacher_deltas(resolved, model, probes, spec, zoo, entries, adapters, rep=None):
    """Teacher deltas ``[N, D]`` in ``entries`` order: from the delta cache when it holds them all
    for this base/probes/spec, else computed here (same function as ``cache-deltas``)."""
    import torch

    from ..deltas.compute import compute_deltas

    from ..deltas.cache import DeltaCache, make_header

    folder = resolved.resolve_path(resolved.config.delta.cache)
    if DeltaCache.exists(folder):
        cache = DeltaCache.open(folder)
        diffs = cache.mismatches(make_header(model, probes, spec))
        if diffs:
            raise InputError(
                f"{folder}: the delta cache was made with another {'; '.join(diffs)} than this config; "
                "run `llgbm cache-deltas` (with --force to rebuild) before training"
            )
        fresh = all(e.id in cache and cache.entry(e.id).sha256 == a.sha256() for e, a in zip(entries, adapters))
        if fresh:
            return torch.stack([cache.row(e.id).float() for e in entries]), f"cache {folder}"
        log.warning("%s lacks some zoo adapters or holds stale rows; computing teacher deltas in-process", folder)
    task = rep.add("teacher deltas", total=len(adapters)) if rep is not None else None
    d = compute_deltas(model, adapters, probes, spec, resolved.config.delta.adapters_per_batch,
                       progress=(lambda k: rep.advance(task, k)) if task is not None else None)
    return d, "computed in-process (run `llgbm cache-deltas` to reuse them)"


def _check_resume(ckpt: Path, resolved) -> None:
    from ..io import read_provenance

    prov = read_provenance(ckpt) or {}
    old = prov.get("config")
    if not old:
        return
    new = resolved.to_dict()
    diffs = []
    for sec in ("model", "lora", "probes", "delta"):
        if old.get(sec) != new.get(sec):
            diffs.append(sec)
    om, nm = old.get("train", {}).get("multitask", {}), new["train"]["multitask"]
    diffs += [f"train.multitask.{k}" for k in nm if k not in RESUMABLE and om.get(k) != nm[k]]
    if diffs:
        raise InputError(
            f"{ckpt}: cannot resume: the config differs from the checkpoint's in {', '.join(diffs)}; "
            "restore those values or start afresh with --force"
        )


# --------------------------------------------------------------------------- the service


def train_multitask(
    resolved,
    *,
    force: bool = False,
    resume: bool | str | Path = False,
    out_dir: Optional[str | Path] = None,
    progress=None,
) -> MultitaskResult:
    """Train the configured generator; returns first/last metrics and the final checkpoint path.

    ``resume=True`` continues from the latest checkpoint in the output folder; a path continues
    from that checkpoint folder. ``force`` replaces a finished or partial earlier run.
    """
    import torch

    from ..deltas.compute import DeltaSpec, base_states, delta_for_stacked
    from ..deltas.probes import load_probes
    from ..generators import build_generator
    from ..generators.condition import ConditionBank, describe_task
    from ..io import check_output, provenance, write_provenance
    from ..losses import DeltaLoss, MultiTaskLoss, delta_w_mse, masked_token_mse
    from ..lora.tokenizer import LoraTokenizer
    from ..models import load_base_model, load_encoder
    from ..training.world import generator_meta, load_teacher_adapters, run_folder, save_generator_meta
    from ..training import (LoopConfig, find_latest_checkpoint, is_checkpoint, load_trainer_state, make_accelerator,
                            run_training, step_rng)

    cfg = resolved.config
    mt = cfg.train.multitask
    out = Path(out_dir) if out_dir is not None else resolved.workdir / OUT_SUBDIR
    # Every process checks before any writes, so all of them agree under `accelerate launch`.
    resume_ckpt: Optional[Path] = None
    if resume:
        resume_ckpt = Path(resume) if not isinstance(resume, bool) else find_latest_checkpoint(out)
        if resume_ckpt is None:
            raise InputError(f"{out}: no checkpoint to resume from; start a run without --resume")
        if not is_checkpoint(resume_ckpt):
            raise InputError(f"{resume_ckpt}: not a training checkpoint (no trainer_state.json)")
        load_trainer_state(resume_ckpt)  # refused before anything is loaded or written if it is not plain data
        _check_resume(resume_ckpt, resolved)
    elif out.exists() and out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"{out}: a run is already there; pass --resume to continue it or --force to replace it")
    check_output(out, "training run", force=True, roots=[resolved.workdir, resolved.root],
                 inputs=[resolved.resolve_path(cfg.zoo.path), resolved.resolve_path(cfg.delta.cache)])

    zoo, train_e, held_e = _zoo_split(resolved, mt)
    acc = make_accelerator(mt.mixed_precision, cfg.model.device)
    main = acc.is_main_process
    with run_folder(out, acc, force=force, resume=resume):
        torch.manual_seed(cfg.project.seed)

        model, tok = load_base_model(cfg.model.base, cfg.model.dtype, str(acc.device))
        layout = LoraTokenizer.from_model(model, cfg.lora.target_modules, cfg.lora.rank, cfg.lora.last_layers)
        entries = train_e + held_e
        adapters, scaling, teacher_ab = load_teacher_adapters(zoo, entries, layout, cfg.lora, acc.device)
        n_train = len(train_e)
        teacher_tokens = torch.stack([layout.tokenize_adapter(a) for a in adapters]).to(acc.device)
        mask = layout.mask(acc.device)

        spec = DeltaSpec.from_config(cfg.delta)
        probes = load_probes(cfg.probes.source, tok, count=cfg.probes.count, chat_template=cfg.probes.chat_template,
                             max_length=cfg.probes.max_length, seed=cfg.project.seed).to(acc.device)
        base = base_states(model, probes, spec)
        t_deltas, delta_src = _teacher_deltas(resolved, model, probes, spec, zoo, entries, adapters,
                                              progress if main else None)
        t_deltas = t_deltas.to(acc.device)

        encoder = load_encoder(cfg.model.encoder, str(acc.device), max_length=mt.max_text_length)
        if mt.condition == "prompts":
            texts = [e.condition for e in entries]
            n_prompts = mt.condition_prompts
        else:
            texts = [[describe_task(e.task)] for e in entries]
            n_prompts = 1
        bank = ConditionBank.build(encoder, texts, n_prompts, mt.max_text_length)
        del encoder

        options = {"scaling": scaling, "n_prompts": n_prompts, **mt.generator_options}
        gen = build_generator(mt.generator, layout, bank.dim, options).to(acc.device)
        if resume_ckpt is None:
            mean_ab = {k: (A[:n_train].mean(0), B[:n_train].mean(0)) for k, (A, B) in teacher_ab.items()}
            gen.init_output(teacher_tokens[:n_train].mean(0), mean_ab)

        delta_loss = DeltaLoss(mt.delta_loss_type, mt.delta_normalize)
        mtl = MultiTaskLoss(mt.lambda_delta, mt.lambda_schedule, mt.lambda_warmup_steps)
        rank = acc.process_index
        bs = min(mt.batch_size, n_train)
        k_delta = min(mt.delta_batch_size, bs)

        def weight_loss(g, idx):
            if mt.weight_loss == "tokens":
                pred = g.tokens if g.tokens is not None else layout.tokenize(g.loras)
                return masked_token_mse(pred, teacher_tokens[idx], mask)
            tgt = {k: (A[idx], B[idx]) for k, (A, B) in teacher_ab.items()}
            return delta_w_mse(g.loras, tgt, scaling)

        def step_fn(step: int, net):
            rng = step_rng(cfg.project.seed, step, rank)
            idx = torch.as_tensor(rng.choice(n_train, size=bs, replace=False))
            cond = bank.sample(idx.tolist(), rng, acc.device)
            g = net(cond)
            lw = weight_loss(g, idx)
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
            groups = [("heldout", list(range(n_train, len(entries))))] if held_e else []
            groups.append(("train", list(range(min(n_train, 8)))))
            with torch.no_grad():
                for name, ids in groups:
                    preds = []
                    for i in range(0, len(ids), max(1, cfg.delta.adapters_per_batch)):
                        chunk = ids[i : i + cfg.delta.adapters_per_batch]
                        g = net(bank.fixed(chunk, acc.device))
                        preds.append(delta_for_stacked(model, probes, spec, g.stacked(), base))
                    pred = torch.cat(preds)
                    tgt = t_deltas[ids]
                    res[f"{name}_delta_cosine"] = float(torch.nn.functional.cosine_similarity(pred, tgt, dim=-1).mean())
                    if name == "heldout":
                        # Reference point: predicting the mean training delta for every held-out task.
                        mean = t_deltas[:n_train].mean(0, keepdim=True).expand_as(tgt)
                        res["heldout_mean_delta_cosine"] = float(torch.nn.functional.cosine_similarity(mean, tgt, dim=-1).mean())
            return res

        meta_common = generator_meta(cfg, model, scaling, {"mode": mt.condition, "n_prompts": n_prompts, "max_text_length": mt.max_text_length}, spec, probes, train_e, held_e)

        def save_meta(folder: Path, net, step: int) -> None:
            save_generator_meta(folder, meta_common, net, step)

        if main:
            write_provenance(out, provenance("train multitask", resolved.to_dict(), teacher_deltas=delta_src,
                                             train_adapters=[e.id for e in train_e],
                                             heldout_adapters=[e.id for e in held_e]))
        loop_cfg = LoopConfig(
            total_steps=mt.total_steps, learning_rate=mt.learning_rate, weight_decay=mt.weight_decay,
            warmup_steps=mt.warmup_steps, lr_schedule=mt.lr_schedule, max_grad_norm=mt.max_grad_norm,
            log_interval=mt.log_interval, save_interval=mt.save_interval, eval_interval=mt.eval_interval,
            mixed_precision=mt.mixed_precision, seed=cfg.project.seed,
        )
        res = run_training(gen, step_fn, loop_cfg, out, accelerator=acc, save_meta=save_meta,
                           config_dict=resolved.to_dict(), command="train multitask", resume_from=resume_ckpt,
                           eval_fn=eval_fn, progress=progress if main else None)
        return MultitaskResult(
            str(out), str(res.final_checkpoint), res.steps, res.resumed_from, mt.generator, gen.num_parameters(),
            n_train, len(held_e), delta_src, res.first, res.last, res.eval, res.seconds, main, res.processes,
        )
