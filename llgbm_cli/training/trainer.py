"""The generator-trainer skeleton shared by `train multitask` and `train delta-only --variant b1`.

:func:`prepare` is the set-up (torchtune's *setup*): the run folder's lock (one writer per run; what a
run killed outright left is put right first), resume check with the trainer's resumable keys,
holdout split, accelerator, run folder, base model and LoRA layout, teacher adapters, the delta
context (probes, spec, base states, teacher deltas), the condition bank, and the generator built
and initialized at the teachers' mean. :func:`finish` trains with the shared loop and closes the
run (provenance, generator metadata on every checkpoint, removal of a replaced run). A trainer
supplies only its loss, its ``step_fn`` and its ``eval_fn``; both return :class:`TrainerResult`.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

from .. import holdout, workdir
from ..errors import InputError

log = logging.getLogger(__name__)


@dataclass
class TrainerSpec:
    """What differs between the generator trainers' set-ups."""

    command: str  # "train multitask": provenance and checkpoints record it
    output: str  # work-folder output key: "multitask" or "b1"
    section: str  # config section under [train]: "multitask" or "delta_only"
    resumable: frozenset  # keys of that section that may change when a run is resumed
    generator: str
    generator_options: dict[str, Any]
    holdout_tasks: Sequence[str]
    condition_mode: str  # "prompts" or "description"
    n_prompts: int
    mixed_precision: str = "no"
    init_from_teachers: bool = True
    generator_preset: str = "compact"
    not_compared: Callable[[str], bool] = lambda key: False  # section keys another variant owns
    steps_key: str = "total_steps"  # the key of the section that decides where the run stops


@dataclass
class TrainerResult:
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
    processes: int = 1

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d.pop("is_main")
        return d


@dataclass
class Prepared:
    """Everything a trainer's step and eval functions use."""

    resolved: Any
    spec: TrainerSpec
    out: Path
    acc: Any
    resume_ckpt: Optional[Path]
    old: Optional[Path]
    train_e: list
    held_e: list
    model: Any
    layout: Any
    adapters: list
    scaling: float
    teacher_ab: dict
    teacher_tokens: Any
    deltas: Any  # DeltaContext
    base: Any  # base-model pooled states on the probes
    t_deltas: Any  # [N, D] teacher deltas, entries order (training entries first)
    delta_src: str
    bank: Any
    gen: Any
    tokenizer: Any = None  # the base model's tokenizer
    lock: Any = None  # the run folder's lock (main process), released by finish
    resume_step: Optional[int] = None  # the step of resume_ckpt

    def release(self) -> None:
        if self.lock is not None:
            self.lock.__exit__(None, None, None)
            self.lock = None

    @property
    def entries(self) -> list:
        return self.train_e + self.held_e

    @property
    def n_train(self) -> int:
        return len(self.train_e)

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @property
    def probes(self):
        return self.deltas.probes

    @property
    def delta_spec(self):
        return self.deltas.spec

    @property
    def condition(self) -> dict[str, Any]:
        mt = self.resolved.config.train.multitask  # the condition encoding is shared with multitask
        out = {"mode": self.spec.condition_mode, "n_prompts": self.spec.n_prompts, "max_text_length": mt.max_text_length,
               "pooling": mt.condition_pooling, "tokens": mt.condition_tokens}
        if self.spec.condition_mode == "description":
            out["descriptions"] = dict(mt.descriptions)
        return out


def _with_defaults(old: Optional[dict], section) -> Optional[dict]:
    """``old`` (a config section as a checkpoint recorded it) with the keys it lacks filled in from
    ``section``'s class defaults."""
    if not isinstance(old, dict):
        return old
    defaults = type(section)().model_dump(mode="json")
    return {**{k: v for k, v in defaults.items() if k not in old}, **old}


