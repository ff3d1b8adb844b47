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

from ..commands.common import NULL_PROGRESS
from ..config import ResolvedConfig
from ..errors import InputError


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


def b2_folder(resolved: ResolvedConfig) -> Path:
    return resolved.workdir / "train" / "b2"


def b1_folder(resolved: ResolvedConfig) -> Path:
    return resolved.workdir / "train" / "b1"


def _pairs(resolved: ResolvedConfig):
    """Zoo entries that have a cached delta and condition prompts, with the cache."""
    from ..zoo import Zoo
    from .index import cache_folder, open_cache

    cache = open_cache(cache_folder(resolved))
    zoo = Zoo.load(resolved.resolve_path(resolved.config.zoo.path))
    notes = []
    entries = [e for e in zoo.entries if e.id in cache]
    missing = len(zoo.entries) - len(entries)
    if missing:
        notes.append(f"{missing} zoo adapters have no cached delta and are skipped (run `llgbm cache-deltas`)")
    no_cond = [e.id for e in entries if not e.condition]
    if no_cond:
        notes.append(f"{len(no_cond)} adapters have no condition prompts and are skipped")
        entries = [e for e in entries if e.condition]
    if not entries:
        raise InputError(
            f"no (condition prompts, delta) pairs: the zoo {zoo.manifest_path} and the cache {cache.folder} share no "
            "adapter with condition prompts; run `llgbm zoo build` then `llgbm cache-deltas`"
        )
    return zoo, cache, entries, notes


def split_entries(entries, holdout_tasks: list[str], val_fraction: float, seed: int):
    """Held-out tasks when named (leave-task-out), else a seeded random share of the adapters."""
    import random

    if holdout_tasks:
        known = sorted({e.task for e in entries})
        bad = [t for t in holdout_tasks if t not in known]
        if bad:
            raise InputError(f"train.delta_only.holdout_tasks: {bad} not among the zoo's tasks {known}")
        train = [e for e in entries if e.task not in holdout_tasks]
        val = [e for e in entries if e.task in holdout_tasks]
        if not train:
            raise InputError("train.delta_only.holdout_tasks: every task is held out; keep at least one for training")
        return train, val
    order = list(range(len(entries)))
    random.Random(seed).shuffle(order)
    n_val = int(round(val_fraction * len(entries))) if len(entries) > 1 else 0
    n_val = min(n_val, len(entries) - 1)
    val_idx = set(order[:n_val])
    return [e for i, e in enumerate(entries) if i not in val_idx], [e for i, e in enumerate(entries) if i in val_idx]


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
    from ..io import FileLock, atomic_dir, check_output, atomic_write_text, provenance, write_provenance
    from ..models import load_encoder

    cfg = resolved.config
    do = cfg.train.delta_only
    out = Path(out_dir) if out_dir is not None else b2_folder(resolved)
    check_output(out, "delta predictor", force=force, roots=[resolved.workdir, resolved.root],
                 inputs=[resolved.resolve_path(cfg.zoo.path), resolved.resolve_path(cfg.delta.cache)])
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


def render_b2(r: B2Result, c) -> None:
    """Plain-text summary of a B2 run (used by the command)."""
    c.print(f"train delta-only b2: {r.train} adapters trained, {r.validation} held out, {r.epochs} epochs "
            f"in {r.seconds:.1f} s -> {r.path}")
    for k in ("loss", "val_mse", "val_cosine", "val_centered_cosine", "val_mean_delta_cosine"):
        if k in r.last:
            c.print(f"  {k}: {r.first.get(k, float('nan')):.4g} -> {r.last[k]:.4g}")
    for n in r.notes:
        c.print(f"note: {n}")


# --------------------------------------------------------------------------- B1


@dataclass
class B1Result:
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
    degeneracy_warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    is_main: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("is_main")
        return d


def _flat_delta_w(loras, scaling: float):
    """Per adapter, every module's ΔW = scaling·B·A flattened and concatenated: ``[n, P]``."""
    import torch

    return torch.cat([(scaling * torch.bmm(B.float(), A.float())).flatten(1) for A, B in loras.values()], dim=1)


