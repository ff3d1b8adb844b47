"""Config use cases: validate a project file, show the resolved values with their sources."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from ..config import ResolvedConfig, all_keys, load_config


@dataclass
class ShownConfig:
    path: Optional[str]
    values: dict[str, Any]  # dotted key -> value
    sources: dict[str, str]  # dotted key -> default | file | flag

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "values": self.values, "sources": self.sources}


def _dotted(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.endswith("generator_options"):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validate(path: Optional[str], overrides: Optional[dict[str, Any]] = None, explicit: bool = False) -> ResolvedConfig:
    """Load and validate; raises ConfigError listing every problem."""
    return load_config(path, overrides, explicit=explicit)


def show(resolved: ResolvedConfig) -> ShownConfig:
    values = _dotted(resolved.to_dict())
    keys = [k for k in all_keys() if k in values]
    shown_values = {k: values[k] for k in keys}
    sources = {k: resolved.sources.get(k, "default") for k in keys}
    for name, spec in resolved.config.tasks.items():  # the keys each [tasks.NAME] table sets
        for k, v in spec.model_dump(mode="json", exclude_unset=True).items():
            shown_values[f"tasks.{name}.{k}"] = v
            sources[f"tasks.{name}.{k}"] = "file"
    return ShownConfig(path=str(resolved.path) if resolved.path else None, values=shown_values, sources=sources)
