"""A FAISS index over cached deltas: cosine similarity as inner product on L2-normalized rows.

Index kinds are a registry (``flat`` exact, ``hnsw`` graph, ``ivf`` inverted lists, ``ivfpq``
inverted lists of product-quantized codes for zoos too big to hold as floats); an unknown name
lists the valid ones. The IVF kinds can be trained on a seeded sample of the rows and filled in
shards, each shard encoded into its own copy of the trained (empty) index and merged into the first,
so only one shard of float vectors is needed at a time (:func:`fill_in_shards`). A saved index is a folder: ``index.faiss`` (always a CPU index),
``ids.json`` (row -> adapter id and task) and ``index.json`` (kind, parameters, dimension and the
delta cache's spec and fingerprints it was built from). Queries of another dimension, or from a
cache with another delta spec, base model or probe set, are refused by :meth:`DeltaIndex.check_source`,
so deltas measured in different ways are never compared.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional

from .errors import InputError
from .workdir import made_by
from .io import atomic_dir, atomic_write_json

if TYPE_CHECKING:  # numpy is imported where it is used: every config load reads KINDS (registries.py)
    import numpy as np

INDEX_FILE = "index.faiss"
IDS_FILE = "ids.json"
META_FILE = "index.json"
FORMAT_VERSION = 1

# Header keys of the delta cache that must agree between an index and whatever queries it.
# Several spellings are accepted so the check does not depend on one cache layout detail.
SOURCE_KEYS = {
    "delta spec": ("spec", "delta_spec"),
    "base-model fingerprint": ("base_fingerprint", "model_fingerprint", "base_model_fingerprint"),
    "probe fingerprint": ("probe_fingerprint", "probes_fingerprint"),
}


def _faiss():
    try:
        import faiss  # noqa: F401
    except ImportError:  # pragma: no cover - faiss is a hard dependency
        raise InputError("the FAISS library is not installed; install faiss-cpu (or faiss-gpu)")
    return faiss


# --------------------------------------------------------------------------- kinds registry


@dataclass(frozen=True)
class IndexKind:
    name: str
    help: str
    make: Callable[[int, int, dict], Any]  # (dim, n, params) -> untrained faiss index
    tune: Callable[[Any, dict], None]  # apply search-time parameters
    params: tuple[str, ...]
    gpu: bool  # FAISS has a GPU version of this kind


def _make_flat(dim: int, n: int, params: dict):
    return _faiss().IndexFlatIP(dim)


def _make_hnsw(dim: int, n: int, params: dict):
    faiss = _faiss()
    idx = faiss.IndexHNSWFlat(dim, int(params["hnsw_m"]), faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = int(params["hnsw_ef_construction"])
    idx.hnsw.efSearch = int(params["hnsw_ef_search"])
    return idx


def _make_ivf(dim: int, n: int, params: dict):
    faiss = _faiss()
    quantizer = faiss.IndexFlatIP(dim)
    idx = faiss.IndexIVFFlat(quantizer, dim, int(params["ivf_nlist"]), faiss.METRIC_INNER_PRODUCT)
    idx.nprobe = int(params["ivf_nprobe"])
    return idx


def _make_ivfpq(dim: int, n: int, params: dict):
    faiss = _faiss()
    m = int(params["ivfpq_code_size"])
    if m < 1 or dim % m:
        near = [d for d in range(1, dim + 1) if dim % d == 0 and d <= 4 * max(m, 1)][-4:]
        raise InputError(f"index.ivfpq_code_size {m} must divide the delta dimension {dim} (one 8-bit code per "
                         f"{dim}/code_size dimensions); pick a divisor such as {', '.join(map(str, near))}")
    quantizer = faiss.IndexFlatIP(dim)
    idx = faiss.IndexIVFPQ(quantizer, dim, int(params["ivf_nlist"]), m, PQ_BITS, faiss.METRIC_INNER_PRODUCT)
    idx.nprobe = int(params["ivf_nprobe"])
    return idx


def _tune_none(index, params: dict) -> None:
    return None


def _tune_hnsw(index, params: dict) -> None:
    if "hnsw_ef_search" in params:
        _faiss().downcast_index(index).hnsw.efSearch = int(params["hnsw_ef_search"])


def _tune_ivf(index, params: dict) -> None:
    if "ivf_nprobe" in params:
        try:
            _faiss().extract_index_ivf(index).nprobe = int(params["ivf_nprobe"])
        except RuntimeError:  # a GPU IVF index
            index.nprobe = int(params["ivf_nprobe"])


KINDS: dict[str, IndexKind] = {
    "flat": IndexKind("flat", "exact inner product (brute force, the reference)", _make_flat, _tune_none, (), True),
    "hnsw": IndexKind(
        "hnsw", "HNSW graph: sub-linear queries, approximate",
        _make_hnsw, _tune_hnsw, ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search"), False,
    ),
    "ivf": IndexKind("ivf", "inverted lists over k-means cells: approximate", _make_ivf, _tune_ivf,
                     ("ivf_nlist", "ivf_nprobe"), True),
    "ivfpq": IndexKind("ivfpq", "inverted lists of product-quantized codes (ivfpq_code_size bytes a vector): "
                       "approximate, compressed", _make_ivfpq, _tune_ivf, ("ivf_nlist", "ivf_nprobe", "ivfpq_code_size"),
                       False),
}

PQ_BITS = 8  # bits per sub-quantizer code: 256 centroids each, so one code byte per sub-quantizer
IVF_KINDS = ("ivf", "ivfpq")
PARAM_KEYS = ("hnsw_m", "hnsw_ef_construction", "hnsw_ef_search", "ivf_nlist", "ivf_nprobe", "ivfpq_code_size",
              "train_rows", "shard_rows")


def get_kind(name: str, flag: str = "index.kind") -> IndexKind:
    if name not in KINDS:
        raise InputError(f"{flag}: unknown index kind {name!r}; valid kinds: {', '.join(KINDS)}")
    return KINDS[name]


def params_from_config(section) -> dict[str, Any]:
    """The index parameters of an ``[index]`` config section as a plain dict."""
    return {k: getattr(section, k) for k in PARAM_KEYS}


# --------------------------------------------------------------------------- helpers


def normalize_rows(x) -> np.ndarray:
    """A float32, C-contiguous, L2-normalized copy (zero rows stay zero instead of NaN)."""
    import numpy as np

    x = np.array(x, dtype=np.float32, copy=True, order="C")
    if x.ndim == 1:
        x = x[None, :]
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    np.divide(x, norms, out=x, where=norms > 0)
    return x


def matrix_fingerprint(ids: list[str], matrix: np.ndarray) -> str:
    """Content hash of the rows an index was built from (to detect a cache changed since)."""
    import numpy as np

    h = hashlib.sha256()
    h.update(json.dumps(list(ids)).encode())
    h.update(np.ascontiguousarray(matrix, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def source_value(header: Optional[dict], what: str) -> Any:
    for key in SOURCE_KEYS[what]:
        if header and key in header:
            return header[key]
    return None


def training_rows(n: int, limit: int, index, seed: int) -> np.ndarray:
    """Sorted row numbers of a seeded training sample: at most ``limit`` rows (0: all of them), but never
    fewer than the index's k-means needs (one point per IVF list, 256 per PQ codebook)."""
    import numpy as np

    need = int(getattr(index, "nlist", 1))
    if "PQ" in type(index).__name__:
        need = max(need, 2**PQ_BITS)
    k = n if limit <= 0 else min(n, max(limit, need))
    if k >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False))


