"""Shared generator-training machinery (used by `train multitask` and `train delta-only`).

:func:`~llgbm_cli.training.loop.run_training` owns everything that is not the loss: accelerate
setup (device placement, mixed precision, DDP under ``accelerate launch``), AdamW, warm-up +
linear/cosine LR schedule, gradient clipping, ``metrics.jsonl`` + live display + optional
TensorBoard, checkpoint save/resume and the NaN/Inf guard. A trainer supplies a ``step_fn``
that returns its losses for one step.
"""

from .loop import (  # noqa: F401
    CHECKPOINTS,
    LoopConfig,
    NonFiniteLoss,
    TrainResult,
    find_latest_checkpoint,
    is_checkpoint,
    load_trainer_state,
    lr_factor,
    make_accelerator,
    read_metrics,
    run_training,
    step_rng,
)
