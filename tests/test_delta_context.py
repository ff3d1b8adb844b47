"""The delta context: spec with checked layers, probes, the cache check and teacher deltas."""

from __future__ import annotations

import pytest
import torch

from llgbm_cli.adapters import load_adapter, random_adapter, save_adapter
from llgbm_cli.config import load_config
from llgbm_cli.deltas.compute import compute_deltas
from llgbm_cli.deltas.context import DeltaContext
from llgbm_cli.errors import InputError
from llgbm_cli.services.cache_deltas import run_cache_deltas
from llgbm_cli.tasks.registry import registry_for
from llgbm_cli.zoo_manifest import Zoo, ZooEntry


def test_bad_layers_fail_with_the_valid_range(tiny, tiny_project):
    model, tok = tiny
    resolved = load_config(tiny_project, {"delta.layers": [7]}, explicit=True)
    with pytest.raises(InputError, match="layer"):
        DeltaContext.build(resolved, model, tok, tasks=registry_for(resolved))


def test_teacher_deltas_from_the_cache_or_computed(tiny, tiny_project):
    model, tok = tiny
    zoo_dir = tiny_project.parent / "runs" / "zoo"
    entries = []
    for i in range(3):
        save_adapter(zoo_dir / "adapters" / f"z{i}", random_adapter(model, r=4, alpha=8.0, seed=i, std=0.05))
        entries.append(ZooEntry(id=f"z{i}", path=f"adapters/z{i}", task="boolq"))
    zoo = Zoo(zoo_dir, entries)
    zoo.save()
    resolved = load_config(tiny_project, {"delta.flush_seconds": 0}, explicit=True)
    ctx = DeltaContext.build(resolved, model, tok, tasks=registry_for(resolved))
    adapters = [load_adapter(zoo.path_of(e)) for e in entries]
    # No cache yet: computed here, with the cache's own function.
    d, src = ctx.teacher_deltas(entries, adapters)
    assert src.startswith("computed in-process") and "llgbm cache-deltas" in src
    ref = compute_deltas(model, adapters, ctx.probes, ctx.spec, 4)
    assert torch.equal(d, ref)
    run_cache_deltas(resolved)
    d2, src2 = ctx.teacher_deltas(entries, adapters)
    assert src2.startswith("cache ") and torch.allclose(d2, ref, atol=1e-5)
    # A context with another probe set refuses the cache, naming what differs and the fix.
    other_cfg = load_config(tiny_project, {"probes.count": 2}, explicit=True)
    other = DeltaContext.build(other_cfg, model, tok, tasks=registry_for(other_cfg))
    with pytest.raises(InputError, match=r"the delta cache was built with another probe set .* --rebuild"):
        other.open_cache()
