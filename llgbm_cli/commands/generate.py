"""`llgbm generate`: text in, PEFT adapter folder out, with a trained generator."""

from __future__ import annotations

from typing import List, Optional

import typer

from .common import console, emit, force_option, out_option, state


def generate_cmd(
    ctx: typer.Context,
    prompts: Optional[List[str]] = typer.Argument(None, help="Condition prompts (sample prompts of the task)."),
    out: Optional[str] = out_option("Adapter folder to write (required unless --info)."),
    prompts_file: Optional[str] = typer.Option(None, "--prompts-file", help="Prompts, one per line (.txt) or JSONL."),
    description: Optional[str] = typer.Option(None, "--description", help="A task description (description-conditioned generators)."),
    checkpoint: Optional[str] = typer.Option(None, "--checkpoint", help="Generator checkpoint (default: <workdir>/train/multitask/final)."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed for subsampling prompts (default: project.seed)."),
    force: bool = force_option("Overwrite --out if it exists."),
    info: bool = typer.Option(False, "--info", help="Describe the checkpoint's generator (preset, shapes, "
                              "parameter count) and exit."),
) -> None:
    """Generate a LoRA adapter from a task's prompts or description; loads with PEFT."""
    from ..services.generate import default_checkpoint, generate_adapter, read_prompts_file

    resolved = state(ctx).load_config()
    if info:
        from ..services.generator_info import checkpoint_generator, render_info

        ckpt = checkpoint or default_checkpoint(resolved)
        emit(ctx, checkpoint_generator(ckpt), lambda r: console().print(render_info(r)))
        return
    if out is None:
        from ..errors import InputError

        raise InputError("--out: missing; name the adapter folder to write (or pass --info)")
    texts = list(prompts or [])
    if prompts_file:
        texts += read_prompts_file(prompts_file)
    result = generate_adapter(resolved, texts, out, description=description, checkpoint=checkpoint,
                              seed=seed, force=force)
    emit(ctx, result, lambda r: console().print(
        f"{r['out']}: adapter from {r['texts']} text(s) (generator {r['generator']}, rank {r['rank']}, "
        f"{r['modules']} modules)"))


def register(app: typer.Typer) -> None:
    app.command("generate")(generate_cmd)
