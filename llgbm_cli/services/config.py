"""Config use cases: validate a project file, show the resolved values with their sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from ..config import ResolvedConfig, all_keys, load_config


@dataclass
class ShownConfig:
    path: Optional[str]
    values: dict[str, Any]  # dotted key -> value
    sources: dict[str, str]  # dotted key -> default | file | flag
    holdout: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {tasks, means}
    holdout_notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "values": self.values, "sources": self.sources, "holdout": self.holdout,
                "holdout_notes": self.holdout_notes}


def _dotted(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.endswith("generator_options"):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validate(path: Optional[str], overrides: Optional[dict[str, Any]] = None, explicit: bool = False) -> ResolvedConfig:
    """Load and validate, names included: every generator, index kind, merge strategy and eval method
    the config names must be registered. Raises ConfigError listing every problem."""
    from ..errors import ConfigError, InputError
    from ..registries import problems
    from .eval_methods import check_methods

    resolved = load_config(path, overrides, explicit=explicit)
    found = problems(resolved.config)
    try:
        check_methods(list(resolved.config.eval.methods), flag="eval.methods")
    except InputError as e:
        found.append(e.message)
    if found:
        raise ConfigError(found, source=str(resolved.path) if resolved.path else None)
    return resolved


def show(resolved: ResolvedConfig) -> ShownConfig:
    """The resolved values with their sources, and which tasks are held out where."""
    from ..holdout import disagreements, where_held_out

    values = _dotted(resolved.to_dict())
    keys = [k for k in all_keys() if k in values]
    return ShownConfig(
        path=str(resolved.path) if resolved.path else None,
        values={k: values[k] for k in keys},
        sources={k: resolved.sources.get(k, "default") for k in keys},
        holdout=where_held_out(resolved.config),
        holdout_notes=disagreements(resolved.config),
    )
