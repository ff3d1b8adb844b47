"""2-D LoRA tokenizer (after Drag-and-Drop LLMs' 2-D tokens): LoRA weights <-> a grid of fixed-size tokens.

Each target module becomes one row of the grid. Within a row, every rank row of A (``r × in``)
and of Bᵀ (``r × out``) is cut into chunks of ``width`` values. Each chunk is standardized with
its own mean and standard deviation, and the token carries them next to the standardized values:
``[z_1 .. z_width, mean/std, log std]``. Carrying the scales in the token lets a generator predict
them, so detokenizing a generated grid gives weights at the right magnitude. The two scale cells
are stored as ``mean/std`` and ``log std`` rather than raw values because raw LoRA scales are
~1e-2 and would vanish next to the O(1) standardized values in a token MSE.

Rows shorter than the longest one, and the tail of a chunk past the end of a weight row, are
padding; :attr:`LoraTokenizer.mask` marks the real cells. Detokenize inverts tokenize exactly
(``x = std · (z + mean/std)``, the same ``std`` both ways), so a round trip is exact to float
tolerance, and both directions are plain differentiable tensor ops.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Optional

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from ..adapters import LoraAdapter

# A floor on the per-chunk std: keeps log std finite for all-zero chunks (a fresh LoRA's B).
EPS = 1e-8
# Token layouts: 1 ordered grid rows by module name as a string (layer 10 before layer 2);
# 2 orders them by (layer index, module kind). Saved in every layout's dict.
LAYOUT_VERSION = 2
_LAYER = re.compile(r"^(?P<head>.*?)\.(?:layers|h|blocks|layer)\.(?P<idx>\d+)\.(?P<tail>.+)$")


def module_sort_key(name: str) -> tuple:
    """Order of modules in every stacked layout: (layer index, module path inside the layer).

    ``model.layers.2.self_attn.q_proj`` sorts before ``model.layers.10.self_attn.q_proj``;
    modules outside the numbered layers keep name order, after them.
    """
    m = _LAYER.match(name)
    if m is None:
        return (1, name, 0, "")
    return (0, m.group("head"), int(m.group("idx")), m.group("tail"))


def sort_module_names(names: Iterable[str]) -> list[str]:
    return sorted(names, key=module_sort_key)
# Generated log std is clamped before exp: a wild generator output cannot overflow to Inf.
LOG_STD_RANGE = (-20.0, 5.0)


def choose_width(dims: Iterable[int], max_width: int = 64, min_width: int = 8) -> int:
    """Largest chunk width ≤ ``max_width`` dividing every weight-row length, so no chunk is
    partial (a 1-cell chunk has no spread to standardize). Falls back to ``max_width`` with padded
    tails when the dims share no divisor of at least ``min_width``."""
    g = 0
    for d in dims:
        g = math.gcd(g, int(d))
    best = 1
    for w in range(1, min(g, max_width) + 1):
        if g % w == 0:
            best = w
    return best if best >= min_width else max_width


@dataclass(frozen=True)
class ModuleShape:
    name: str  # as in the base causal LM, e.g. model.layers.0.self_attn.q_proj
    in_features: int
    out_features: int

    @property
    def layer(self) -> int:
        m = _LAYER.match(self.name)
        return int(m.group("idx")) if m else 0

    @property
    def kind(self) -> str:
        return self.name.rsplit(".", 1)[-1]


class LoraTokenizer:
    """Maps LoRA factors of a fixed set of modules and rank to a token grid ``[H, T, width + 2]``.

    ``H`` is the number of modules (one grid row each, in :func:`module_sort_key` order: layer by
    layer, so neighbouring rows are neighbouring modules of the network), ``T`` the longest row.
    Batched: :meth:`tokenize` takes ``{module: (A [n, r, in], B [n, out, r])}`` and returns
    ``[n, H, T, width + 2]``; :meth:`detokenize` is its inverse.
    """

    def __init__(self, modules: Iterable[ModuleShape], rank: int, width: Optional[int] = None, max_width: int = 64):
        self.modules: list[ModuleShape] = sorted(modules, key=lambda m: module_sort_key(m.name))
        if not self.modules:
            raise ValueError("a LoRA tokenizer needs at least one module")
        self.rank = int(rank)
        dims = [d for m in self.modules for d in (m.in_features, m.out_features)]
        self.width = int(width) if width else choose_width(dims, max_width)
        self._chunks = [(self._n_chunks(m.in_features), self._n_chunks(m.out_features)) for m in self.modules]
        self.row_lengths = [self.rank * (ca + cb) for ca, cb in self._chunks]
        self.tokens_per_row = max(self.row_lengths)
        self._mask = None

    # ------------------------------------------------------------------ description

    @property
    def token_dim(self) -> int:
        return self.width + 2

    @property
    def grid_shape(self) -> tuple[int, int, int]:
        return (len(self.modules), self.tokens_per_row, self.token_dim)

    @property
    def module_names(self) -> list[str]:
        return [m.name for m in self.modules]

    def _n_chunks(self, d: int) -> int:
        return -(-d // self.width)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout_version": LAYOUT_VERSION,
            "rank": self.rank,
            "width": self.width,
            "modules": [[m.name, m.in_features, m.out_features] for m in self.modules],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "token layout") -> "LoraTokenizer":
        """Rebuild a saved layout. A layout saved before version 2 is accepted only when its rows
        are already in layer order (e.g. adapted layers all with two-digit indices); otherwise
        its rows mean other modules than they would now, and it is refused (ValueError)."""
        version = int(d.get("layout_version", 1))
        if version > LAYOUT_VERSION:
            raise ValueError(f"{source}: token layout version {version} is newer than this llgbm reads "
                             f"({LAYOUT_VERSION}); upgrade llgbm")
        tok = cls([ModuleShape(n, int(i), int(o)) for n, i, o in d["modules"]], d["rank"], d["width"])
        if version < LAYOUT_VERSION:
            saved = [n for n, _, _ in d["modules"]]
            if saved != tok.module_names:
                first = next(i for i, (a, b) in enumerate(zip(saved, tok.module_names)) if a != b)
                raise ValueError(
                    f"{source}: written by an older llgbm whose token rows ran in name order "
                    f"(row {first} is {saved[first]}, now {tok.module_names[first]}); its weights would be "
                    "misread: retrain it (start afresh with --force)"
                )
        return tok

    @classmethod
    def from_model(
        cls,
        model,
        target_modules: Iterable[str],
        rank: int,
        last_layers: Optional[int] = None,
        width: Optional[int] = None,
        max_width: int = 64,
    ) -> "LoraTokenizer":
        """Token layout for LoRAs of ``rank`` on ``model``'s target Linears (the LoRA config's)."""
        from ..adapters import target_linears

        lin = target_linears(model, target_modules, last_layers)
        return cls([ModuleShape(n, m.in_features, m.out_features) for n, m in lin.items()], rank, width, max_width)

    def mask(self, device=None) -> "torch.Tensor":
        """Float mask ``[H, T, width + 2]``: 1 on real cells (values and the two scale cells)."""
        import torch

        if self._mask is None:
            m = torch.zeros(self.grid_shape)
            for h, (mod, (ca, cb)) in enumerate(zip(self.modules, self._chunks)):
                col = 0
                for d, c in ((mod.in_features, ca), (mod.out_features, cb)):
                    cells = torch.zeros(c * self.width)
                    cells[:d] = 1
                    cells = cells.view(c, self.width).repeat(self.rank, 1)
                    m[h, col : col + c * self.rank, : self.width] = cells
                    m[h, col : col + c * self.rank, self.width :] = 1
                    col += c * self.rank
            self._mask = m
        return self._mask.to(device) if device is not None else self._mask

    # ------------------------------------------------------------------ tokenize

    def _chunk(self, x: "torch.Tensor", d: int, c: int) -> tuple["torch.Tensor", "torch.Tensor"]:
        """[n, r, d] -> standardized tokens [n, r·c, width + 2]."""
        import torch
        import torch.nn.functional as F

        n = x.shape[0]
        pad = c * self.width - d
        xp = F.pad(x, (0, pad)).reshape(n, self.rank * c, self.width)
        cell = torch.ones(c * self.width, device=x.device, dtype=x.dtype)
        if pad:
            cell[d:] = 0
        cell = cell.view(c, self.width).repeat(self.rank, 1)  # [r·c, width]
        cnt = cell.sum(-1)  # [r·c]
        mean = (xp * cell).sum(-1) / cnt
        var = (((xp - mean.unsqueeze(-1)) * cell) ** 2).sum(-1) / cnt
        std = torch.sqrt(var + EPS**2)
        z = (xp - mean.unsqueeze(-1)) / std.unsqueeze(-1) * cell
        return torch.cat([z, (mean / std).unsqueeze(-1), torch.log(std).unsqueeze(-1)], -1)

    def tokenize(self, loras: Mapping[str, tuple["torch.Tensor", "torch.Tensor"]]) -> "torch.Tensor":
        """``{module: (A [n, r, in], B [n, out, r])}`` -> tokens ``[n, H, T, width + 2]`` (differentiable)."""
        import torch
        import torch.nn.functional as F

        missing = [m.name for m in self.modules if m.name not in loras]
        if missing:
            raise KeyError(f"LoRA lacks {len(missing)} module(s) of the token layout, e.g. {missing[0]}")
        rows = []
        for mod, (ca, cb) in zip(self.modules, self._chunks):
            A, B = loras[mod.name]
            if A.dim() == 2:
                A, B = A.unsqueeze(0), B.unsqueeze(0)
            if A.shape[1:] != (self.rank, mod.in_features) or B.shape[1:] != (mod.out_features, self.rank):
                raise ValueError(
                    f"{mod.name}: A {tuple(A.shape[1:])} / B {tuple(B.shape[1:])} do not match the token layout "
                    f"(rank {self.rank}, {mod.in_features}->{mod.out_features})"
                )
            row = torch.cat([self._chunk(A, mod.in_features, ca), self._chunk(B.transpose(1, 2), mod.out_features, cb)], 1)
            rows.append(F.pad(row, (0, 0, 0, self.tokens_per_row - row.shape[1])))
        return torch.stack(rows, 1)

    def tokenize_adapter(self, adapter: "LoraAdapter") -> "torch.Tensor":
        """One loaded adapter -> ``[H, T, width + 2]`` (float32)."""
        if adapter.r != self.rank:
            raise ValueError(f"adapter {adapter.id} has rank {adapter.r}; the token layout expects rank {self.rank}")
        loras = {k: (m.A.float(), m.B.float()) for k, m in adapter.modules.items()}
        return self.tokenize(loras)[0]

    # ------------------------------------------------------------------ detokenize

    def _unchunk(self, tok: "torch.Tensor", d: int, c: int) -> "torch.Tensor":
        """tokens [n, r·c, width + 2] -> [n, r, d]."""
        import torch

        z = tok[..., : self.width]
        std = torch.exp(tok[..., self.width + 1].clamp(*LOG_STD_RANGE)).unsqueeze(-1)
        x = std * (z + tok[..., self.width].unsqueeze(-1))
        return x.reshape(x.shape[0], self.rank, c * self.width)[..., :d]

    def detokenize(self, tokens: "torch.Tensor") -> dict[str, tuple["torch.Tensor", "torch.Tensor"]]:
        """tokens ``[n, H, T, width + 2]`` (or unbatched) -> ``{module: (A [n, r, in], B [n, out, r])}``."""
        if tokens.dim() == 3:
            tokens = tokens.unsqueeze(0)
        if tuple(tokens.shape[1:]) != self.grid_shape:
            raise ValueError(f"token grid {tuple(tokens.shape[1:])} does not match the layout {self.grid_shape}")
        out = {}
        for h, (mod, (ca, cb)) in enumerate(zip(self.modules, self._chunks)):
            row = tokens[:, h]
            A = self._unchunk(row[:, : self.rank * ca], mod.in_features, ca)
            Bt = self._unchunk(row[:, self.rank * ca : self.rank * (ca + cb)], mod.out_features, cb)
            out[mod.name] = (A, Bt.transpose(1, 2))
        return out
