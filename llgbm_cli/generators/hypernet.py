"""``hypernet``: a hypernetwork that emits each module's A and B from the task and the module's place.

Two block designs, chosen by ``preset``:

* ``compact`` (the default, the original llgbm blocks): the mean-pooled condition, a learned layer
  embedding and a learned module-kind embedding are *summed* and go through a 2-layer GELU MLP.
* ``small`` / ``paper``: the Text-to-LoRA design. A task encoder (linear + LayerNorm) maps the
  pooled condition to ``latent/2`` numbers; layer-depth and module-kind embeddings (each
  ``latent/4``, LayerNorm) are *concatenated* with it; a mixer MLP, two residual MLP blocks
  (pre-LayerNorm, 4× hidden, SiLU, dropout) and an output MLP to ``head_width`` follow. ``paper``
  uses T2L's published widths (latent 512, head input 2048); ``small`` 128 and 128.

In every preset a per-kind linear head emits the flattened A and B of a module, plus a
per-module offset initialized at the training set's mean adapter. One forward produces all
modules of a batch of adapters at once.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn

from . import register
from .base import GeneratedLora, LoraGenerator

PRESETS = ("compact", "small", "paper")
# (latent, head input width): T2L's published hypernetwork (--hypernet_latent_size 512
# --head_in_size 2048) and a CPU-sized one.
SIZES = {"small": (128, 128), "paper": (512, 2048)}


class _ResidualMLP(nn.Module):
    """x + MLP(x): LayerNorm, d -> 4d, SiLU, dropout, 4d -> d, SiLU, dropout."""

    def __init__(self, d: int, dropout: float):
        super().__init__()
        self.mlp = nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.SiLU(), nn.Dropout(dropout),
                                 nn.Linear(4 * d, d), nn.SiLU(), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.mlp(x)


@register("hypernet")
class HyperNetGenerator(LoraGenerator):
    pooled = True

    def __init__(
        self,
        tokenizer,
        cond_dim: int,
        scaling: float = 1.0,
        n_prompts: int = 8,
        cond_tokens: int = 0,
        preset: str = "compact",
        embed_dim: int = 64,
        hidden: int = 128,
        dropout: Optional[float] = None,
        latent: Optional[int] = None,
        head_width: Optional[int] = None,
    ):
        """``preset`` picks the blocks. ``compact`` sizes: ``embed_dim`` of the task/layer/module
        embeddings, ``hidden`` of the shared MLP, ``dropout`` (0). ``small``/``paper``: ``latent``
        and ``head_width`` replace the preset's widths, ``dropout`` its 0.05."""
        super().__init__(tokenizer, cond_dim, scaling, n_prompts, cond_tokens)
        if preset not in PRESETS:
            raise ValueError(f"hypernet preset {preset!r}: valid presets are {', '.join(PRESETS)}")
        self.preset = preset
        self._options = dict(scaling=scaling, n_prompts=n_prompts, cond_tokens=cond_tokens, preset=preset,
                             embed_dim=embed_dim, hidden=hidden, dropout=dropout, latent=latent,
                             head_width=head_width)
        mods = tokenizer.modules
        self.kinds = sorted({m.kind for m in mods})
        layers = sorted({m.layer for m in mods})
        r = tokenizer.rank
        shapes: dict[str, tuple[int, int]] = {}
        for m in mods:
            if shapes.setdefault(m.kind, (m.in_features, m.out_features)) != (m.in_features, m.out_features):
                raise ValueError(f"hypernet needs every {m.kind} module to share one shape; {m.name} differs")
        self.shapes = shapes
        if preset == "compact":
            dropout = 0.0 if dropout is None else dropout
            self.task = nn.Sequential(nn.Linear(cond_dim, embed_dim), nn.GELU(), nn.Linear(embed_dim, embed_dim))
            self.layer_emb = nn.Embedding(len(layers), embed_dim)
            self.kind_emb = nn.Embedding(len(self.kinds), embed_dim)
            self.mlp = nn.Sequential(
                nn.LayerNorm(embed_dim), nn.Linear(embed_dim, hidden), nn.GELU(), nn.Dropout(dropout),
                nn.Linear(hidden, hidden), nn.GELU(),
            )
            head_in = hidden
        else:
            dropout = 0.05 if dropout is None else dropout
            lat, head_in = SIZES[preset]
            lat, head_in = int(latent or lat), int(head_width or head_in)
            if lat % 4:
                raise ValueError(f"hypernet latent {lat}: must be a multiple of 4")
            self.task = nn.Sequential(nn.Linear(cond_dim, lat // 2), nn.LayerNorm(lat // 2))
            self.layer_emb = nn.Sequential(nn.Embedding(len(layers), lat // 4), nn.LayerNorm(lat // 4))
            self.kind_emb = nn.Sequential(nn.Embedding(len(self.kinds), lat // 4), nn.LayerNorm(lat // 4))
            self.mlp = nn.Sequential(
                nn.Dropout(dropout), nn.Linear(lat, 4 * lat), nn.SiLU(), nn.Dropout(dropout),  # mixer
                nn.Linear(4 * lat, lat), nn.SiLU(), nn.Dropout(dropout),
                _ResidualMLP(lat, dropout), _ResidualMLP(lat, dropout),
                nn.LayerNorm(lat), nn.Linear(lat, 4 * lat), nn.SiLU(), nn.Dropout(dropout),  # output MLP
                nn.Linear(4 * lat, head_in), nn.SiLU(),
            )
        self.heads = nn.ModuleDict(
            {k: nn.Linear(head_in, r * i + o * r) for k, (i, o) in shapes.items()}
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
        layer, kind = self.layer_emb(self._layer_idx), self.kind_emb(self._kind_idx)  # [M, e']
        if self.preset == "compact":
            h = task.unsqueeze(1) + layer + kind  # [n, M, e]
        else:
            n, M = task.shape[0], layer.shape[0]
            h = torch.cat([task.unsqueeze(1).expand(n, M, -1), layer.expand(n, M, -1), kind.expand(n, M, -1)], -1)
        h = self.mlp(h)
        r = self.tokenizer.rank
        loras = {}
        for j, m in enumerate(self.tokenizer.modules):
            flat = self.heads[m.kind](h[:, j]) + self.offset[self._key(m.name)]
            A = flat[:, : r * m.in_features].reshape(-1, r, m.in_features)
            B = flat[:, r * m.in_features :].reshape(-1, m.out_features, r)
            loras[m.name] = (A, B)
        return GeneratedLora(loras, None, self.scaling)
