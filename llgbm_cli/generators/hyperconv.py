"""``hyperconv``: a Drag-and-Drop-LLMs-style hyper-convolutional decoder.

The N prompt embeddings of a condition are kept as a sequence and used as input channels. Each
is projected to a small latent grid; convolutions along the grid's width and height (with
LayerNorm over channels and residual connections) mix them; learned linear maps along each axis
expand the latent grid to the full token grid ``[H, T]``; a 1×1 convolution gives the token
features. A learned bias grid, initialized at the training set's mean tokens, carries the part of
the output shared by every adapter, so the convolutions only learn what the condition changes.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register
from .base import GeneratedLora, LoraGenerator


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


@register("hyperconv")
class HyperConvGenerator(LoraGenerator):
    pooled = False

    def __init__(
        self,
        tokenizer,
        cond_dim: int,
        scaling: float = 1.0,
        n_prompts: int = 8,
        channels: int = 32,
        latent_height: int = 8,
        latent_width: int = 16,
        depth: int = 2,
        kernel: int = 3,
        output_blocks: int = 1,
    ):
        """Sizes: ``channels`` conv width, ``latent_height × latent_width`` the latent grid,
        ``depth`` blocks at latent size, ``output_blocks`` at full grid size, ``kernel`` odd size."""
        super().__init__(tokenizer, cond_dim, scaling, n_prompts)
        self._options = dict(scaling=scaling, n_prompts=n_prompts, channels=channels, latent_height=latent_height,
                             latent_width=latent_width, depth=depth, kernel=kernel, output_blocks=output_blocks)
        H, T, D = tokenizer.grid_shape
        self.lh, self.lw = latent_height, latent_width
        self.proj = nn.Linear(cond_dim, latent_height * latent_width)
        self.mix = nn.Conv2d(n_prompts, channels, 1)
        self.latent = nn.ModuleList(_WHBlock(channels, kernel) for _ in range(depth))
        self.up_h = nn.Linear(latent_height, H)
        self.up_w = nn.Linear(latent_width, T)
        self.full = nn.ModuleList(_WHBlock(channels, kernel) for _ in range(output_blocks))
        self.norm = _ChannelNorm(channels)
        self.head = nn.Conv2d(channels, D, 1)
        # The head starts small: at step 0 the output is the bias grid (the mean adapter).
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        self.bias = nn.Parameter(torch.zeros(H, T, D))

    def init_output(self, mean_tokens, mean_loras) -> None:
        with torch.no_grad():
            self.bias.copy_(mean_tokens.to(self.bias))

    def forward(self, cond: torch.Tensor, mask: Optional[torch.Tensor] = None) -> GeneratedLora:
        if cond.dim() == 2:
            cond = cond.unsqueeze(1).expand(-1, self.n_prompts, -1)
        if cond.shape[1] != self.n_prompts:
            raise ValueError(f"hyperconv expects {self.n_prompts} condition prompts, got {cond.shape[1]}")
        n = cond.shape[0]
        x = self.proj(cond).view(n, self.n_prompts, self.lh, self.lw)
        x = self.mix(x)
        for blk in self.latent:
            x = blk(x)
        x = self.up_w(self.up_h(x.transpose(2, 3)).transpose(2, 3))  # [n, C, H, T]
        for blk in self.full:
            x = blk(x)
        tokens = self.head(F.gelu(self.norm(x))).permute(0, 2, 3, 1) + self.bias
        return GeneratedLora(self.tokenizer.detokenize(tokens), tokens, self.scaling)
