"""The delta context: everything a command needs to measure or read deltas the way the cache does.

A :class:`DeltaContext` holds the base model, the delta spec (its layers resolved against the
model, so a bad ``delta.layers`` fails here with the valid range), the probes on the model's device
and the cache header they imply. From it a service opens the delta cache (refused when its header
differs: another base model, probe set or spec), reads cached rows, or gets the teacher deltas of a
set of adapters (from the cache when it holds them all, else computed with the cache's own
function). Every service that needs deltas starts here, so all of them agree on what a delta is.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Sequence

from .. import workdir
from ..errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from .cache import DeltaCache
    from .compute import DeltaSpec
    from .probes import ProbeSet

log = logging.getLogger(__name__)


def delta_spec(model, section) -> "DeltaSpec":
    """The ``[delta]`` spec, with its layers checked against ``model`` (a clear error when out of range)."""
    from .compute import DeltaSpec, resolve_layers

    spec = DeltaSpec.from_config(section)
    try:
        resolve_layers(model, spec)
    except ValueError as e:
        raise InputError(str(e))
    return spec


def open_cache(folder: Path) -> "DeltaCache":
    """Open the delta cache, refusing a missing or empty one with the command that fills it."""
    from .cache import DeltaCache

    if not folder.exists():
        raise InputError(f"{folder}: no delta cache; {workdir.hint('deltas', None)} to compute it")
    cache = DeltaCache.open(folder)
    if len(cache.ids) == 0:
        raise InputError(f"{folder}: the delta cache is empty; {workdir.hint('deltas', None)} to compute deltas")
    return cache


@dataclass
class DeltaContext:
    resolved: Any
    model: Any
    spec: "DeltaSpec"
    probes: "ProbeSet"
    header: dict[str, Any]

    @classmethod
    def build(cls, resolved, model, tokenizer, *, tasks, device=None) -> "DeltaContext":
        """Spec (layers checked), probes (on ``device``, default the model's) and cache header.
        ``tasks`` is the project's TaskRegistry (``registry_for(resolved)``): the tasks a
        ``task:<name>`` probe source may name."""
        from .cache import make_header
        from .probes import load_probes

        cfg = resolved.config
        spec = delta_spec(model, cfg.delta)
        pc = cfg.probes
        probes = load_probes(pc.source, tokenizer, count=pc.count, chat_template=pc.chat_template,
                             max_length=pc.max_length, seed=cfg.project.seed, tasks=tasks)
        if device is not False:
            probes = probes.to(device if device is not None else next(model.parameters()).device)
        return cls(resolved, model, spec, probes, make_header(model, probes, spec, cfg.model.base, pack=cfg.delta.pack))

    @property
    def cache_folder(self) -> Path:
        return workdir.path(self.resolved, "deltas")

    def mismatches(self, cache: "DeltaCache") -> list[str]:
        return cache.mismatches(self.header)

    def check_cache(self, cache: "DeltaCache", fix: Optional[str] = None) -> "DeltaCache":
        """Refuse a cache made with another base model, probe set or spec than this context's."""
        bad = self.mismatches(cache)
        if bad:
            fix = fix or (f"run `{workdir.made_by('deltas')} --rebuild` to rebuild it for this config, or point "
                          "delta.cache at a matching cache")
            raise InputError(f"{cache.folder}: the delta cache was built with another {', '.join(bad)} than this "
                             f"config; {fix}")
        return cache

    def open_cache(self) -> "DeltaCache":
        """The configured delta cache, present, non-empty and matching this context."""
        return self.check_cache(open_cache(self.cache_folder))

    @staticmethod
    def cached(cache: "DeltaCache", entry) -> "torch.Tensor":
        """The cached delta of a zoo entry, or an error naming the command that computes it."""
        if entry.id not in cache:
            raise InputError(f"{cache.folder}: no delta for zoo adapter {entry.id!r}; {workdir.hint('deltas', None)}")
        return cache.row(entry.id)

    def base_states(self) -> "torch.Tensor":
        from .compute import base_states

        return base_states(self.model, self.probes, self.spec)

    def teacher_deltas(self, entries: Sequence[Any], adapters: Sequence[Any], progress=None) -> tuple["torch.Tensor", str]:
        """Teacher deltas ``[N, D]`` in ``entries`` order, and where they came from: the cache when
        it holds them all for this base/probes/spec, else computed here (the cache's own function)."""
        import torch

        from .cache import DeltaCache
        from .compute import compute_deltas

        folder = self.cache_folder
        if DeltaCache.exists(folder):
            cache = self.check_cache(DeltaCache.open(folder))
            fresh = all(e.id in cache and cache.entry(e.id).sha256 == a.sha256() for e, a in zip(entries, adapters))
            if fresh:
                return torch.stack([cache.row(e.id).float() for e in entries]), f"cache {folder}"
            log.warning("%s lacks some zoo adapters or holds stale rows; computing teacher deltas in-process", folder)
        task = progress.add("teacher deltas", total=len(adapters)) if progress is not None else None
        d = compute_deltas(self.model, list(adapters), self.probes, self.spec,
                           self.resolved.config.delta.adapters_per_batch,
                           progress=(lambda k: progress.advance(task, k)) if task is not None else None)
        return d, f"computed in-process ({workdir.hint('deltas', None)} to reuse them)"
