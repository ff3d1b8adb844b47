"""What every generator shares: its output type, the base class, and self-describing checkpoints."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
import torch.nn as nn

from ..errors import InputError
from ..lora.tokenizer import LoraTokenizer
from .condition import pool_tokens

WEIGHTS = "generator.safetensors"
META = "generator.json"


@dataclass
class GeneratedLora:
    """A batch of n generated adapters.

    ``loras`` maps module names (as in the base causal LM) to ``(A [n, r, in], B [n, out, r])``;
    ``tokens`` is the token grid ``[n, H, T, D]`` when the generator works in token space.
    """

    loras: dict[str, tuple[torch.Tensor, torch.Tensor]]
    tokens: Optional[torch.Tensor] = None
    scaling: float = 1.0

    @property
    def n(self) -> int:
        return int(next(iter(self.loras.values()))[0].shape[0])

    def select(self, idx: slice | list[int]) -> "GeneratedLora":
        loras = {k: (A[idx], B[idx]) for k, (A, B) in self.loras.items()}
        return GeneratedLora(loras, None if self.tokens is None else self.tokens[idx], self.scaling)

    def stacked(self) -> dict[str, Any]:
        """``{module: StackedLora}`` for :class:`~llgbm_cli.lora.patch.LoraPatch` (keeps autograd)."""
        from ..lora.patch import StackedLora

        out = {}
        for k, (A, B) in self.loras.items():
            s = torch.full((A.shape[0],), float(self.scaling), device=A.device, dtype=A.dtype)
            out[k] = StackedLora(A, B, s)
        return out

    def adapter_modules(self, i: int) -> dict[str, Any]:
        """Adapter ``i`` as ``{module: LoraModule}`` (detached, float32, CPU), ready for save_adapter."""
        from ..adapters import LoraModule

        return {
            k: LoraModule(A[i].detach().float().cpu(), B[i].detach().float().cpu(), float(self.scaling))
            for k, (A, B) in self.loras.items()
        }


class LoraGenerator(nn.Module):
    """Base class: ``forward(cond [n, N, d] or [n, N, L, d], mask [n, N] | None) -> GeneratedLora``.

    ``pooled`` generators see the mask-weighted mean of the N condition embeddings; the others
    see the sequence (N fixed at ``n_prompts``; see :func:`~llgbm_cli.generators.condition.fit_prompts`).
    """

    name = "base"
    pooled = False

    def __init__(self, tokenizer: LoraTokenizer, cond_dim: int, scaling: float = 1.0, n_prompts: int = 8,
                 cond_tokens: int = 0):
        super().__init__()
        self.tokenizer = tokenizer
        self.cond_dim = int(cond_dim)
        self.scaling = float(scaling)
        self.n_prompts = int(n_prompts)
        # Token states per condition text (condition pooling "none"); 0: one pooled vector per text.
        self.cond_tokens = int(cond_tokens)
        self._options: dict[str, Any] = {}

    def options(self) -> dict[str, Any]:
        """Constructor keyword arguments (besides tokenizer and cond_dim) to rebuild this generator."""
        return dict(self._options)

    @staticmethod
    def pool(cond: torch.Tensor, mask: Optional[torch.Tensor]) -> torch.Tensor:
        """``[n, N, (L,) d]`` -> ``[n, d]``: token states are pooled per text first (as ``mean`` pooling
        encodes), then the texts are averaged (mask-weighted)."""
        cond = pool_tokens(cond)
        if cond.dim() == 2:
            return cond
        if mask is None:
            return cond.mean(1)
        m = mask.to(cond.dtype).unsqueeze(-1)
        return (cond * m).sum(1) / m.sum(1).clamp_min(1.0)

    def init_output(self, mean_tokens: torch.Tensor, mean_loras: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Start the output at the training set's mean adapter (data-dependent init).

        LoRA scales (log std ≈ -4 for typical factors) are far from 0; starting there saves the
        thousands of steps an optimizer would spend drifting biases to them.
        """

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


def save_generator(folder: str | Path, generator: LoraGenerator, meta: dict[str, Any]) -> None:
    """Write weights + ``generator.json`` into an existing (temporary) folder."""
    from ..io import save_safetensors as save_file

    from ..io import atomic_write_json

    folder = Path(folder)
    state = {k: v.detach().contiguous().cpu() for k, v in generator.state_dict().items()}
    save_file(state, str(folder / WEIGHTS))
    full = dict(meta)
    full.update(
        generator=generator.name,
        generator_options=generator.options(),
        cond_dim=generator.cond_dim,
        tokenizer=generator.tokenizer.to_dict(),
        parameters=generator.num_parameters(),
    )
    atomic_write_json(folder / META, full)


def check_resumable_layout(folder: str | Path, layout: LoraTokenizer) -> None:
    """Refuse to resume training from a checkpoint whose token rows are laid out differently from
    ``layout`` (e.g. one written before layer-ordered layouts), instead of misreading its weights."""
    mp = Path(folder) / META
    if not mp.exists():
        return
    try:
        saved = json.loads(mp.read_text()).get("tokenizer")
    except json.JSONDecodeError as e:
        raise InputError(f"{mp}: corrupt JSON ({e}); start afresh with --force")
    if not saved:
        return
    try:
        old = LoraTokenizer.from_dict(saved, source=str(folder))
    except ValueError as e:
        raise InputError(str(e))
    if old.module_names != layout.module_names or old.grid_shape != layout.grid_shape:
        raise InputError(f"{folder}: cannot resume: its token layout differs from the [lora] config's; "
                         "start afresh with --force")


def load_generator(folder: str | Path, device: str | torch.device = "cpu") -> tuple[LoraGenerator, dict[str, Any]]:
    """Rebuild a trained generator from its checkpoint folder in one call: ``(generator, meta)``.

    ``meta`` holds everything needed to use it: base model name, LoRA config (rank, alpha,
    targets), token layout, condition settings and encoder name.
    """
    from safetensors.torch import load_file

    from . import build_generator

    folder = Path(folder).expanduser()
    mp, wp = folder / META, folder / WEIGHTS
    if not mp.exists() or not wp.exists():
        have = sorted(p.name for p in folder.iterdir())[:8] if folder.is_dir() else []
        raise InputError(
            f"{folder}: not a generator checkpoint (needs {META} and {WEIGHTS}; found "
            f"{', '.join(have) or 'nothing'}); train one with `llgbm train multitask`"
        )
    try:
        meta = json.loads(mp.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{mp}: corrupt JSON ({e})")
    try:
        tok = LoraTokenizer.from_dict(meta["tokenizer"], source=str(folder))
    except ValueError as e:
        raise InputError(str(e))
    except (KeyError, TypeError, AttributeError) as e:
        raise InputError(f"{mp}: not a usable generator description ({type(e).__name__}: {e}); "
                         "retrain with `llgbm train multitask --force`")
    try:
        gen = build_generator(meta["generator"], tok, meta["cond_dim"], meta.get("generator_options"))
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise InputError(f"{mp}: not a usable generator description ({type(e).__name__}: {e}); "
                         "retrain with `llgbm train multitask --force`")
    try:
        gen.load_state_dict(load_file(str(wp)))
    except Exception as e:  # safetensors header errors, missing or misshapen tensors
        raise InputError(f"{wp}: corrupt or mismatched generator weights ({str(e).splitlines()[0][:160]}); "
                         "retrain with `llgbm train multitask --force`")
    gen.to(device).eval()
    return gen, meta