def _mean_pairwise_cosine(x) -> float:
    import torch

    n = x.shape[0]
    if n < 2:
        return float("nan")
    xn = torch.nn.functional.normalize(x.float(), dim=-1)
    sims = xn @ xn.T
    return float((sims.sum() - sims.diagonal().sum()) / (n * (n - 1)))


def degeneracy_report(gen_loras, teacher_loras, scaling: float, teacher_scaling: Optional[float] = None, *,
                      norm_ratio: float = 0.1, max_cosine: float = 0.99) -> tuple[dict[str, float], list[str]]:
    """Check generated adapters (one per task, same order as the teachers) for the degenerate
    solutions of delta-only training: ΔW norm collapsing toward zero against the teachers' mean
    norm, and adapters of different tasks collapsing together (mean pairwise ΔW cosine near 1
    while the teachers' is not). Returns ``(metrics, warnings)``; no warning means healthy."""
    import torch

    with torch.no_grad():
        g = _flat_delta_w(gen_loras, scaling)
        t = _flat_delta_w(teacher_loras, scaling if teacher_scaling is None else teacher_scaling)
        g_norm, t_norm = float(g.norm(dim=1).mean()), float(t.norm(dim=1).mean())
        ratio = g_norm / t_norm if t_norm > 0 else float("inf")
        g_cos, t_cos = _mean_pairwise_cosine(g), _mean_pairwise_cosine(t)
    metrics = {"gen_lora_norm": g_norm, "teacher_lora_norm": t_norm, "lora_norm_ratio": ratio,
               "gen_pairwise_cosine": g_cos, "teacher_pairwise_cosine": t_cos}
    warnings = []
    if ratio < norm_ratio:
        warnings.append(f"norm collapse: generated LoRAs have ‖ΔW‖ {g_norm:.3g}, {ratio:.1%} of the teachers' mean "
                        f"{t_norm:.3g} (threshold {norm_ratio:.0%}); raise lora_variance_weight or lower lora_norm_weight")
    if g_cos == g_cos and g_cos > max_cosine and not (t_cos > max_cosine):
        warnings.append(f"diversity collapse: generated LoRAs of different tasks have mean pairwise ΔW cosine "
                        f"{g_cos:.4f} (teachers {t_cos:.4f}, threshold {max_cosine}); the generator ignores its condition")
    metrics["degenerate_norm"] = float(ratio < norm_ratio)
    metrics["degenerate_diversity"] = float(any(w.startswith("diversity") for w in warnings))
    return metrics, warnings


def probe_logits(model, probes, stacked=None, n: int = 1):
    """Next-token logits at each probe's last token ``[n·P, V]`` (row block i = adapter i)."""
    from contextlib import nullcontext

    import torch

    from ..deltas.compute import _backbone
    from ..lora.patch import LoraPatch

    device = next(model.parameters()).device
    ids = probes.input_ids.to(device).repeat(n, 1)
    am = probes.attention_mask.to(device).repeat(n, 1)
    with (LoraPatch(model, stacked) if stacked is not None else nullcontext()):
        h = _backbone(model)(input_ids=ids, attention_mask=am, use_cache=False).last_hidden_state
    last = am.sum(1) - 1  # right padding
    h = h[torch.arange(h.shape[0], device=device), last]
    return model.get_output_embeddings()(h)