def check_resume(ckpt: Path, resolved, spec: TrainerSpec) -> None:
    """Refuse to resume from a checkpoint whose config differs in anything but the resumable keys."""
    from ..io import read_provenance
    from .loop import is_checkpoint, load_trainer_state

    if not is_checkpoint(ckpt):
        raise InputError(f"{ckpt}: not a training checkpoint (no trainer_state.json)")
    step = int(load_trainer_state(ckpt)["step"])  # refused before anything is loaded or written if not plain data
    old = (read_provenance(ckpt) or {}).get("config")
    if not old:
        return step
    new = resolved.to_dict()
    cfg = resolved.config
    # A key the checkpoint's config lacks (added to llgbm after that run started) counts as its
    # default: the run used the behaviour that default keeps.
    diffs = [s for s in ("model", "lora", "probes", "delta")
             if _with_defaults(old.get(s), getattr(cfg, s)) != new.get(s)]
    section = getattr(cfg.train, spec.section)
    od, nd = _with_defaults(old.get("train", {}).get(spec.section, {}), section), new["train"][spec.section]
    diffs += [f"train.{spec.section}.{k}" for k in nd
              if k not in spec.resumable and not spec.not_compared(k) and od.get(k) != nd[k]]
    if diffs:
        raise InputError(f"{ckpt}: cannot resume: the config differs from the checkpoint's in {', '.join(diffs)}; "
                         "restore those values or start afresh with --force")
    return step


def check_resume_steps(run: "Prepared", total_steps: int) -> None:
    """Refuse a resume that would write over what the run already has: a checkpoint past the run's
    last step (``--resume --steps 3`` after 6 steps would save the step-6 weights as step 3), or
    later checkpoints than the one resumed from."""
    from .loop import CHECKPOINTS

    if run.resume_ckpt is None or run.resume_step is None:
        return
    done, key = run.resume_step, f"train.{run.spec.section}.{run.spec.steps_key}"
    if done > total_steps:
        raise InputError(f"{run.resume_ckpt}: the checkpoint is at step {done}, past the {total_steps} steps this run "
                         f"trains ({key}); resuming would overwrite its checkpoints. Set {key} so the run reaches "
                         f"step {done} or more, or start afresh with --force")
    later = sorted(p.name for p in (run.out / CHECKPOINTS).glob("step-*")
                   if p.name[5:].isdigit() and int(p.name[5:]) > done)
    if later:
        raise InputError(f"{run.resume_ckpt}: {run.out / CHECKPOINTS} holds later checkpoints ({', '.join(later)}); "
                         "resuming from this one would overwrite them: resume from the latest with --resume, or "
                         "start afresh with --force")


# The runs prepared by the trainer calls in progress (see trainer_call).
_RUNS: list = []


def trainer_call(fn: Callable) -> Callable:
    """Decorate a trainer (``train_multitask``, ``train_b1``): a run it prepared whose :func:`finish`
    was not reached (a failure or Ctrl-C between the two) still has its replaced run put back and
    its folder's lock released."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .world import restore_run_folder

        depth = len(_RUNS)
        try:
            return fn(*args, **kwargs)
        except BaseException:
            for run in _RUNS[depth:]:
                restore_run_folder(run.out, run.old)
            raise
        finally:
            for run in _RUNS[depth:]:
                run.release()
            del _RUNS[depth:]

    return wrapper


def _launch_rank() -> int:
    """This process's rank under `accelerate launch` before the accelerator exists (0 otherwise)."""
    import os

    return int(os.environ.get("RANK", "0")) if int(os.environ.get("WORLD_SIZE", "1")) > 1 else 0


def _finished(folder: Path) -> bool:
    return (Path(folder) / workdir.FINAL).is_dir()


def prepare(resolved, spec: TrainerSpec, *, force: bool, resume, out_dir, progress) -> Prepared:
    """The set-up, in the order both trainers have always run it (so a seed gives the same run)."""
    from ..io import check_output, output_lock, recover_leftovers

    out = Path(out_dir) if out_dir is not None else workdir.path(resolved, spec.output)
    kind = workdir.kind(spec.output)
    # Another kind of output (a B2 predictor, an evaluation) is refused first, even with --force,
    # before anything (the lock file included) is written.
    check_output(out, kind, force=True, roots=[resolved.workdir, resolved.root],
                 inputs=[workdir.path(resolved, "zoo"), workdir.path(resolved, "deltas")])
    # One writer per run folder: a second run into it (even with --force) is refused at once. The
    # lock is the main process's; it is released by finish (or on any failure before).
    lock = None
    if _launch_rank() == 0:
        out.parent.mkdir(parents=True, exist_ok=True)
        lock = output_lock(out, f"the {kind} {out}").__enter__()
    try:
        # A run killed during an earlier --force start left the run it replaced aside: it comes back
        # (or goes, when the killed run had finished), before anything looks at the folder.
        if lock is not None:
            for line in recover_leftovers(out, finished=_finished):
                log.warning("%s: %s", out, line)
        return _prepare(resolved, spec, out, kind, lock, force=force, resume=resume, progress=progress)
    except BaseException:
        if lock is not None:
            lock.__exit__(None, None, None)
        raise


