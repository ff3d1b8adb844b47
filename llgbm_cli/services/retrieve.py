"""`retrieve`: text -> predicted delta (B2) -> the top-k adapters of the delta index.

A query is either a condition (one text, or the prompts of a file taken together as one task's
condition, as in training) that the B2 predictor turns into a delta, or an adapter already in
the index (``adapter_id``: its cached delta is the query). With ``merge`` the top-k adapters are
merged into one PEFT adapter, weighted by their normalized similarity scores.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

from ..progress import NULL_PROGRESS
from .. import workdir
from ..config import ResolvedConfig
from ..errors import InputError
from .generate import read_prompts_file  # noqa: F401  (the one reader; re-exported for the command)


@dataclass
class RetrieveResult:
    query: str
    k: int
    hits: list[dict[str, Any]]
    index: str
    index_kind: str
    predictor: Optional[str] = None
    merged: Optional[dict[str, Any]] = None
    notes: list[str] = field(default_factory=list)
    rank: str = "predicted"
    considered: list[dict[str, Any]] = field(default_factory=list)  # rank = behaviour: every candidate re-ranked

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def similarity_weights(scores: Sequence[float]) -> tuple[list[float], Optional[str]]:
    """Merge weights from similarity scores: negatives clipped to 0, then normalized to sum 1."""
    clipped = [max(0.0, float(s)) for s in scores]
    total = sum(clipped)
    if total <= 1e-12:
        n = len(scores)
        return [1.0 / n] * n, "no retrieved adapter has a positive similarity: merged with equal weights"
    note = "negative similarities were clipped to weight 0" if any(s < 0 for s in scores) else None
    return [c / total for c in clipped], note


def retrieve(
    resolved: ResolvedConfig,
    *,
    text: Optional[str] = None,
    prompts: Optional[Sequence[str]] = None,
    adapter_id: Optional[str] = None,
    k: Optional[int] = None,
    merge: Optional[str | tuple[str, str]] = None,
    out: Optional[str | Path] = None,
    force: bool = False,
    encoder=None,
    predictor: Optional[str | Path] = None,
    rank: Optional[str] = None,
    model=None,
    tokenizer=None,
    progress=NULL_PROGRESS,
) -> RetrieveResult:
    """Find the top-k adapters for a condition text/prompts (through B2) or for an indexed adapter.

    ``predictor``: the B2 predictor folder (default: the work folder's ``train/b2``).

    ``merge``: a strategy name (from ``--merge``) or ``(name, where it came from)``; the other merge
    options come from the config's ``[merge]`` section.

    ``rank`` (default ``retrieve.rank``): ``behaviour`` re-ranks the ``retrieve.candidates`` best
    predicted hits by :func:`llgbm_cli.deltas.behaviour.consistency_scores` on the query's own
    texts (``model``/``tokenizer``: the base model, loaded when not given); the hits' ``score`` is
    then that behavioural score and ``predicted_score`` the cosine it was retrieved by.
    """
    from ..index import DeltaIndex, params_from_config
    from .index import zoo_tasks

    cfg = resolved.config
    given = [x for x in (text, prompts, adapter_id) if x]
    if len(given) != 1:
        raise InputError("give exactly one query: TEXT, --prompts-file FILE or --adapter-delta ID")
    if merge is not None and out is None:
        raise InputError("--merge needs --out DIR: the folder the merged adapter is written to")
    if merge is not None:
        from .merge import merge_options

        merge_opts = merge_options(resolved, strategy=(merge, "--merge") if isinstance(merge, str) else merge)
    folder = workdir.path(resolved, "index")
    idx = DeltaIndex.load(folder, device=cfg.index.device)
    notes: list[str] = []
    k_req = int(k if k is not None else cfg.retrieve.top_k)
    if k_req < 1:
        raise InputError(f"--top-k {k_req}: must be at least 1")
    if k_req > len(idx):
        notes.append(f"top-k {k_req} is larger than the index ({len(idx)} adapters): returning {len(idx)}")
    predictor_path = None
    if adapter_id:
        import numpy as np

        from ..deltas.context import open_cache

        idx.row_of(adapter_id)  # fails early with the ids it knows
        cache = open_cache(workdir.path(resolved, "deltas"))
        idx.check_source(cache.header, what=f"the delta cache {cache.folder}", dim=cache.dim)
        vec = np.asarray(cache.row(adapter_id).numpy(), dtype=np.float32)
        query = f"adapter:{adapter_id}"
    else:
        import torch

        from ..generators.predictor import condition_vector, load_predictor
        from ..models import load_encoder

        pfolder = Path(predictor) if predictor is not None else workdir.path(resolved, "b2")
        net, meta = load_predictor(pfolder)  # `model` is the base model (behavioural re-ranking)
        predictor_path = str(pfolder)
        idx.check_source(meta.get("cache"), what=f"the B2 predictor {pfolder}", dim=net.delta_dim)
        texts = [text] if text else list(prompts or [])
        task = progress.add("retrieve: encoding the query", total=None)
        if encoder is None:
            encoder = load_encoder(meta.get("encoder", cfg.model.encoder), device="cpu")
        if encoder.dim != net.cond_dim:
            raise InputError(f"the encoder {meta.get('encoder')!r} gives {encoder.dim}-d embeddings, the B2 predictor "
                             f"{pfolder} expects {net.cond_dim}; set model.encoder to the one it was trained with")
        embs = encoder.encode(texts, normalize=True, max_length=meta.get("max_text_length"))
        with torch.no_grad():
            vec = net(condition_vector(embs)[None, :])[0].numpy()
        progress.update(task, total=1, completed=1)
        query = text if text else f"{len(texts)} prompts"
    rank = rank or cfg.retrieve.rank
    if rank == "behaviour" and adapter_id:
        raise InputError("--rank behaviour: needs the query's prompts (TEXT or --prompts-file), not --adapter-delta")
    search_params = params_from_config(cfg.index)
    n_search = max(k_req, int(cfg.retrieve.candidates)) if rank == "behaviour" else k_req
    hits = idx.hits(vec, n_search, params=search_params)
    fresh = zoo_tasks(resolved)
    rows = []
    for h in hits:
        d = h.to_dict()
        d["task"] = fresh.get(h.id, h.task)
        rows.append(d)
    considered: list[dict[str, Any]] = []
    if rank == "behaviour":
        rows, considered = _behaviour_rerank(resolved, rows, [text] if text else list(prompts or []), k_req,
                                             model, tokenizer, progress)
    result = RetrieveResult(query=query, k=len(rows), hits=rows, index=str(folder), index_kind=idx.kind,
                            predictor=predictor_path, notes=notes, rank=rank, considered=considered)
    if merge is not None:
        from .merge import merge_to_folder

        weights, note = similarity_weights([h["score"] for h in rows])
        if note:
            notes.append(note)
        opts = merge_opts.replace(weights=(weights, "the retrieved adapters' similarities"))
        mr = merge_to_folder([h["id"] for h in rows], out, opts, force=force, zoo=workdir.path(resolved, "zoo"),
                             config=resolved.to_dict(), progress=progress)
        result.merged = {"out": mr.out, "strategy": mr.strategy, "weights": weights,
                         "applied_weights": mr.weights, "rank": mr.rank, "rank_range": mr.rank_range,
                         "retained_energy": mr.retained_energy, "notes": mr.notes}
    return result


def _behaviour_rerank(resolved, rows: list[dict[str, Any]], texts: list[str], k: int, model, tokenizer,
                      progress) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``k`` hits with the best behavioural score on ``texts`` (ranked, ``score`` replaced by it,
    ``predicted_score`` and ``predicted_rank`` kept), and every candidate considered."""
    from ..adapters import load_adapter
    from ..deltas.behaviour import consistency_scores
    from ..deltas.compute import DeltaSpec
    from ..tasks.registry import registry_for
    from ..zoo_manifest import Zoo

    cfg = resolved.config
    if model is None or tokenizer is None:
        from ..models import load_base_model

        model, tokenizer = load_base_model(cfg.model.base, cfg.model.dtype, cfg.model.device)
    zoo = Zoo.load(workdir.path(resolved, "zoo"))
    reg = registry_for(resolved)
    own = []
    for r in rows:
        e = zoo.get(r["id"])
        n_own = cfg.retrieve.own_prompts
        cond = list(e.condition or [])[:n_own]
        if not cond and r.get("task") in reg.names():  # an entry without stored prompts: its task's train prompts
            cond = [x.prompt for x in reg.get(r["task"]).sample("train", n_own, seed=cfg.project.seed)]
        if not cond:
            raise InputError(f"--rank behaviour: zoo adapter {r['id']} has no prompts of its own task (no condition "
                             f"in zoo.jsonl and task {r.get('task')!r} is not registered); use --rank predicted")
        own.append(cond)
    task = progress.add("retrieve: behaviour on the query prompts", total=None)
    scores = consistency_scores(model, tokenizer, [load_adapter(zoo.path_of(zoo.get(r["id"]))) for r in rows], own,
                                texts, DeltaSpec.from_config(cfg.delta), chat_template=cfg.probes.chat_template,
                                max_length=cfg.probes.max_length, adapters_per_batch=cfg.delta.adapters_per_batch,
                                keys=[f"{r['id']}:{zoo.get(r['id']).sha256 or zoo.path_of(zoo.get(r['id']))}" for r in rows])
    progress.update(task, total=1, completed=1)
    considered = [{**r, "predicted_score": r["score"], "predicted_rank": i + 1, "score": s}
                  for i, (r, s) in enumerate(zip(rows, scores))]
    best = sorted(considered, key=lambda r: (-r["score"], r["predicted_rank"]))[:k]
    return [{**r, "rank": i + 1} for i, r in enumerate(best)], considered