def fill_in_shards(trained, shards: Iterable) -> Any:
    """Add row blocks to a trained, empty IVF index, each into its own copy, merging into the first.

    ``shards`` yields float arrays [rows, dim] (normalized here); they can be produced lazily, read
    from disk or encoded on other machines, since a copy of the trained index is all a shard needs.
    Row numbers follow the order of the shards, so the result answers exactly as one ``add`` would.
    """
    faiss = _faiss()
    if trained.ntotal:
        raise InputError("fill_in_shards needs a trained, empty index")
    empty = faiss.serialize_index(trained)
    merged = None
    for block in shards:
        part = faiss.deserialize_index(empty)
        part.add(normalize_rows(block))
        if merged is None:
            merged = part
        else:
            merged.merge_from(part, merged.ntotal)
            del part
    return merged if merged is not None else trained


def _to_gpu(index):
    faiss = _faiss()
    res = faiss.StandardGpuResources()
    out = faiss.index_cpu_to_gpu(res, 0, index)
    out._llgbm_res = res  # keep the resources alive as long as the index
    return out


def gpu_count() -> int:
    faiss = _faiss()
    return int(faiss.get_num_gpus()) if hasattr(faiss, "get_num_gpus") else 0


# --------------------------------------------------------------------------- the index


@dataclass
class SearchHit:
    rank: int
    id: str
    task: Optional[str]
    score: float
    row: int

    def to_dict(self) -> dict[str, Any]:
        return {"rank": self.rank, "id": self.id, "task": self.task, "score": self.score}


