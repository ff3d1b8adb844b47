"""The delta cache: ``deltas.safetensors`` (N × D float32) + ``manifest.json``.

``manifest.json`` holds a header (base-model fingerprint, probe fingerprint and description,
delta spec, dimension, llgbm version) and one row per matrix row: adapter id, path and sha256
of its weights file. Reading needs neither the base model nor torch beyond safetensors.

Writes are atomic as a pair: both files are written into a temporary folder beside the cache
which then replaces it by rename, so a reader sees the old cache or the new one, never a mix.
The writer lock lives beside the folder (``.<name>.lock``) because the folder itself is
replaced on every commit.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

from ..errors import InputError
from ..workdir import made_by
from ..io import FileLock, atomic_dir, atomic_write_json, write_provenance

if TYPE_CHECKING:  # pragma: no cover
    import torch

DATA_FILE = "deltas.safetensors"
MANIFEST_FILE = "manifest.json"
FORMAT = 1
# Header keys that must agree before rows may be mixed in one cache, with their names in messages.
COMPAT_KEYS = {"base_fingerprint": "base model", "probe_fingerprint": "probe set", "spec": "delta spec"}


@dataclass
class CacheRow:
    id: str
    path: str
    sha256: str


def make_header(model, probes, spec, base_name: Optional[str] = None, *, pack: bool = True) -> dict[str, Any]:
    """The header a cache built with this base model, probe set and spec carries.

    ``activations_fingerprint`` identifies the base model's activations on the probes that the
    deltas were computed from (:class:`~llgbm_cli.deltas.compute.BaseActivations`): a run uses
    them only when theirs is the same.
    """
    from .. import __version__
    from ..models import model_fingerprint
    from .compute import activations_fingerprint

    base_fp = model_fingerprint(model)
    return {
        "format": FORMAT,
        "base_model": base_name or getattr(model.config, "llgbm_name", None),
        "base_fingerprint": base_fp,
        "activations_fingerprint": activations_fingerprint(base_fp, probes.fingerprint, pack, spec.dtype),
        "probe_fingerprint": probes.fingerprint,
        "probes": probes.describe(),
        "spec": spec.to_dict(),
        "dim": spec.dim(model),
        "llgbm_version": __version__,
    }


class DeltaCache:
    """An in-memory view of a delta cache folder; :meth:`save` commits it atomically."""

    def __init__(self, folder: str | Path, header: dict[str, Any], rows: Optional[list[CacheRow]] = None,
                 matrix: Optional["torch.Tensor"] = None):
        self.folder = Path(folder)
        self.header = dict(header)
        self.rows: list[CacheRow] = list(rows or [])
        dim = int(self.header.get("dim") or 0)
        self._vectors: list["torch.Tensor"] = list(matrix.float()) if matrix is not None else []
        if matrix is None and self.rows:
            raise ValueError("rows without a matrix")
        self._index = {r.id: i for i, r in enumerate(self.rows)}
        self._dim = dim

    # ------------------------------------------------------------------ reading

    @classmethod
    def exists(cls, folder: str | Path) -> bool:
        return (Path(folder) / MANIFEST_FILE).exists()

    @classmethod
    def open(cls, folder: str | Path) -> "DeltaCache":
        """Read a cache folder (no base model needed). Errors name the file and what to do."""
        import torch
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        folder = Path(folder)
        mf, data = folder / MANIFEST_FILE, folder / DATA_FILE
        if not mf.exists():
            raise InputError(f"{folder}: no delta cache here ({MANIFEST_FILE} missing); build one with `{made_by('deltas')}`")
        try:
            man = json.loads(mf.read_text())
            header, rows = man["header"], [CacheRow(**r) for r in man["rows"]]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise InputError(f"{mf}: corrupt manifest ({e}); rebuild with `{made_by('deltas')} --rebuild`")
        if rows:
            try:
                mat = load_file(str(data))["deltas"]
            except (SafetensorError, OSError, KeyError, RuntimeError) as e:
                raise InputError(f"{data}: corrupt or missing ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                 f"rebuild with `{made_by('deltas')} --rebuild`")
            if mat.shape[0] != len(rows) or (header.get("dim") and mat.shape[1] != header["dim"]):
                raise InputError(f"{data}: holds {tuple(mat.shape)} but {mf} lists {len(rows)} rows of dim "
                                 f"{header.get('dim')}; rebuild with `{made_by('deltas')} --rebuild`")
        else:
            mat = torch.zeros(0, int(header.get("dim") or 0))
        return cls(folder, header, rows, mat)

    @property
    def ids(self) -> list[str]:
        return [r.id for r in self.rows]

    @property
    def dim(self) -> int:
        return self._dim

    def __len__(self) -> int:
        return len(self.rows)

    def __contains__(self, id_: str) -> bool:
        return id_ in self._index

    def matrix(self) -> "torch.Tensor":
        """All deltas ``[N, D]`` float32, rows in :attr:`ids` order."""
        import torch

        if not self._vectors:
            return torch.zeros(0, self._dim)
        return torch.stack(self._vectors)

    def row(self, id_: str) -> "torch.Tensor":
        """The delta ``[D]`` of adapter ``id_``."""
        if id_ not in self._index:
            raise InputError(f"{self.folder}: no delta for adapter {id_!r}; run `{made_by('deltas')}`")
        return self._vectors[self._index[id_]]

    def entry(self, id_: str) -> Optional[CacheRow]:
        i = self._index.get(id_)
        return self.rows[i] if i is not None else None

    @property
    def spec(self):
        from .compute import DeltaSpec

        return DeltaSpec.from_dict(self.header.get("spec") or {})

    def mismatches(self, header: dict[str, Any]) -> list[str]:
        """What differs between this cache's header and ``header`` (as 'what: old -> new')."""
        out = []
        for key, what in COMPAT_KEYS.items():
            if self.header.get(key) != header.get(key):
                out.append(f"{what} ({self.header.get(key)} -> {header.get(key)})")
        return out

    # ------------------------------------------------------------------ writing

    def put(self, row: CacheRow, vector: "torch.Tensor") -> None:
        """Insert or replace the row of ``row.id``."""
        v = vector.detach().float().cpu().reshape(-1)
        if self._dim and v.numel() != self._dim:
            raise ValueError(f"delta of dim {v.numel()} does not fit a cache of dim {self._dim}")
        self._dim = v.numel()
        i = self._index.get(row.id)
        if i is None:
            self._index[row.id] = len(self.rows)
            self.rows.append(row)
            self._vectors.append(v)
        else:
            self.rows[i] = row
            self._vectors[i] = v

    def to_manifest(self) -> dict[str, Any]:
        return {"header": {**self.header, "dim": self._dim, "rows": len(self.rows)},
                "rows": [asdict(r) for r in self.rows]}

    def save(self, provenance: Optional[dict[str, Any]] = None) -> None:
        """Commit both files atomically (temporary folder + rename)."""
        from ..io import save_safetensors as save_file

        self.header["dim"] = self._dim
        with atomic_dir(self.folder, force=True) as tmp:
            save_file({"deltas": self.matrix().contiguous()}, str(tmp / DATA_FILE), metadata={"format": "pt"})
            atomic_write_json(tmp / MANIFEST_FILE, self.to_manifest())
            if provenance is not None:
                write_provenance(tmp, provenance)

    def lock(self) -> FileLock:
        return cache_lock(self.folder)


def cache_lock(folder: str | Path) -> FileLock:
    """The exclusive writer lock of a cache folder (a file beside it)."""
    folder = Path(folder)
    return FileLock(folder.parent / f".{folder.name}.lock", what=f"the delta cache {folder}")
