"""Config values checked against the registries they name, before anything runs.

``llgbm config validate`` (and every command's config load through it) reports each unknown name
as ``section.key: …`` with the valid names listed: generators (``train.*.generator`` and their
``generator_options``), index kinds (``index.kind``), merge strategies (``retrieve.merge_strategy``;
``merge.strategy`` is checked by the config model itself); eval methods (``eval.methods``) are
checked by the eval method registry, which ``config validate`` asks too.
"""

from __future__ import annotations

import difflib
from typing import Any, Optional

from .errors import InputError
from .training.methods import sections


def _unknown(what: str, name: str, valid: list[str]) -> str:
    guess = difflib.get_close_matches(str(name), valid, n=1)
    return f"unknown {what} {name!r}" + (f" (did you mean {guess[0]!r}?)" if guess else "") + f"; valid: {', '.join(valid)}"


def generator_option_problem(name: str, options: dict[str, Any]) -> Optional[str]:
    """What is wrong with a generator's options (None when they fit its constructor)."""
    import inspect

    from .generators import get_generator_class

    cls = get_generator_class(name)
    params = inspect.signature(cls.__init__).parameters
    valid = [p for p in params if p not in ("self", "tokenizer", "cond_dim")]
    bad = [k for k in options if k not in valid]
    if bad:
        return f"unknown option(s) {', '.join(bad)} for generator {name!r}; valid: {', '.join(valid)}"
    return None


def check_generator(section: str, name: str, options: dict[str, Any]) -> None:
    """Raise naming ``train.<section>.generator`` / ``generator_options`` when either does not fit."""
    from .generators import generator_names

    if name not in generator_names():
        raise InputError(f"train.{section}.generator: " + _unknown("generator", name, generator_names()))
    problem = generator_option_problem(name, options)
    if problem:
        raise InputError(f"train.{section}.generator_options: {problem}")


def problems(config) -> list[str]:
    """Every registry name in ``config`` that does not resolve, as ``section.key: message``."""
    from .generators import generator_names
    from .index import KINDS
    from .merging import STRATEGIES

    out: list[str] = []
    for section in sections(generating=True):
        sec = getattr(config.train, section)
        if sec.generator not in generator_names():
            out.append(f"train.{section}.generator: " + _unknown("generator", sec.generator, generator_names()))
        elif sec.generator_options:
            problem = generator_option_problem(sec.generator, sec.generator_options)
            if problem:
                out.append(f"train.{section}.generator_options: {problem}")
    if config.index.kind not in KINDS:
        out.append("index.kind: " + _unknown("index kind", config.index.kind, list(KINDS)))
    if config.retrieve.merge_strategy not in STRATEGIES:
        out.append("retrieve.merge_strategy: " + _unknown("merge strategy", config.retrieve.merge_strategy,
                                                          list(STRATEGIES)))
    return out
