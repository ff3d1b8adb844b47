"""Probes, delta computation and the delta cache (torch is imported only when used)."""

from .cache import DeltaCache
from .compute import DeltaSpec, base_states, compute_deltas, delta_for_stacked, pooled_states
from .probes import ProbeSet, list_probe_sets, load_probes

__all__ = [
    "DeltaCache", "DeltaSpec", "ProbeSet", "base_states", "compute_deltas", "delta_for_stacked",
    "list_probe_sets", "load_probes", "pooled_states",
]
