"""Adapter x task scores on a fixed question sample, cached on disk (``eval --folds``' ``<out>/scores``).

One JSON file per key: the adapter's sha256, the task, its prompt form, the base model and the
question ids, so an adapter is scored once across folds and reruns. The oracle's candidates are
scored together: the base layers below the adapters run once per batch for all of them
(:meth:`ScoreCache.score_many`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Optional, Sequence

from ..errors import InputError
from ..io import fingerprint


def adapter_sha256(folder: Path, zoo_sha: Optional[str] = None) -> str:
    """The zoo manifest's sha256 of an adapter, else the sha256 of its weights and config files."""
    from ..adapters import CONFIG_FILE
    from ..io import sha256_file

    if zoo_sha:
        return zoo_sha
    folder = Path(folder)
    parts = [sha256_file(p) for p in sorted(folder.glob("*.safetensors"))]
    if (folder / CONFIG_FILE).exists():
        parts.append(sha256_file(folder / CONFIG_FILE))
    if not parts:
        raise InputError(f"{folder}: no adapter weights to score")
    return hashlib.sha256("".join(parts).encode()).hexdigest()


class ScoreCache:
    """Adapter x task scores on a fixed question sample, one JSON file per key under ``folder``."""

    def __init__(self, resolved, folder: Path, model=None, tok=None):
        self.resolved, self.folder, self.model, self.tok = resolved, Path(folder), model, tok
        self.hits = 0
        self.misses = 0
        self.contamination: dict[str, dict[str, Any]] = {}  # task -> what its scored questions were checked against
        self._tasks: dict[str, tuple[Any, Any, list]] = {}

    def base_model(self):
        """(model, tokenizer) of the base model, loaded on first use (a rerun of finished folds loads nothing)."""
        if self.model is None:
            from ..models import load_base_model

            cfg = self.resolved.config
            self.model, self.tok = load_base_model(cfg.model.base, cfg.model.dtype, cfg.model.device)
        return self.model, self.tok

    def task(self, name: str):
        """(form, records) of a task's sampled test questions (eval's sample: same seed, same size)."""
        from ..tasks.evaluate import form_for
        from ..tasks.overlap import scored_sample, used_tasks
        from ..tasks.registry import registry_for

        if name not in self._tasks:
            cfg = self.resolved.config
            t = registry_for(self.resolved).get(name)
            # eval's questions: the same seeded sample, checked for contamination with the same policy
            recs, self.contamination[name] = scored_sample(self.resolved, t, used_tasks(self.resolved, [name]))
            self._tasks[name] = (form_for(self.resolved, t), recs)
        return self._tasks[name]

    def key(self, adapter_sha: Optional[str], task: str, form=None, recs: Optional[Sequence] = None) -> dict[str, Any]:
        """What a score depends on: the adapter, the task's prompt form, the base model and the question
        ids (``form``/``recs``: given by a caller that holds them, else this cache's sample of ``task``)."""
        cfg = self.resolved.config
        if form is None or recs is None:
            form, recs = self.task(task)
        return {"adapter": adapter_sha or "base", "task": task, "form": repr(form),
                "base_model": cfg.model.base, "dtype": cfg.model.dtype, "max_length": cfg.data.max_length,
                "questions": [r.id for r in recs]}

    def lookup(self, adapter_sha: Optional[str], task: str, form, recs: Sequence):
        """The cached score of the adapter whose files hash to ``adapter_sha`` (:func:`adapter_sha256`; None:
        the base model) on exactly ``recs`` in ``form``, as a :class:`~llgbm_cli.tasks.evaluate.StoredScore`;
        None when this cache has not scored it."""
        from ..tasks.evaluate import StoredScore

        got = self._cached(self.key(adapter_sha, task, form, recs))
        if got is None or got.get("metric") != form.metric or len(got.get("values") or []) != len(recs):
            return None
        return StoredScore(form, got["values"])

    def put(self, adapter_folder: Optional[Path], task: str, score, recs: Sequence) -> None:
        """Cache ``score`` (a TaskScore of ``recs``) of an adapter folder (None: the base model), keyed by
        the sha256 of its files, so that a later run that builds the same adapter reads it back."""
        sha = None if adapter_folder is None else adapter_sha256(Path(adapter_folder))
        self._write(self.key(sha, task, score.form, recs), adapter_folder, score, recs)

    def _cached(self, key: dict[str, Any]) -> Optional[dict[str, Any]]:
        """The cached score of ``key``; None when missing or unreadable (it is scored again and rewritten)."""
        path = self.folder / f"{fingerprint(key)}.json"
        try:
            got = json.loads(path.read_text()) if path.exists() else None
        except (OSError, ValueError):
            return None
        if got is None or got.get("key") != key:
            return None
        self.hits += 1
        return got["score"]

    def score(self, adapter_folder: Optional[Path], task: str, zoo_sha: Optional[str] = None) -> dict[str, Any]:
        """``{"accuracy", "values", "question_ids", "metric"}`` of an adapter folder (None: the base model)."""
        from ..adapters import load_adapter
        from ..tasks.evaluate import score_records_with

        sha = None if adapter_folder is None else adapter_sha256(adapter_folder, zoo_sha)
        key = self.key(sha, task)
        got = self._cached(key)
        if got is not None:
            return got
        cfg = self.resolved.config
        form, recs = self.task(task)
        ad = None if adapter_folder is None else load_adapter(adapter_folder)
        model, tok = self.base_model()
        s = score_records_with(model, tok, ad, form, recs, batch_size=cfg.eval.batch_size,
                               generate_batch_size=cfg.data.generate_batch_size, max_length=cfg.data.max_length)
        return self._store(key, adapter_folder, s, recs)

    def _store(self, key: dict[str, Any], adapter_folder: Optional[Path], s, recs) -> dict[str, Any]:
        """Cache the TaskScore ``s`` of ``recs`` under ``key``, scored here; return the cached form."""
        self.misses += 1
        return self._write(key, adapter_folder, s, recs)

    def _write(self, key: dict[str, Any], adapter_folder: Optional[Path], s, recs) -> dict[str, Any]:
        from ..io import atomic_write_json

        out = {"accuracy": s.accuracy, "values": [float(v) for v in s.values()], "question_ids": [r.id for r in recs],
               "metric": s.form.metric}
        atomic_write_json(self.folder / f"{fingerprint(key)}.json",
                          {"key": key, "adapter_folder": None if adapter_folder is None else str(adapter_folder),
                           "score": out})
        return out

    def score_many(self, items: Sequence[tuple[Path, Optional[str]]], task: str, group: int = 8) -> list[dict[str, Any]]:
        """:meth:`score` of each ``(adapter_folder, zoo_sha)`` on ``task``. The ones not cached are
        scored together, ``group`` at a time (each group's scores are cached when it ends, so an
        interrupted run loses at most one group): each batch runs the base layers below the adapters
        once for the whole group (:mod:`llgbm_cli.tasks.lower`)."""
        from ..adapters import load_adapter
        from ..tasks.evaluate import score_records_many

        form, recs = self.task(task)
        keys = [self.key(adapter_sha256(f, z), task) for f, z in items]
        out = [self._cached(key) for key in keys]
        todo = [i for i in range(len(items)) if out[i] is None]
        if len(todo) < 2:
            for i in todo:
                out[i] = self.score(items[i][0], task, items[i][1])
            return out
        cfg = self.resolved.config
        model, tok = self.base_model()
        for g in range(0, len(todo), max(1, group)):
            part = todo[g : g + max(1, group)]
            scores = score_records_many(model, tok, [load_adapter(items[i][0]) for i in part], form, recs,
                                        batch_size=cfg.eval.batch_size, generate_batch_size=cfg.data.generate_batch_size,
                                        max_length=cfg.data.max_length)
            for i, s in zip(part, scores):
                out[i] = self._store(keys[i], items[i][0], s, recs)
        return out
