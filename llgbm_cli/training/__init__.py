"""Shared generator-training machinery (used by `train multitask` and `train delta-only`).

:func:`~llgbm_cli.training.loop.run_training` owns everything that is not the loss: accelerate
setup (device placement, mixed precision, DDP under ``accelerate launch``), AdamW, warm-up +
linear/cosine LR schedule, gradient clipping, ``metrics.jsonl`` + live display + optional
TensorBoard, checkpoint save/resume and the NaN/Inf guard. A trainer supplies a ``step_fn``
that returns its losses for one step. :mod:`~llgbm_cli.training.trainer` is the set-up and
finish both generator trainers share.

The loop's names are re-exported lazily, so importing :mod:`llgbm_cli.training.trainer` (and the
services that name its types) does not import torch.
"""

_LOOP = (
    "CHECKPOINTS", "LoopConfig", "NonFiniteLoss", "TrainResult", "find_latest_checkpoint", "is_checkpoint",
    "load_trainer_state", "lr_factor", "make_accelerator", "read_metrics", "run_training", "step_rng",
)
__all__ = list(_LOOP)


def __getattr__(name: str):
    if name in _LOOP:
        from . import loop

        return getattr(loop, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
