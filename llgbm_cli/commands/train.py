"""`llgbm train ...`: generator training. One Typer group; each trainer is one subcommand here."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, force_option, out_option, overrides_from, progress, set_option, state, with_flags

train_app = typer.Typer(help="Train LoRA generators (multitask; delta-only variants).", no_args_is_help=True)

# Options every trainer takes, declared once.
ForceOpt = force_option("Replace an earlier run in the output folder.")
ResumeOpt = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the output folder.")
SetOpt = set_option()
DryRunOpt = typer.Option(False, "--dry-run", help="Describe the generator this config builds (preset, shapes, "
                         "parameter count) and exit without training.")


def _dry_run(ctx: typer.Context, resolved, trainer: str) -> None:
    from ..services.generator_info import planned_generator, render_info

    emit(ctx, planned_generator(resolved, trainer), lambda r: console().print(render_info(r)))


def _render_training(title: str):
    def render(r) -> None:
        c = console()
        c.print(f"{title}: {r['steps']} steps in {r['seconds']:.0f} s -> {r['final_checkpoint']}")
        first, last = r.get("first") or {}, r.get("last") or {}
        for k in ("loss_total", "loss_weights", "loss_delta", "delta_cosine_sim"):
            if k in last:
                c.print(f"  {k}: {first.get(k, float('nan')):.4g} -> {last[k]:.4g}")
        for k, v in (r.get("eval") or {}).items():
            c.print(f"  {k}: {v:.4f}")

    return render


def _render_b2(r) -> None:
    """Plain-text summary of a B2 run."""
    c = console()
    c.print(f"train delta-only b2: {r.train} adapters trained, {r.validation} held out, {r.epochs} epochs "
            f"in {r.seconds:.1f} s -> {r.path}")
    for k in ("loss", "val_mse", "val_cosine", "val_centered_cosine", "val_mean_delta_cosine"):
        if k in r.last:
            c.print(f"  {k}: {r.first.get(k, float('nan')):.4g} -> {r.last[k]:.4g}")
    for n in r.notes:
        c.print(f"note: {n}")


@train_app.command("multitask")
def multitask_cmd(
    ctx: typer.Context,
    steps: Optional[int] = typer.Option(None, "--steps", help="train.multitask.total_steps"),
    generator: Optional[str] = typer.Option(None, "--generator", help="train.multitask.generator (hyperconv, hypernet)."),
    lambda_delta: Optional[float] = typer.Option(None, "--lambda-delta", help="train.multitask.lambda_delta"),
    lr: Optional[float] = typer.Option(None, "--lr", help="train.multitask.learning_rate"),
    out: Optional[str] = out_option("Output folder (default: <workdir>/train/multitask)."),
    force: bool = ForceOpt,
    resume: bool = ResumeOpt,
    set_: Optional[List[str]] = SetOpt,
    dry_run: bool = DryRunOpt,
) -> None:
    """Train a generator on teacher weights plus the delta loss (behavioral matching)."""
    from ..services.train_multitask import train_multitask

    ov, flags = with_flags(overrides_from(set_), {
        "train.multitask.total_steps": ("--steps", steps), "train.multitask.generator": ("--generator", generator),
        "train.multitask.lambda_delta": ("--lambda-delta", lambda_delta),
        "train.multitask.learning_rate": ("--lr", lr)})
    resolved = state(ctx).load_config(ov, flags=flags)
    if dry_run:
        return _dry_run(ctx, resolved, "multitask")
    with progress(ctx) as rep:
        result = train_multitask(resolved, force=force, resume=resume, out_dir=out, progress=rep)
    if result.is_main:
        emit(ctx, result.to_dict(), _render_training("train multitask"))


@train_app.command("delta-only")
def delta_only_cmd(
    ctx: typer.Context,
    variant: Optional[str] = typer.Option(None, "--variant", help="b1 (generator on the delta alone) or b2 "
                                          "(delta predictor); default: train.delta_only.variant."),
    generator: Optional[str] = typer.Option(None, "--generator", help="train.delta_only.generator (B1)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="train.delta_only.epochs (B1) or train.b2.epochs (B2)."),
    out: Optional[str] = out_option("Output folder (default: <workdir>/train/b1 or b2)."),
    force: bool = ForceOpt,
    resume: bool = ResumeOpt,
    set_: Optional[List[str]] = SetOpt,
    dry_run: bool = DryRunOpt,
) -> None:
    """Train from deltas alone: B1 a LoRA generator (DeltaOnlyLoss), B2 a text -> delta predictor."""
    from ..services.train_delta_only import train_b2

    ov, flags = with_flags(overrides_from(set_), {"train.delta_only.variant": ("--variant", variant),
                                                  "train.delta_only.generator": ("--generator", generator)})
    resolved = state(ctx).load_config(ov, flags=flags)
    if dry_run:
        return _dry_run(ctx, resolved, "delta-only")
    if resolved.config.train.delta_only.variant == "b2":
        if resume:
            from ..errors import InputError

            raise InputError("--resume: B2 trains in one short run without checkpoints; retrain with --force")
        if epochs is not None:
            key = "train.b2.epochs"
            resolved = state(ctx).load_config({**ov, key: epochs}, flags={**flags, key: "--epochs"})
        with progress(ctx) as rep:
            result = train_b2(resolved, force=force, out_dir=out, progress=rep)
        emit(ctx, result, _render_b2)
        return
    if epochs is not None:
        key = "train.delta_only.epochs"
        resolved = state(ctx).load_config({**ov, key: epochs}, flags={**flags, key: "--epochs"})
    from ..services.train_delta_only import train_b1

    with progress(ctx) as rep:
        result = train_b1(resolved, force=force, resume=resume, out_dir=out, progress=rep)
    if result.is_main:
        emit(ctx, result.to_dict(), _render_training("train delta-only b1"))
        for w in result.to_dict().get("degeneracy_warnings") or []:
            console(stderr=True).print(f"warning: {w}")


def register(app: typer.Typer) -> None:
    app.add_typer(train_app, name="train")