def _prepare(resolved, spec: TrainerSpec, out: Path, kind: str, lock, *, force: bool, resume, progress) -> Prepared:
    import torch

    from ..deltas.context import DeltaContext
    from ..generators import build_generator
    from ..generators.base import check_resumable_layout
    from ..generators.condition import ConditionBank, task_descriptions
    from ..tasks.registry import descriptions_for, registry_for
    from ..lora.tokenizer import LoraTokenizer
    from ..models import load_base_model, load_encoder
    from ..registries import check_generator
    from ..zoo_manifest import Zoo
    from .loop import find_latest_checkpoint, make_accelerator
    from .world import load_teacher_adapters, restore_run_folder, start_run_folder

    cfg = resolved.config
    # Every process checks before any writes, so all of them agree under `accelerate launch`.
    resume_ckpt: Optional[Path] = None
    resume_step: Optional[int] = None
    occupied = out.is_dir() and any(out.iterdir())
    latest = find_latest_checkpoint(out) if occupied else None
    # A first run that stopped before its first checkpoint holds nothing to continue from: it is
    # started again, with or without --resume, and without --force (what it wrote is replaced).
    restart = occupied and not force and not _finished(out) and latest is None and isinstance(resume, bool)
    if restart:
        log.warning("%s: an earlier run stopped before its first checkpoint; starting it again", out)
        force, resume = True, False
    if resume:
        resume_ckpt = Path(resume) if not isinstance(resume, bool) else latest
        if resume_ckpt is None:
            raise InputError(f"{out}: no checkpoint to resume from; start a run without --resume")
        resume_step = check_resume(resume_ckpt, resolved, spec)
    elif occupied and not force:
        if not _finished(out):
            raise InputError(f"{out}: an interrupted run is there (latest checkpoint {latest.name}); pass --resume "
                             "to continue it, or --force to start it again")
        raise InputError(f"{out}: a run is already there; pass --resume to continue it or --force to replace it")

    # A bad generator name or option names this trainer's section, before anything is loaded.
    check_generator(spec.section, spec.generator, spec.generator_options)
    zoo = Zoo.load(workdir.path(resolved, "zoo"))
    if not zoo.entries:
        raise InputError(f"{zoo.manifest_path}: the zoo is empty; {workdir.hint('zoo')}")
    train_e, held_e = holdout.split(zoo.entries, spec.holdout_tasks, key=f"train.{spec.section}.holdout_tasks")
    acc = make_accelerator(spec.mixed_precision, cfg.model.device)
    if spec.mixed_precision == "bf16":
        from ..models import require_bf16

        require_bf16(acc.device, f"train.{spec.section}.mixed_precision")
    old = start_run_folder(out, acc, force=force, resume=resume)
    try:  # a failure or Ctrl-C from here on puts an earlier run back (see finish)
        torch.manual_seed(cfg.project.seed)

        model, tok = load_base_model(cfg.model.base, cfg.model.dtype, str(acc.device))
        layout = LoraTokenizer.from_model(model, cfg.lora.target_modules, cfg.lora.rank, cfg.lora.last_layers)
        if resume_ckpt is not None:
            check_resumable_layout(resume_ckpt, layout)
        entries = train_e + held_e
        n_train = len(train_e)
        adapters, scaling, teacher_ab = load_teacher_adapters(zoo, entries, layout, cfg.lora, acc.device)
        teacher_tokens = torch.stack([layout.tokenize_adapter(a) for a in adapters]).to(acc.device)

        dctx = DeltaContext.build(resolved, model, tok, tasks=registry_for(resolved), device=acc.device)
        base = dctx.base_states()
        t_deltas, delta_src = dctx.teacher_deltas(entries, adapters, progress if acc.is_main_process else None)
        t_deltas = t_deltas.to(acc.device)

        mt = cfg.train.multitask  # the condition encoding is shared by the trainers
        max_len = mt.max_text_length
        encoder = load_encoder(cfg.model.encoder, str(acc.device), max_length=max_len)
        if spec.condition_mode == "prompts":
            texts = [e.condition for e in entries]
        else:
            texts = [task_descriptions(e.task, {**descriptions_for(resolved), **(mt.descriptions or {})})
                     for e in entries]
        bank = ConditionBank.build(encoder, texts, spec.n_prompts, max_len, pooling=mt.condition_pooling,
                                   tokens=mt.condition_tokens, noise=mt.condition_noise)
        del encoder

        options = {"scaling": scaling, "n_prompts": spec.n_prompts, "cond_tokens": bank.tokens or 0,
                   "preset": spec.generator_preset, **spec.generator_options}
        gen = build_generator(spec.generator, layout, bank.dim, options).to(acc.device)
        if resume_ckpt is None and spec.init_from_teachers:
            mean_ab = {k: (A[:n_train].mean(0), B[:n_train].mean(0)) for k, (A, B) in teacher_ab.items()}
            gen.init_output(teacher_tokens[:n_train].mean(0), mean_ab)
        run = Prepared(resolved, spec, out, acc, resume_ckpt, old, train_e, held_e, model, layout, adapters, scaling,
                       teacher_ab, teacher_tokens, dctx, base, t_deltas, delta_src, bank, gen, tok, lock=lock,
                       resume_step=resume_step)
        _RUNS.append(run)
        return run
    except BaseException:
        restore_run_folder(out, old)
        raise


