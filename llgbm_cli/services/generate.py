"""`llgbm generate`: turn text into a PEFT adapter folder with a trained generator checkpoint.

This is the call users make after training, and what evaluation uses to produce the
generator's adapter for a task.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import InputError
from ..prompt_files import read_prompt_file

def read_prompts_file(path: str | Path) -> list[str]:
    """Prompts of ``--prompts-file`` (the one prompt-file rule, :mod:`llgbm_cli.prompt_files`)."""
    return read_prompt_file(path, label="--prompts-file")


def task_prompts(resolved, task: str, *, seed: Optional[int] = None) -> list[str]:
    """``[zoo] condition_prompts`` seeded prompts of a registered task's train split."""
    from ..tasks.registry import registry_for

    t = registry_for(resolved).get(task)
    seed = resolved.config.project.seed if seed is None else seed
    return [r.prompt for r in t.sample("train", resolved.config.zoo.condition_prompts, seed=f"generate-{seed}")]


def default_checkpoint(resolved) -> Path:
    from .. import workdir

    return workdir.final_checkpoint(resolved, "multitask")


def generate_modules(generator, meta: dict[str, Any], texts: Sequence[str], *, seed: int = 0, encoder=None):
    """Generated ``{module: LoraModule}`` for one condition (library entry point, e.g. for eval)."""
    import torch

    from ..generators.condition import encode_condition
    from ..models import load_encoder

    cond = meta.get("condition", {})
    if encoder is None:
        encoder = load_encoder(meta["encoder"], "cpu", max_length=cond.get("max_text_length", 512))
    n = int(cond.get("n_prompts", generator.n_prompts))
    c = encode_condition(encoder, texts, n, cond.get("max_text_length", 512), seed, pooling=cond.get("pooling", "mean"),
                         tokens=int(cond.get("tokens", 32))).to(next(generator.parameters()).device)
    with torch.no_grad():
        g = generator(c)
    return g.adapter_modules(0)


def generate_adapter(
    resolved,
    texts: Sequence[str],
    out: str | Path,
    *,
    description: Optional[str] = None,
    checkpoint: Optional[str | Path] = None,
    seed: Optional[int] = None,
    force: bool = False,
) -> dict[str, Any]:
    """Write a PEFT LoRA folder generated from ``texts`` (and/or ``description``)."""
    from .. import workdir
    from ..adapters import save_adapter
    from ..generators.base import load_generator
    from ..io import check_output, output_lock, provenance, sha256_file

    ckpt = Path(checkpoint).expanduser() if checkpoint else default_checkpoint(resolved)
    if not ckpt.exists():
        raise InputError(f"{ckpt}: no generator checkpoint; train one with `{workdir.made_by('multitask')}` or pass --checkpoint")
    out = Path(out).expanduser()
    check_output(out, "adapter", force=force, inputs=[ckpt], roots=[resolved.workdir, resolved.root])
    texts = [t for t in texts if t.strip()] + ([description] if description else [])
    if not texts:
        raise InputError("no condition text: give prompts as arguments, --prompts-file or --description")
    gen, meta = load_generator(ckpt)
    seed = resolved.config.project.seed if seed is None else seed
    modules = generate_modules(gen, meta, texts, seed=seed)
    lora = meta["lora"]
    with output_lock(out, f"the adapter {out}"):
        save_adapter(
            out, modules, alpha=lora["alpha"], base_model=meta["base_model"], force=force,
            provenance=provenance("generate", resolved.to_dict(), checkpoint=str(ckpt), generator=meta["generator"],
                                  generator_sha256=sha256_file(ckpt / "generator.safetensors"),
                                  condition_texts=len(texts), seed=seed),
        )
    return {"out": str(out), "checkpoint": str(ckpt), "generator": meta["generator"], "texts": len(texts),
            "rank": lora["rank"], "modules": len(modules), "base_model": meta["base_model"]}
