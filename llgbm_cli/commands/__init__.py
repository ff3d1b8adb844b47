"""Command modules: each defines ``register(app)`` and stays thin (parse, resolve config, call a
service, render). Discovered automatically, so adding a command touches no shared file. Modules
must not import torch at import time: ``llgbm --help`` stays instant."""

from __future__ import annotations

import importlib
import pkgutil

# Order in `llgbm --help`: the pipeline's order; modules not listed follow alphabetically.
ORDER = ["config", "data", "adapter", "zoo", "cache_deltas", "train", "generate", "index", "retrieve", "merge", "compose", "eval", "ablate"]


def register_all(app) -> None:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_") and m.name != "common"]
    names.sort(key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n))
    for name in names:
        mod = importlib.import_module(f"{__name__}.{name}")
        mod.register(app)
