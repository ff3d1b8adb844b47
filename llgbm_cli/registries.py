"""Config values checked against the registries they name, before anything runs.

Every config load (``load_config``, ``ResolvedConfig.with_overrides``) runs :func:`problems` with the
config's other checks, so a command reports each unknown name with the rest, as ``section.key: …``
with the valid names listed: generators (``train.*.generator`` of each generating trained method, and
its ``generator_options``), index kinds (``index.kind``), merge strategies (``retrieve.merge_strategy``;
``merge.strategy`` is checked by the config model itself) and eval methods (``eval.methods``, by the
eval method registry's own rule). Each registry is imported here only when a config is checked, and
none of them imports torch: a generator's options are read from its source until its module is loaded.
"""

from __future__ import annotations

import difflib
from typing import Any, Callable, Optional

from .errors import InputError
from .training.methods import sections


def _unknown(what: str, name: str, valid: list[str]) -> str:
    guess = difflib.get_close_matches(str(name), valid, n=1)
    return f"unknown {what} {name!r}" + (f" (did you mean {guess[0]!r}?)" if guess else "") + f"; valid: {', '.join(valid)}"


def generator_option_problem(name: str, options: dict[str, Any]) -> Optional[str]:
    """What is wrong with a generator's options (None when they fit its constructor)."""
    from .generators import option_names

    valid = option_names(name)
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


def problems(value: Callable[[str], Any]) -> list[str]:
    """Every registry name of a config that does not resolve, as ``section.key: message``.

    ``value(key)`` is the value of a dotted key (its default where the config leaves it out), or None
    where that value is already refused (a wrong type): the names are checked on the values as given,
    so they are reported beside the config's type errors."""
    from .generators import generator_names
    from .index import KINDS
    from .merging import STRATEGIES

    out: list[str] = []
    for section in sections(generating=True):
        name, options = value(f"train.{section}.generator"), value(f"train.{section}.generator_options")
        if name is None:
            continue
        if name not in generator_names():
            out.append(f"train.{section}.generator: " + _unknown("generator", name, generator_names()))
        elif options:
            problem = generator_option_problem(name, options)
            if problem:
                out.append(f"train.{section}.generator_options: {problem}")
    kind, strategy, methods = value("index.kind"), value("retrieve.merge_strategy"), value("eval.methods")
    if kind is not None and kind not in KINDS:
        out.append("index.kind: " + _unknown("index kind", kind, list(KINDS)))
    if strategy is not None and strategy not in STRATEGIES:
        out.append("retrieve.merge_strategy: " + _unknown("merge strategy", strategy, list(STRATEGIES)))
    out += method_problems(list(methods)) if methods is not None else []
    ablation = value("ablation.methods")
    out += method_problems(list(ablation), "ablation.methods") if ablation is not None else []
    for name, cell in (value("ablation.cells") or {}).items():
        cell_methods = cell.get("methods") if isinstance(cell, dict) else None
        if cell_methods:
            out += method_problems(list(cell_methods), f"ablation.cells.{name}.methods")
    return out


def method_problems(methods: list[str], key: str = "eval.methods") -> list[str]:
    """Every method name in ``methods`` that the eval method registry refuses (``key: name: message``),
    and any named twice."""
    from .services.eval_methods import check_name, valid_methods  # torch-free

    if not methods:
        return [f"{key}: give at least one method; valid: {valid_methods()}"]
    out: list[str] = []
    seen: set[str] = set()
    for m in methods:
        try:
            m = check_name(m, flag=f"{key}:")  # its message is "<flag> <name>: ..."
        except InputError as e:
            out.append(e.message)
            continue
        if m in seen:
            out.append(f"{key}: {m}: given twice")
        seen.add(m)
    return out
