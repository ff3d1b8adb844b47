"""The trained methods, one descriptor each: the only place that lists them.

A trained method is an evaluation method whose adapters come from a run llgbm trains (a LoRA
generator, a delta predictor). Its :class:`TrainedMethod` says everything the rest of the tool needs:
``eval`` registers its builder and derives its ``--<name>-checkpoint`` option, ``eval --folds``
trains it per fold (holding the fold out through ``train.<section>.holdout_tasks``) and reuses a
finished run of the same fingerprint, the acceptance checks of its run come from ``checks``, the
work folder gets its output (folder, the command that makes it, the output-folder kind) and config
validation checks its section's generator when it generates adapters.

Adding one is ``register(TrainedMethod(...))`` in one module. Functions are given as
``"module:function"`` strings, imported when first called (reading the table imports no torch), or
as callables.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Optional, Union

Ref = Union[str, Callable[..., Any]]

# A trained generator's final checkpoint, inside its run folder (the training loop writes it).
FINAL = "final"


def resolve(ref: Ref) -> Callable[..., Any]:
    """The function a ``"module:function"`` reference names (a callable is returned as is)."""
    if callable(ref):
        return ref
    module, _, name = ref.partition(":")
    return getattr(importlib.import_module(module), name)


@dataclass(frozen=True)
class TrainedMethod:
    name: str  # the eval method's name and its work-folder output key
    help: str  # one line in eval's list of methods
    section: str  # train.<section>: its settings, holdout_tasks among them
    what: str  # a few words for messages: "the multitask generator run"
    command: str  # the command that trains it into the work folder: "llgbm train multitask"
    kind: str  # its kind in the output-folder policy: "multitask run"
    train: Ref  # train(resolved, *, out_dir, force, progress[, resume when final]): one run into out_dir
    checks: Ref  # checks(label, rows, provenance, checkpoint) -> the acceptance checks of a run
    checkpoint_help: str  # help of eval's --<name>-checkpoint
    markers: tuple[str, ...] = ("checkpoints", "metrics.jsonl", FINAL)  # files that mark a folder of that kind
    build: Ref = "llgbm_cli.services.eval_methods:generator_adapters"  # eval's builder(ctx, method, tasks) -> Built
    generates: bool = True  # generates LoRA adapters from text: degenerate outputs checked, generator validated
    final: bool = True  # a checkpointed, resumable run whose checkpoint is <run>/final; else the folder itself
    after_train: Optional[Ref] = None  # after_train(resolved, *, force, progress): what follows a run (B2: its index)
    reads: tuple[str, ...] = ()  # top-level config sections its run also reads (in its run fingerprint)
    multitask_keys: bool = False  # reads every train.multitask key, not only the shared condition encoding
    fold_overrides: Optional[Callable[[str, Path], dict[str, Any]]] = None  # (fold, runs folder) -> config keys
    folder: Optional[str] = None  # its run folder in the work folder (default train/<name>)

    @property
    def flag(self) -> str:
        """eval's option that points the method at a checkpoint of its own choosing."""
        return f"--{self.name}-checkpoint"

    @property
    def location(self) -> str:
        return self.folder or f"train/{self.name}"

    @property
    def provenance_command(self) -> str:
        """The command as its provenance record names it (``train multitask``)."""
        return self.command.removeprefix("llgbm ")

    def checkpoint(self, run: Path) -> Path:
        """What eval reads from a run folder."""
        return run / FINAL if self.final else run


TRAINED: dict[str, TrainedMethod] = {}


def register(method: TrainedMethod) -> TrainedMethod:
    """Make ``method`` known to eval, eval --folds, the checks, the work folder and validation."""
    if method.name in TRAINED and TRAINED[method.name] != method:
        raise ValueError(f"trained method {method.name!r} is registered already")
    TRAINED[method.name] = method
    return method


def unregister(name: str) -> None:
    TRAINED.pop(name, None)


def trained(name: str) -> Optional[TrainedMethod]:
    return TRAINED.get(name)


def sections(*, generating: bool = False) -> list[str]:
    """The ``train.<section>`` names the trained methods read (those of generators only, when asked)."""
    return list(dict.fromkeys(m.section for m in TRAINED.values() if m.generates or not generating))


def _b2_fold(fold: str, runs: Path) -> dict[str, Any]:
    # the fold's retrieval index, beside its predictor, holds none of the held-out task's adapters
    return {"index.exclude_tasks": [fold], "index.path": str(runs / "b2-index")}


# Registration order is the order of eval's method list.
register(TrainedMethod(
    "multitask", "a multitask generator checkpoint turns the task's condition text into an adapter",
    section="multitask", what="the multitask generator run", command="llgbm train multitask", kind="multitask run",
    train="llgbm_cli.services.train_multitask:train_multitask", checks="llgbm_cli.evaluation.checks:multitask_run_checks",
    checkpoint_help="Generator checkpoint folder for `multitask`.", multitask_keys=True,
))
register(TrainedMethod(
    "b1", "the B1 generator (trained on the delta alone) turns the condition text into an adapter",
    section="delta_only", what="the B1 generator run", command="llgbm train delta-only --variant b1", kind="B1 run",
    train="llgbm_cli.services.train_delta_only:train_b1", checks="llgbm_cli.evaluation.checks:b1_run_checks",
    checkpoint_help="Generator checkpoint folder for `b1`.",
))
register(TrainedMethod(
    "b2", "the B2 delta predictor + index retrieval + merge",
    section="delta_only", what="the B2 delta predictor", command="llgbm train delta-only --variant b2",
    kind="delta predictor", markers=("predictor.json",),
    train="llgbm_cli.services.train_delta_only:train_b2",
    build="llgbm_cli.services.eval_methods:retrieval_adapters",
    checks="llgbm_cli.evaluation.checks:b2_run_checks",
    checkpoint_help="Delta predictor folder for `b2`.", generates=False, final=False,
    after_train="llgbm_cli.services.index:build_index", reads=("index",), fold_overrides=_b2_fold,
))
