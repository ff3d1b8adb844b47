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


# Constructor parameters that are not options: the token layout and the condition width come from the run.
_NOT_OPTIONS = ("self", "tokenizer", "cond_dim")


def option_names(name: str) -> list[str]:
    """The keyword options of generator ``name`` (its constructor's parameters, less the token layout
    and the condition width). A built-in whose module is not imported yet is read from its source, so
    a config is checked without importing torch."""
    import inspect

    if name not in _REGISTRY and name in _BUILTIN:
        params = _source_params(*_BUILTIN[name].split(":"))
        if params is not None:
            return [p for p in params if p not in _NOT_OPTIONS]
    params = inspect.signature(get_generator_class(name).__init__).parameters
    return [p for p in params if p not in _NOT_OPTIONS]


def _source_params(module: str, cls: str) -> list[str] | None:
    """The parameter names of ``cls.__init__`` as written in ``module``'s source; None when it is not
    written there plainly (inherited, or taking ``*args``/``**kwargs``)."""
    import ast
    import importlib.util
    from pathlib import Path

    spec = importlib.util.find_spec(module)
    if spec is None or not spec.origin:
        return None
    try:
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
    except (OSError, SyntaxError, UnicodeDecodeError):  # no source to read: the caller imports it instead
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == cls:
            for item in node.body:
                if isinstance(item, ast.FunctionDef) and item.name == "__init__":
                    a = item.args
                    if a.vararg or a.kwarg:
                        return None
                    return [x.arg for x in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
    return None


def build_generator(name: str, tokenizer, cond_dim: int, options: dict[str, Any] | None = None):
    """Instantiate generator ``name`` for a token layout and a condition width.

    ``options`` are the generator's keyword arguments (``train.multitask.generator_options``);
    an unknown option names the valid ones.
    """
    import inspect

    cls = get_generator_class(name)
    options = dict(options or {})
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in _NOT_OPTIONS]
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
