"""``hypernet``: a Text-to-LoRA-style hypernetwork.

The condition is mean-pooled to one task embedding; for every target module, the task embedding
plus a learned embedding of the module's layer and of its kind (``q_proj``, ``v_proj``, ...) go
through a shared MLP, and a per-kind linear head emits that module's flattened A and B. One
forward produces all modules of a batch of adapters at once.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import register
from .base import GeneratedLora, LoraGenerator


@register("hypernet")
class HyperNetGenerator(LoraGenerator):
    pooled = True

    def __init__(
        self,
        tokenizer,
        cond_dim: int,
        scaling: float = 1.0,
        n_prompts: int = 8,
        embed_dim: int = 64,
        hidden: int = 128,
        dropout: float = 0.0,
    ):
        """Sizes: ``embed_dim`` of task/layer/module embeddings, ``hidden`` of the shared MLP."""
        super().__init__(tokenizer, cond_dim, scaling, n_prompts)
        self._options = dict(scaling=scaling, n_prompts=n_prompts, embed_dim=embed_dim, hidden=hidden, dropout=dropout)
        mods = tokenizer.modules
        self.kinds = sorted({m.kind for m in mods})
        layers = sorted({m.layer for m in mods})
        r = tokenizer.rank
        shapes: dict[str, tuple[int, int]] = {}
        for m in mods:
            if shapes.setdefault(m.kind, (m.in_features, m.out_features)) != (m.in_features, m.out_features):
                raise ValueError(f"hypernet needs every {m.kind} module to share one shape; {m.name} differs")
        self.shapes = shapes
        self.task = nn.Sequential(nn.Linear(cond_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))
        self.layer_emb = nn.Embedding(len(layers), embed_dim)
        self.kind_emb = nn.Embedding(len(self.kinds), embed_dim)
        self.mlp = nn.Sequential(
            nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden), nn.GELU(), nn.Dropout(dropout),
            nn.Linear(hidden, hidden), nn.GELU(),
        )
        self.heads = nn.ModuleDict(
            {k: nn.Linear(hidden, r * i + o * r) for k, (i, o) in shapes.items()}
        )
        for h in self.heads.values():
            nn.init.normal_(h.weight, std=1e-4)
            nn.init.zeros_(h.bias)
        lid = {l: j for j, l in enumerate(layers)}
        self.register_buffer("_layer_idx", torch.tensor([lid[m.layer] for m in mods]), persistent=False)
        self.register_buffer("_kind_idx", torch.tensor([self.kinds.index(m.kind) for m in mods]), persistent=False)
        # Per-module offsets (the mean adapter), so modules of one kind need not share a mean.
        self.offset = nn.ParameterDict(
            {self._key(m.name): nn.Parameter(torch.zeros(r * m.in_features + m.out_features * r)) for m in mods}
        )

    @staticmethod
    def _key(name: str) -> str:
        return name.replace(".", "__")

    def init_output(self, mean_tokens, mean_loras) -> None:
        with torch.no_grad():
            for name, (A, B) in mean_loras.items():
                self.offset[self._key(name)].copy_(torch.cat([A.reshape(-1), B.reshape(-1)]).to(A.device))

    def forward(self, cond: torch.Tensor, mask: Optional[torch.Tensor] = None) -> GeneratedLora:
        task = self.task(self.pool(cond, mask))  # [n, e]
        h = task.unsqueeze(1) + self.layer_emb(self._layer_idx) + self.kind_emb(self._kind_idx)  # [n, M, e]
        h = self.mlp(h)
        r = self.tokenizer.rank
        loras = {}
        for j, m in enumerate(self.tokenizer.modules):
            flat = self.heads[m.kind](h[:, j]) + self.offset[self._key(m.name)]
            A = flat[:, : r * m.in_features].reshape(-1, r, m.in_features)
            B = flat[:, r * m.in_features :].reshape(-1, m.out_features, r)
            loras[m.name] = (A, B)
        return GeneratedLora(loras, None, self.scaling)