def train_b1(
    resolved: ResolvedConfig,
    *,
    force: bool = False,
    resume: bool | str | Path = False,
    out_dir: Optional[str | Path] = None,
    progress=None,
) -> B1Result:
    """B1: train the configured generator on the delta alone (``DeltaOnlyLoss``), with the shared loop
    (accelerate, checkpoints, resume, NaN guard, metrics.jsonl). Every ``eval_interval`` steps and at
    the end, generated adapters (one per task) are checked for norm and diversity collapse."""
    import math

    import torch

    from ..deltas.compute import DeltaSpec, base_states, delta_for_stacked
    from ..deltas.probes import load_probes
    from ..generators import build_generator
    from ..generators.condition import ConditionBank
    from ..io import check_output, provenance, write_provenance
    from ..losses import DeltaOnlyLoss
    from ..lora.tokenizer import LoraTokenizer
    from ..models import load_base_model, load_encoder
    from ..training.world import generator_meta, load_teacher_adapters, run_folder, save_generator_meta
    from ..training import LoopConfig, find_latest_checkpoint, make_accelerator, run_training, step_rng
    from ..zoo import Zoo
    from .train_multitask import _teacher_deltas

    cfg = resolved.config
    do = cfg.train.delta_only
    out = Path(out_dir) if out_dir is not None else b1_folder(resolved)
    resume_ckpt: Optional[Path] = None
    if resume:
        resume_ckpt = Path(resume) if not isinstance(resume, bool) else find_latest_checkpoint(out)
        if resume_ckpt is None:
            raise InputError(f"{out}: no checkpoint to resume from; start a run without --resume")
        _check_resume_b1(resume_ckpt, resolved)
    elif out.exists() and out.is_dir() and any(out.iterdir()) and not force:
        raise InputError(f"{out}: a run is already there; pass --resume to continue it or --force to replace it")
    check_output(out, "training run", force=True, roots=[resolved.workdir, resolved.root],
                 inputs=[resolved.resolve_path(cfg.zoo.path), resolved.resolve_path(cfg.delta.cache)])

    zoo = Zoo.load(resolved.resolve_path(cfg.zoo.path))
    if not zoo.entries:
        raise InputError(f"{zoo.manifest_path}: the zoo is empty; run `llgbm zoo build` first")
    train_e, held_e = split_entries(zoo.entries, list(do.holdout_tasks), 0.0, cfg.project.seed)
    acc = make_accelerator("no", cfg.model.device)
    main = acc.is_main_process
    with run_folder(out, acc, force=force, resume=resume):
        torch.manual_seed(cfg.project.seed)

        model, tok = load_base_model(cfg.model.base, cfg.model.dtype, str(acc.device))
        layout = LoraTokenizer.from_model(model, cfg.lora.target_modules, cfg.lora.rank, cfg.lora.last_layers)
        entries = train_e + held_e
        adapters, scaling, teacher_ab = load_teacher_adapters(zoo, entries, layout, cfg.lora, acc.device)
        n_train = len(train_e)
        spec = DeltaSpec.from_config(cfg.delta)
        probes = load_probes(cfg.probes.source, tok, count=cfg.probes.count, chat_template=cfg.probes.chat_template,
                             max_length=cfg.probes.max_length, seed=cfg.project.seed).to(acc.device)
        base = base_states(model, probes, spec)
        t_deltas, delta_src = _teacher_deltas(resolved, model, probes, spec, zoo, entries, adapters,
                                              progress if main else None)
        t_deltas = t_deltas.to(acc.device)
        base_logits = None
        if do.logit_kl_weight > 0:
            with torch.no_grad():
                base_logits = probe_logits(model, probes)

        mt = cfg.train.multitask  # the condition encoding is shared with multitask
        encoder = load_encoder(cfg.model.encoder, str(acc.device), max_length=mt.max_text_length)
        bank = ConditionBank.build(encoder, [e.condition for e in entries], do.condition_prompts, mt.max_text_length)
        del encoder
        options = {"scaling": scaling, "n_prompts": do.condition_prompts, **do.generator_options}
        gen = build_generator(do.generator, layout, bank.dim, options).to(acc.device)
        if resume_ckpt is None and do.init_from_teachers:
            mean_tokens = torch.stack([layout.tokenize_adapter(a) for a in adapters[:n_train]]).mean(0).to(acc.device)
            gen.init_output(mean_tokens, {k: (A[:n_train].mean(0), B[:n_train].mean(0)) for k, (A, B) in teacher_ab.items()})

        loss_fn = DeltaOnlyLoss(do.delta_loss_type, do.delta_normalize, do.lora_norm_weight, do.lora_variance_weight,
                                do.logit_kl_weight)
        bs = min(do.batch_size, n_train)
        total_steps = do.epochs * math.ceil(n_train / bs)
        rank = acc.process_index

        def step_fn(step: int, net):
            rng = step_rng(cfg.project.seed, step, rank)
            idx = torch.as_tensor(rng.choice(n_train, size=bs, replace=False))
            g = net(bank.sample(idx.tolist(), rng, acc.device))
            stacked = g.stacked()
            pred = delta_for_stacked(model, probes, spec, stacked, base)
            tgt = t_deltas[idx]
            logits = probe_logits(model, probes, stacked, bs) if base_logits is not None else None
            terms = loss_fn(pred, tgt, g.loras, logits, base_logits)
            with torch.no_grad():
                terms.update(delta_cosine_sim=torch.nn.functional.cosine_similarity(pred, tgt, dim=-1).mean(),
                             delta_pred_norm=pred.norm(dim=-1).mean(), delta_target_norm=tgt.norm(dim=-1).mean())
            return terms

        # One adapter per task (first in zoo order) for the collapse checks: "different tasks".
        probe_ids = list({e.task: i for i, e in reversed(list(enumerate(entries)))}.values())
        warnings_seen: list[str] = []

        def eval_fn(step: int, net) -> dict[str, float]:
            res: dict[str, float] = {}
            with torch.no_grad():
                preds, gens = [], []
                for i in range(0, len(probe_ids), max(1, cfg.delta.adapters_per_batch)):
                    chunk = probe_ids[i : i + cfg.delta.adapters_per_batch]
                    g = net(bank.fixed(chunk, acc.device))
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
                res["gen_delta_pairwise_cosine"] = _mean_pairwise_cosine(pred)
                held = [j for j, i in enumerate(probe_ids) if i >= n_train]
                if held:
                    res["heldout_delta_cosine"] = float(cos[held].mean())
            warnings_seen[:] = warns
            return res

        condition = {"mode": "prompts", "n_prompts": do.condition_prompts, "max_text_length": mt.max_text_length}
        meta_common = generator_meta(cfg, model, scaling, condition, spec, probes, train_e, held_e, variant="b1")

        def save_meta(folder: Path, net, step: int) -> None:
            save_generator_meta(folder, meta_common, net, step)

        if main:
            write_provenance(out, provenance("train delta-only --variant b1", resolved.to_dict(), teacher_deltas=delta_src,
                                             train_adapters=[e.id for e in train_e], heldout_adapters=[e.id for e in held_e]))
        loop_cfg = LoopConfig(
            total_steps=total_steps, learning_rate=do.learning_rate, weight_decay=mt.weight_decay, warmup_steps=0,
            lr_schedule="constant", max_grad_norm=do.max_grad_norm, log_interval=do.log_interval,
            save_interval=do.save_interval, eval_interval=do.eval_interval, mixed_precision="no", seed=cfg.project.seed,
        )
        res = run_training(gen, step_fn, loop_cfg, out, accelerator=acc, save_meta=save_meta,
                           config_dict=resolved.to_dict(), command="train delta-only --variant b1",
                           resume_from=resume_ckpt, eval_fn=eval_fn, progress=progress if main else None)
        return B1Result(
            str(out), str(res.final_checkpoint), res.steps, res.resumed_from, do.generator, gen.num_parameters(),
            n_train, len(held_e), delta_src, res.first, res.last, res.eval, list(warnings_seen), res.seconds, main,
        )


