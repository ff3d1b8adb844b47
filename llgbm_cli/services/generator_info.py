"""What a generator is, without training it: its preset, shapes and parameter count.

``llgbm train multitask|delta-only --dry-run`` describes the generator the config would build;
``llgbm generate --info`` the one in a checkpoint. The generator is built on PyTorch's ``meta``
device (shapes only, no memory), so even the ``paper`` presets are counted instantly.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import InputError


def _describe(gen, extra: dict[str, Any]) -> dict[str, Any]:
    opts = gen.options()
    out = {
        **extra,
        "generator": gen.name,
        "preset": opts.get("preset", "compact"),
        "parameters": gen.num_parameters(),
        "token_grid": list(gen.tokenizer.grid_shape),
        "modules": len(gen.tokenizer.modules),
        "condition_shape": [gen.n_prompts] + ([gen.cond_tokens] if gen.cond_tokens else []) + [gen.cond_dim],
    }
    if getattr(gen, "stage_shapes", None):
        out["stages"] = [list(s) for s in gen.stage_shapes]
    return out


def planned_generator(resolved, trainer: str = "multitask") -> dict[str, Any]:
    """The generator ``train <trainer>`` would build from this config (nothing is trained or written)."""
    import torch

    from ..generators import build_generator
    from ..lora.tokenizer import LoraTokenizer
    from ..models import load_base_model, load_encoder

    cfg = resolved.config
    mt = cfg.train.multitask
    if trainer == "multitask":
        name, preset, options = mt.generator, mt.generator_preset, mt.generator_options
        n_prompts = mt.condition_prompts if mt.condition == "prompts" else 1
    elif trainer == "delta-only":
        do = cfg.train.delta_only
        if do.variant != "b1":
            raise InputError("--dry-run: train.delta_only.variant is b2 (a delta predictor, not a LoRA generator); "
                             "use --variant b1")
        name, preset, options, n_prompts = do.generator, do.generator_preset, do.generator_options, do.condition_prompts
    else:
        raise ValueError(trainer)
    model, _ = load_base_model(cfg.model.base, cfg.model.dtype, "cpu")
    layout = LoraTokenizer.from_model(model, cfg.lora.target_modules, cfg.lora.rank, cfg.lora.last_layers)
    del model
    dim = load_encoder(cfg.model.encoder, "cpu").dim
    tokens = mt.condition_tokens if mt.condition_pooling == "none" else 0
    opts = {"scaling": 1.0, "n_prompts": n_prompts, "cond_tokens": tokens, "preset": preset, **options}
    with torch.device("meta"):
        gen = build_generator(name, layout, dim, opts)
    return _describe(gen, {"trainer": trainer, "condition_pooling": mt.condition_pooling})


def checkpoint_generator(folder: str | Path) -> dict[str, Any]:
    """The generator stored in a checkpoint folder, described from its metadata."""
    import json

    import torch

    from ..generators import build_generator
    from ..generators.base import META
    from ..lora.tokenizer import LoraTokenizer

    folder = Path(folder).expanduser()
    mp = folder / META
    if not mp.exists():
        raise InputError(f"{folder}: not a generator checkpoint (no {META}); train one with `llgbm train multitask`")
    try:
        meta = json.loads(mp.read_text())
        tok = LoraTokenizer.from_dict(meta["tokenizer"], source=str(folder))
    except (json.JSONDecodeError, KeyError) as e:
        raise InputError(f"{mp}: unreadable generator metadata ({e}); retrain the generator")
    except ValueError as e:
        raise InputError(str(e))
    with torch.device("meta"):
        gen = build_generator(meta["generator"], tok, meta["cond_dim"], meta.get("generator_options"))
    cond = meta.get("condition", {})
    return _describe(gen, {"checkpoint": str(folder), "base_model": meta.get("base_model"), "step": meta.get("step"),
                           "condition_mode": cond.get("mode", "prompts"),
                           "condition_pooling": cond.get("pooling", "mean")})


def render_info(r: dict[str, Any]) -> str:
    head = r.get("checkpoint") or f"train {r.get('trainer')} (dry run)"
    lines = [f"{head}: generator {r['generator']} ({r['preset']}), {r['parameters']:,} parameters",
             f"  token grid {' x '.join(map(str, r['token_grid']))} over {r['modules']} modules; condition "
             f"{' x '.join(map(str, r['condition_shape']))} (pooling {r.get('condition_pooling', 'mean')})"]
    if r.get("stages"):
        lines.append("  stages " + " -> ".join("(" + ", ".join(map(str, s)) + ")" for s in r["stages"]))
    return "\n".join(lines)
