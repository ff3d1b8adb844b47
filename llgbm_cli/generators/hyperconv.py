"""``hyperconv``: a hyper-convolutional decoder over the 2-D token grid.

Two block designs, chosen by ``preset``:

* ``compact`` (the default, the original llgbm blocks): each prompt embedding is projected to a
  small latent grid, the N prompts become channels, fixed-width (1×k)/(k×1) convolutions with
  GELU and residual connections mix them, learned linear maps along each axis expand the latent
  grid to the token grid ``[H, T]``, and a 1×1 convolution gives the token features.
* ``small`` / ``paper``: the Drag-and-Drop LLMs hyper-convolution. The state is a 3-axis tensor
  ``(C, h, w)``: at the input, C = prompts, h = tokens per prompt, w = encoder width; at the output,
  C = token-grid rows (modules), h = tokens per row, w = token features. Each stage maps
  ``(C, h, w) -> (C', h', w')``: after a LayerNorm over ``(h, w)``, two paths convolve the axes in
  turn, each time treating one axis as the channels of a 2-D convolution over the other two
  (width then height; height then width, tanh), averaged with a learned bias; then a 2-D
  convolution over ``(h', w')`` maps the C channels to C'. Stages of equal shape are residual.
  ``small`` has two stages sized for a 2-core CPU; ``paper`` the published stage shapes and 9×9
  kernels (DnD's decoder for Qwen2.5-0.5B), ending at this token grid.

Every preset adds a learned bias grid, initialized at the training set's mean tokens, and starts
its last layer near zero, so step 0 generates the mean adapter and the convolutions only learn
what the condition changes.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register
from .base import GeneratedLora, LoraGenerator

PRESETS = ("compact", "small", "paper")
# DnD's published intermediate stages (prompts, h, w) between its condition (128 prompts × 384
# tokens × 384 features) and its token grid, for Qwen2.5-0.5B; kernel 9.
PAPER_STAGES = [(128, 200, 300), (128, 100, 256), (256, 50, 200), (512, 50, 200), (1024, 25, 200),
                (1024, 10, 200), (2048, 10, 200)]
PAPER_KERNEL = 9
SMALL_STAGES = [(32, 16, 64)]
SMALL_KERNEL = 3


class _ChannelNorm(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.ln = nn.LayerNorm(c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # [n, C, h, w]
        return self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class _WHBlock(nn.Module):
    """Width conv then height conv, each pre-normed and residual."""

    def __init__(self, c: int, k: int):
        super().__init__()
        self.n1, self.n2 = _ChannelNorm(c), _ChannelNorm(c)
        self.w = nn.Conv2d(c, c, (1, k), padding=(0, k // 2))
        self.h = nn.Conv2d(c, c, (k, 1), padding=(k // 2, 0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.w(F.gelu(self.n1(x)))
        return x + self.h(F.gelu(self.n2(x)))


def _axis_conv(conv: nn.Conv2d, x: torch.Tensor, axis: int) -> torch.Tensor:
    """Convolve ``x [n, C, h, w]`` with ``axis`` (2: h, 3: w) as the channels, over the other two."""
    return conv(x.transpose(1, axis)).transpose(1, axis)


class _HyperConvStage(nn.Module):
    """One hyper-convolution stage ``(C, h, w) -> (C', h', w')`` (see the module docstring)."""

    def __init__(self, fin: Sequence[int], fout: Sequence[int], k: int):
        super().__init__()
        (c, h, w), (c2, h2, w2) = fin, fout
        self.norm = nn.LayerNorm([h, w])
        self.w1 = nn.Conv2d(w, w2, k, padding="same", bias=False)
        self.h1 = nn.Conv2d(h, h2, k, padding="same", bias=False)
        self.h2 = nn.Conv2d(h, h2, k, padding="same", bias=False)
        self.w2 = nn.Conv2d(w, w2, k, padding="same", bias=False)
        self.bias = nn.Parameter(torch.empty(h2, w2))
        nn.init.uniform_(self.bias, -1.0 / self.bias.numel(), 1.0 / self.bias.numel())
        self.channels = nn.Conv2d(c, c2, k, padding="same")
        self.residual = tuple(fin) == tuple(fout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.norm(x)
        a = _axis_conv(self.h1, _axis_conv(self.w1, y, 3), 2)
        b = torch.tanh(_axis_conv(self.w2, _axis_conv(self.h2, y, 2), 3))
        y = self.channels((a + b + self.bias) / 3)
        return x + y if self.residual else y


@register("hyperconv")
class HyperConvGenerator(LoraGenerator):
    pooled = False

    def __init__(
        self,
        tokenizer,
        cond_dim: int,
        scaling: float = 1.0,
        n_prompts: int = 8,
        cond_tokens: int = 0,
        preset: str = "compact",
        channels: int = 32,
        latent_height: int = 8,
        latent_width: int = 16,
        depth: int = 2,
        kernel: Optional[int] = None,
        output_blocks: int = 1,
        stages: Optional[list] = None,
    ):
        """``preset`` picks the blocks. ``compact`` sizes: ``channels`` conv width,
        ``latent_height × latent_width`` the latent grid, ``depth`` blocks at latent size,
        ``output_blocks`` at full grid size, ``kernel`` odd size (3). ``small``/``paper``: ``stages``
        replaces the preset's intermediate ``[C, h, w]`` shapes, ``kernel`` its kernel size."""
        super().__init__(tokenizer, cond_dim, scaling, n_prompts, cond_tokens)
        if preset not in PRESETS:
            raise ValueError(f"hyperconv preset {preset!r}: valid presets are {', '.join(PRESETS)}")
        self.preset = preset
        self._options = dict(scaling=scaling, n_prompts=n_prompts, cond_tokens=cond_tokens, preset=preset,
                             channels=channels, latent_height=latent_height, latent_width=latent_width,
                             depth=depth, kernel=kernel, output_blocks=output_blocks, stages=stages)
        H, T, D = tokenizer.grid_shape
        if preset == "compact":
            kernel = kernel or 3
            self.lh, self.lw = latent_height, latent_width
            self.proj = nn.Linear(cond_dim, latent_height * latent_width)
            self.mix = nn.Conv2d(n_prompts, channels, 1)
            self.latent = nn.ModuleList(_WHBlock(channels, kernel) for _ in range(depth))
            self.up_h = nn.Linear(latent_height, H)
            self.up_w = nn.Linear(latent_width, T)
            self.full = nn.ModuleList(_WHBlock(channels, kernel) for _ in range(output_blocks))
            self.norm = _ChannelNorm(channels)
            self.head = nn.Conv2d(channels, D, 1)
            last = self.head
        else:
            kernel = kernel or (PAPER_KERNEL if preset == "paper" else SMALL_KERNEL)
            mid = [tuple(int(v) for v in s) for s in (stages if stages is not None else
                                                       (PAPER_STAGES if preset == "paper" else SMALL_STAGES))]
            shapes = [(n_prompts, max(1, cond_tokens), cond_dim), *mid, (H, T, D)]
            self.stage_shapes = shapes
            self.stages = nn.ModuleList(_HyperConvStage(a, b, kernel) for a, b in zip(shapes[:-1], shapes[1:]))
            last = self.stages[-1].channels
        # The last layer starts small: at step 0 the output is the bias grid (the mean adapter).
        nn.init.normal_(last.weight, std=1e-3)
        nn.init.zeros_(last.bias)
        self.bias = nn.Parameter(torch.zeros(H, T, D))

    def init_output(self, mean_tokens, mean_loras) -> None:
        with torch.no_grad():
            self.bias.copy_(mean_tokens.to(self.bias))

    def _input(self, cond: torch.Tensor) -> torch.Tensor:
        if cond.dim() == 2:
            cond = cond.unsqueeze(1).expand(-1, self.n_prompts, -1)
        if cond.shape[1] != self.n_prompts:
            raise ValueError(f"hyperconv expects {self.n_prompts} condition prompts, got {cond.shape[1]}")
        return cond

    def forward(self, cond: torch.Tensor, mask: Optional[torch.Tensor] = None) -> GeneratedLora:
        from .condition import pool_tokens

        cond = self._input(cond)
        n = cond.shape[0]
        if self.preset == "compact":
            x = self.proj(pool_tokens(cond)).view(n, self.n_prompts, self.lh, self.lw)
            x = self.mix(x)
            for blk in self.latent:
                x = blk(x)
            x = self.up_w(self.up_h(x.transpose(2, 3)).transpose(2, 3))  # [n, C, H, T]
            for blk in self.full:
                x = blk(x)
            tokens = self.head(F.gelu(self.norm(x))).permute(0, 2, 3, 1) + self.bias
        else:
            x = cond if cond.dim() == 4 else cond.unsqueeze(2)  # [n, N, L, d]
            want = max(1, self.cond_tokens)
            if x.shape[2] != want:
                raise ValueError(f"hyperconv ({self.preset}) expects {want} condition token(s) per prompt, "
                                 f"got {x.shape[2]}; the condition pooling differs from the one it was built for")
            for stage in self.stages:
                x = stage(x)
            tokens = x + self.bias
        return GeneratedLora(self.tokenizer.detokenize(tokens), tokens, self.scaling)