@dataclass
class DeltaIndex:
    """A FAISS index plus the adapter ids of its rows and where its vectors came from."""

    index: Any
    ids: list[str]
    tasks: list[Optional[str]]
    meta: dict[str, Any] = field(default_factory=dict)
    device: str = "cpu"

    # ----------------------------------------------------------------- build

    @classmethod
    def build(
        cls,
        matrix,
        ids: list[str],
        *,
        kind: str = "flat",
        params: Optional[dict] = None,
        tasks: Optional[list[Optional[str]]] = None,
        source: Optional[dict] = None,
        device: str = "cpu",
        seed: int = 0,
    ) -> "DeltaIndex":
        """Build an index over the rows of ``matrix`` [N, D] (normalized here; the input is not changed)."""
        import numpy as np

        _faiss()  # a clear error before any work when FAISS is missing
        spec = get_kind(kind)
        matrix = np.asarray(matrix)
        if matrix.ndim != 2 or matrix.shape[0] == 0:
            raise InputError(f"the delta cache is empty; fill it with `{made_by('deltas')}` before `{made_by('index')}`")
        if len(ids) != matrix.shape[0]:
            raise InputError(f"{len(ids)} ids for {matrix.shape[0]} rows: the cache is inconsistent; rebuild it")
        if not np.isfinite(matrix).all():
            bad = [ids[i] for i in np.where(~np.isfinite(matrix).all(axis=1))[0][:5]]
            raise InputError(f"non-finite deltas in the cache (adapters {bad}); recompute them with `{made_by('deltas')}`")
        n, dim = matrix.shape
        params = dict(params or {})
        notes = []
        if kind in IVF_KINDS and int(params.get("ivf_nlist", 1)) > n:
            notes.append(f"index.ivf_nlist {params['ivf_nlist']} > {n} vectors: lowered to {n}")
            params["ivf_nlist"] = n
        if kind == "ivfpq" and n < 2**PQ_BITS:
            raise InputError(f"index.kind = \"ivfpq\" needs at least {2**PQ_BITS} deltas to train its codebooks "
                             f"(there are {n}); a zoo this small fits `flat` (exact) or `hnsw`")
        used = {k: params[k] for k in spec.params if k in params}
        shard_rows = int(params.get("shard_rows") or 0)
        sharded = kind in IVF_KINDS and 0 < shard_rows < n
        # The sharded path never holds a normalized copy of the whole matrix, only one shard of it.
        x = None if sharded else normalize_rows(matrix)
        index = spec.make(dim, n, params)
        dev = "cpu"
        to_gpu = False
        if device == "cuda":
            if gpu_count() == 0:
                raise InputError(
                    "index.device = \"cuda\" but FAISS sees no GPU (no CUDA device, or a CPU-only FAISS build); "
                    "set index.device = \"cpu\" (or --device cpu)"
                )
            if spec.gpu:
                to_gpu = True
            else:
                notes.append(f"FAISS has no GPU version of `{kind}` here; built and searched on the CPU")
        if to_gpu and not sharded:
            index = _to_gpu(index)
            dev = "cuda"
        if not index.is_trained:
            if kind in IVF_KINDS:
                rows = training_rows(n, int(params.get("train_rows") or 0), index, seed)
                train = normalize_rows(matrix[rows]) if x is None else x[rows]
                if len(rows) < n:
                    notes.append(f"trained on a seeded sample of {len(rows)} of {n} deltas (index.train_rows)")
            else:
                train = x
            if hasattr(index, "cp"):  # seeded k-means: the same cache gives the same IVF cells
                index.cp.seed = seed
            if kind == "ivfpq":
                _faiss().downcast_index(index).pq.cp.seed = seed
            index.train(train)
            del train
        if sharded:
            index = fill_in_shards(index, (matrix[s : s + shard_rows] for s in range(0, n, shard_rows)))
            notes.append(f"filled in {math.ceil(n / shard_rows)} shards of at most {shard_rows} rows, merged")
            if to_gpu:
                index = _to_gpu(index)
                dev = "cuda"
        else:
            index.add(x)
        meta = {
            "format": FORMAT_VERSION,
            "kind": kind,
            "params": used,
            "dim": dim,
            "count": n,
            "source": dict(source or {}),
            "matrix_fingerprint": matrix_fingerprint(ids, matrix),
            "notes": notes,
        }
        return cls(index, list(ids), list(tasks) if tasks is not None else [None] * n, meta, dev)

    # ----------------------------------------------------------------- properties

    @property
    def kind(self) -> str:
        return self.meta.get("kind", "flat")

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    def __len__(self) -> int:
        return len(self.ids)

    # ----------------------------------------------------------------- search

    def search(self, queries, k: int, *, params: Optional[dict] = None) -> tuple[np.ndarray, np.ndarray]:
        """Cosine scores and row indices of the k nearest rows, best first: ([q, k'], [q, k']).

        ``k`` is clamped to the index size (k' = min(k, len)); queries are normalized here.
        """
        import numpy as np

        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None, :]
        if q.shape[1] != self.dim:
            raise InputError(
                f"query dimension {q.shape[1]} does not match the index dimension {self.dim}; "
                f"the index was built from deltas of another spec or base model: rebuild it with `{made_by('index')} --force`"
            )
        if params:
            get_kind(self.kind).tune(self.index, params)
        k = max(1, min(int(k), len(self)))
        scores, rows = self.index.search(normalize_rows(q), k)
        return scores, rows

    def hits(self, query, k: int, *, params: Optional[dict] = None) -> list[SearchHit]:
        scores, rows = self.search(query, k, params=params)
        out = []
        for r, (s, i) in enumerate(zip(scores[0], rows[0]), 1):
            if i < 0:  # approximate kinds may return fewer than k
                continue
            out.append(SearchHit(r, self.ids[i], self.tasks[i], float(s), int(i)))
        return out

    def row_of(self, adapter_id: str) -> int:
        try:
            return self.ids.index(adapter_id)
        except ValueError:
            raise InputError(
                f"--adapter-delta {adapter_id!r}: no such adapter in the index ({len(self)} adapters); "
                "check the id in zoo.jsonl, or rebuild the index after caching its delta"
            )

    # ----------------------------------------------------------------- compatibility

    def check_source(self, header: Optional[dict], *, what: str, dim: Optional[int] = None) -> None:
        """Refuse queries from deltas measured differently (dimension, spec, base model or probes).

        ``header`` is the delta-cache header the query side came from; ``what`` names that side in
        the message (e.g. "the B2 predictor checkpoint runs/train/b2").
        """
        if dim is not None and int(dim) != self.dim:
            raise InputError(
                f"{what} gives deltas of dimension {dim}, the index holds dimension {self.dim}; "
                f"rebuild one of them from the same delta cache (`{made_by('index')} --force`)"
            )
        if header is None:
            return
        mine = self.meta.get("source") or {}
        for name in SOURCE_KEYS:
            a, b = source_value(mine, name), source_value(header, name)
            if a is not None and b is not None and _canon(a) != _canon(b):
                raise InputError(
                    f"{what} was made from another {name} than the index ({_short(b)} vs index {_short(a)}); "
                    f"rebuild the index from the current cache with `{made_by('index')} --force`, or retrain"
                )

    # ----------------------------------------------------------------- I/O

    def save(self, folder: str | Path, *, force: bool = False, extra_files: Optional[dict[str, Any]] = None) -> Path:
        """Write the folder atomically; refuses an existing one unless ``force``."""
        faiss = _faiss()
        folder = Path(folder)
        cpu_index = faiss.index_gpu_to_cpu(self.index) if self.device == "cuda" else self.index
        with atomic_dir(folder, force=force) as tmp:
            faiss.write_index(cpu_index, str(tmp / INDEX_FILE))
            atomic_write_json(tmp / IDS_FILE, {"ids": self.ids, "tasks": self.tasks})
            atomic_write_json(tmp / META_FILE, self.meta)
            for name, obj in (extra_files or {}).items():
                atomic_write_json(tmp / name, obj)
        return folder

    @classmethod
    def load(cls, folder: str | Path, *, device: str = "cpu") -> "DeltaIndex":
        faiss = _faiss()
        folder = Path(folder)
        missing = [f for f in (INDEX_FILE, IDS_FILE, META_FILE) if not (folder / f).exists()]
        if missing:
            raise InputError(f"{folder}: no delta index here (missing {', '.join(missing)}); build it with `{made_by('index')}`")
        try:
            meta = json.loads((folder / META_FILE).read_text())
            ids_doc = json.loads((folder / IDS_FILE).read_text())
            index = faiss.read_index(str(folder / INDEX_FILE))
        except (json.JSONDecodeError, RuntimeError) as e:
            raise InputError(f"{folder}: corrupt index ({str(e).splitlines()[0][:120]}); rebuild it with `{made_by('index')} --force`")
        ids_path = folder / IDS_FILE
        ids = ids_doc.get("ids") if isinstance(ids_doc, dict) else None
        tasks = ids_doc.get("tasks") if isinstance(ids_doc, dict) else None
        if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
            raise InputError(f"{ids_path}: malformed (expected an object whose `ids` is a list of adapter ids); "
                             f"rebuild the index with `{made_by('index')} --force`")
        if tasks is not None and (not isinstance(tasks, list) or len(tasks) != len(ids)
                                  or not all(t is None or isinstance(t, str) for t in tasks)):
            raise InputError(f"{ids_path}: malformed `tasks` (expected one task name or null per id); "
                             f"rebuild the index with `{made_by('index')} --force`")
        if not isinstance(meta, dict):
            raise InputError(f"{folder / META_FILE}: malformed (expected a JSON object); "
                             f"rebuild the index with `{made_by('index')} --force`")
        dim = meta.get("dim", -1)
        if isinstance(dim, bool) or not isinstance(dim, int) or index.ntotal != len(ids) or index.d != dim:
            raise InputError(f"{folder}: index.faiss ({index.ntotal}×{index.d}) does not match ids.json/index.json; "
                             f"rebuild it with `{made_by('index')} --force`")
        get_kind(meta.get("kind", "flat"), flag=f"{folder / META_FILE}: kind")
        tasks = list(tasks or [None] * len(ids))
        out = cls(index, ids, tasks, meta, "cpu")
        get_kind(out.kind).tune(index, meta.get("params") or {})
        if device == "cuda":
            if gpu_count() == 0:
                raise InputError("index.device = \"cuda\" but FAISS sees no GPU; set index.device = \"cpu\"")
            if get_kind(out.kind).gpu:
                res = faiss.StandardGpuResources()
                out.index = faiss.index_cpu_to_gpu(res, 0, index)
                out.index._llgbm_res = res
                out.device = "cuda"
        return out


def _canon(v: Any) -> str:
    return json.dumps(v, sort_keys=True, default=str)


def _short(v: Any) -> str:
    s = _canon(v)
    return s if len(s) <= 80 else s[:77] + "..."


def brute_force(matrix, queries, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The NumPy reference: exact cosine top-k (scores, rows), best first."""
    import numpy as np

    x = normalize_rows(matrix)
    q = normalize_rows(queries)
    sims = q @ x.T
    k = min(k, x.shape[0])
    part = np.argpartition(-sims, k - 1, axis=1)[:, :k]
    ps = np.take_along_axis(sims, part, axis=1)
    order = np.argsort(-ps, axis=1, kind="stable")
    rows = np.take_along_axis(part, order, axis=1)
    return np.take_along_axis(sims, rows, axis=1), rows
