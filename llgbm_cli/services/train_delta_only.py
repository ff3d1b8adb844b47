"""`train delta-only`: variants that learn from deltas alone (the use cases; their engines are in
:mod:`llgbm_cli.training.methods`).

* B2 (:func:`train_b2`): the DeltaPredictor, frozen encoder -> MLP -> delta, trained on
  (condition prompts, cached delta) pairs; held-out loss and cosine are logged (``methods/b2.py``).
* B1 (:func:`train_b1`): a generator trained on the delta alone through ``DeltaOnlyLoss`` (``methods/b1.py``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

from .. import workdir
from ..config import ResolvedConfig
from ..errors import InputError
from ..holdout import split_entries
from ..progress import NULL_PROGRESS
from ..training.trainer import TrainerResult, TrainerSpec, prepare, run_objective, trainer_call


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
    from ..generators.predictor import save_predictor
    from ..io import FileLock, atomic_dir, atomic_write_text, check_output, provenance, write_provenance
    from ..models import load_encoder
    from ..training.methods.b2 import fit

    cfg = resolved.config
    do = cfg.train.delta_only
    out = Path(out_dir) if out_dir is not None else workdir.path(resolved, "b2")
    check_output(out, workdir.kind("b2"), force=force, roots=[resolved.workdir, resolved.root],
                 inputs=[workdir.path(resolved, "zoo"), workdir.path(resolved, "deltas")])
    zoo, cache, entries, notes = _pairs(resolved)
    train, val = split_entries(entries, list(do.holdout_tasks), cfg.train.b2.val_fraction, cfg.project.seed)
    if encoder is None:
        encoder = load_encoder(cfg.model.encoder, device="cpu")
    res, log, seconds = fit(resolved, entries, train, val, cache, encoder, progress)
    max_len = cfg.train.multitask.max_text_length
    meta = {
        "variant": "b2",
        "encoder": cfg.model.encoder,
        "base_model": cfg.model.base,
        "cache": {"folder": str(cache.folder), **{k: cache.header.get(k) for k in
                  ("base_model", "base_fingerprint", "probe_fingerprint", "spec", "dim")}},
        "condition_prompts": cfg.train.b2.condition_prompts,
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
        holdout_tasks=list(do.holdout_tasks), epochs=cfg.train.b2.epochs, seconds=round(seconds, 2),
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
        generator_preset=do.generator_preset, mixed_precision=do.mixed_precision,
        not_compared=lambda k: k.startswith("predictor_"),  # B2's keys in checkpoints made before [train.b2]
        steps_key="epochs",
    )


@trainer_call
def train_b1(
    resolved: ResolvedConfig,
    *,
    force: bool = False,
    resume: bool | str | Path = False,
    out_dir: Optional[str | Path] = None,
    progress=None,
) -> TrainerResult:
    """B1: train the configured generator on the delta alone (its objective:
    :mod:`llgbm_cli.training.methods.b1`) with the shared loop (accelerate, checkpoints, resume, NaN
    guard, metrics.jsonl)."""
    from ..training.methods.b1 import objective

    do = resolved.config.train.delta_only
    if do.relational_weight > 0 and do.batch_size < 2:
        raise InputError(f"train.delta_only.relational_weight = {do.relational_weight:g} compares the adapters of a "
                         f"batch with each other: train.delta_only.batch_size must be at least 2 (it is {do.batch_size})")
    run = prepare(resolved, b1_trainer_spec(resolved), force=force, resume=resume, out_dir=out_dir, progress=progress)
    return run_objective(run, objective(resolved, run), progress=progress)
