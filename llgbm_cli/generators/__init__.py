"""LoRA generators, by name.

A generator maps a condition (sentence embeddings of a task's prompts, or of its description) to
LoRA factors for every target module of the base model. Each is an ``nn.Module`` subclass of
:class:`~llgbm_cli.generators.base.LoraGenerator` registered with :func:`register`; all return a
:class:`~llgbm_cli.generators.base.GeneratedLora` (``{module: (A [n, r, in], B [n, out, r])}``), so
the delta path and the losses do not care which one ran.

Built-in: ``hyperconv`` (a hyper-convolutional decoder over the 2-D token grid; Drag-and-Drop
LLMs' blocks in its ``small`` and ``paper`` presets) and ``hypernet`` (condition + learned layer and
module embeddings -> A, B; Text-to-LoRA's blocks in ``small`` and ``paper``). docs/concepts.md
lists, per generator, where each preset follows its reference and where it departs.
The B2 delta predictor lives beside them in ``predictor.py``.
"""

from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable

from ..errors import InputError

# name -> "module:Class", imported on first use so listing names stays torch-free.
_BUILTIN = {
    "hyperconv": "llgbm_cli.generators.hyperconv:HyperConvGenerator",
    "hypernet": "llgbm_cli.generators.hypernet:HyperNetGenerator",
}
_REGISTRY: dict[str, Any] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator: make a generator class available under ``name``."""

    def deco(cls: type) -> type:
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def generator_names() -> list[str]:
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_generator_class(name: str):
    """The class registered as ``name``; an unknown name lists the valid ones."""
    if name not in _REGISTRY:
        if name not in _BUILTIN:
            guess = difflib.get_close_matches(name, generator_names(), n=1)
            raise InputError(
                f"unknown generator {name!r}" + (f" (did you mean {guess[0]!r}?)" if guess else "")
                + f"; valid generators: {', '.join(generator_names())}"
            )
        mod, cls = _BUILTIN[name].split(":")
        importlib.import_module(mod)
    return _REGISTRY[name]


def build_generator(name: str, tokenizer, cond_dim: int, options: dict[str, Any] | None = None):
    """Instantiate generator ``name`` for a token layout and a condition width.

    ``options`` are the generator's keyword arguments (``train.multitask.generator_options``);
    an unknown option names the valid ones.
    """
    import inspect

    cls = get_generator_class(name)
    options = dict(options or {})
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "tokenizer", "cond_dim")]
    bad = [k for k in options if k not in valid]
    if bad:
        raise InputError(
            f"train.multitask.generator_options: unknown option(s) {', '.join(bad)} for generator {name!r}; "
            f"valid: {', '.join(valid)}"
        )
    for k, v in options.items():  # sizes and counts (integer defaults) must be positive integers
        default = params[k].default
        if v is None and default is None:
            continue
        key = f"train.multitask.generator_options.{k}"
        if (isinstance(default, int) and not isinstance(default, bool)) or k == "kernel":
            low = 0 if default == 0 else 1  # a count whose default is 0 may stay 0
            if isinstance(v, bool) or not isinstance(v, int) or v < low:
                raise InputError(f"{key}: must be an integer of at least {low} (got {v!r})")
            if k == "kernel" and v % 2 == 0:
                raise InputError(f"{key}: must be odd (got {v})")
        elif isinstance(default, float):
            import math

            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise InputError(f"{key}: must be a finite number (got {v!r})")
            if k == "dropout" and not 0 <= v < 1:
                raise InputError(f"{key}: must be in [0, 1) (got {v})")
    return cls(tokenizer=tokenizer, cond_dim=cond_dim, **options)