@dataclass
class Objective:
    """What the shared loop runs for one trainer (its engine in :mod:`llgbm_cli.training.methods`): the
    step and eval functions, the loop settings and :func:`finish`'s extras."""

    step_fn: Callable[..., dict[str, Any]]
    eval_fn: Callable[..., dict[str, float]]
    loop: Any  # training.loop.LoopConfig
    aux: Optional[Any] = None  # a module trained beside the generator (the uncertainty weights)
    extra: dict[str, Any] = field(default_factory=dict)  # finish()'s meta_extra, save_extra, provenance_extra, warnings


def run_objective(run: Prepared, obj: Objective, *, progress) -> TrainerResult:
    """:func:`finish` with an :class:`Objective`."""
    return finish(run, obj.loop, obj.step_fn, obj.eval_fn, progress=progress, aux=obj.aux, **obj.extra)


def finish(run: Prepared, loop_cfg, step_fn, eval_fn, *, progress, meta_extra: Optional[dict] = None,
           warnings: Sequence[str] = (), aux=None, save_extra: Optional[Callable[[Path], None]] = None,
           provenance_extra: Optional[dict] = None) -> TrainerResult:
    """Train with the shared loop, then close the run: provenance, metadata on every checkpoint
    and, after a successful ``--force`` run, the replaced run's removal. ``aux``: the loss's own
    learned parameters (see :func:`~llgbm_cli.training.loop.run_training`); ``save_extra(folder)``
    writes further files into every checkpoint; ``provenance_extra`` adds entries to the run's
    provenance."""
    from ..io import provenance, write_provenance
    from .loop import run_training
    from .world import drop_old_run, generator_meta, restore_run_folder, save_generator_meta

    cfg = run.resolved.config
    meta_common = generator_meta(cfg, run.model, run.scaling, run.condition, run.delta_spec, run.probes,
                                 run.train_e, run.held_e, **(meta_extra or {}))

    def save_meta(folder: Path, net, step: int) -> None:
        save_generator_meta(folder, meta_common, net, step)
        if save_extra is not None:
            save_extra(folder)

    try:
        check_resume_steps(run, loop_cfg.total_steps)
        if run.main:
            write_provenance(run.out, provenance(run.spec.command, run.resolved.to_dict(),
                                                 teacher_deltas=run.delta_src,
                                                 train_adapters=[e.id for e in run.train_e],
                                                 heldout_adapters=[e.id for e in run.held_e],
                                                 **(provenance_extra or {})))
        res = run_training(run.gen, step_fn, loop_cfg, run.out, accelerator=run.acc, save_meta=save_meta,
                           config_dict=run.resolved.to_dict(), command=run.spec.command, resume_from=run.resume_ckpt,
                           eval_fn=eval_fn, progress=progress if run.main else None, aux=aux)
    except BaseException:  # interrupted or failed: the partial run goes, a replaced run comes back
        restore_run_folder(run.out, run.old)
        raise
    else:
        drop_old_run(run.old)
    finally:
        run.release()
    return TrainerResult(
        str(run.out), str(res.final_checkpoint), res.steps, res.resumed_from, run.spec.generator,
        run.gen.num_parameters(), run.n_train, len(run.held_e), run.delta_src, res.first, res.last, res.eval,
        list(warnings), res.seconds, run.main, res.processes,
    )
