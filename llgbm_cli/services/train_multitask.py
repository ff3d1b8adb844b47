"""`llgbm train multitask`: train a LoRA generator on weights and behaviour at once.

The use case: the run's output folder, model, deltas and zoo (:func:`llgbm_cli.training.trainer.prepare`),
the objective (:mod:`llgbm_cli.training.methods.multitask`: the losses, the levers, held-out checks) and
the shared loop with its checkpoints and metrics (:func:`llgbm_cli.training.trainer.finish`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from ..training.trainer import TrainerResult, TrainerSpec, prepare, run_objective, trainer_call

# Keys that may differ between a checkpoint's config and a resumed run's.
RESUMABLE = {"total_steps", "save_interval", "log_interval", "eval_interval"}


def trainer_spec(resolved) -> TrainerSpec:
    mt = resolved.config.train.multitask
    return TrainerSpec(
        command="train multitask", output="multitask", section="multitask", resumable=frozenset(RESUMABLE),
        generator=mt.generator, generator_options=dict(mt.generator_options), holdout_tasks=list(mt.holdout_tasks),
        condition_mode=mt.condition, n_prompts=mt.condition_prompts if mt.condition == "prompts" else 1,
        mixed_precision=mt.mixed_precision, generator_preset=mt.generator_preset,
    )


@trainer_call
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
    from ..training.methods.multitask import objective

    run = prepare(resolved, trainer_spec(resolved), force=force, resume=resume, out_dir=out_dir, progress=progress)
    return run_objective(run, objective(resolved, run), progress=progress)