# Keys that may change between a B1 checkpoint and the run that resumes it.
_RESUMABLE_B1 = {"epochs", "save_interval", "log_interval", "eval_interval", "collapse_norm_ratio", "collapse_cosine"}


def _check_resume_b1(ckpt: Path, resolved: ResolvedConfig) -> None:
    from ..io import read_provenance
    from ..training import is_checkpoint, load_trainer_state

    if not is_checkpoint(ckpt):
        raise InputError(f"{ckpt}: not a training checkpoint (no trainer_state.json)")
    load_trainer_state(ckpt)  # refused before anything is loaded or written if it is not plain data
    old = (read_provenance(ckpt) or {}).get("config")
    if not old:
        return
    new = resolved.to_dict()
    diffs = [s for s in ("model", "lora", "probes", "delta") if old.get(s) != new.get(s)]
    od, nd = old.get("train", {}).get("delta_only", {}), new["train"]["delta_only"]
    diffs += [f"train.delta_only.{k}" for k in nd if k not in _RESUMABLE_B1 and not k.startswith("predictor_")
              and od.get(k) != nd[k]]
    if diffs:
        raise InputError(f"{ckpt}: cannot resume: the config differs from the checkpoint's in {', '.join(diffs)}; "
                         "restore those values or start afresh with --force")
