"""Names that become file or folder names: task names, adapter ids, cell and method names.

A name is checked once where it enters (the project file, a flag, ``zoo add``) against
:data:`NAME_PATTERN`, so that it can never be a path of its own (``../x``, ``a/b``, ``.hidden``);
every path built from a name is also checked to stay inside its parent (:func:`child`), so that
a name read from a file llgbm did not check (an edited manifest) cannot lead a write elsewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import InputError

#: Letters, digits and ``_ . - + = , : @``; starting with a letter or a digit; at most 128 characters.
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+=,:@-]{0,127}")
NAME_RULE = ("letters, digits and _ . - + = , : @, starting with a letter or a digit, at most 128 characters "
             "(never a path)")


def is_safe_name(name: object) -> bool:
    return isinstance(name, str) and NAME_PATTERN.fullmatch(name) is not None


def check_name(name: object, what: str, *, hint: str | None = None) -> str:
    """``name`` if it is a safe name, else one InputError: ``{what}: {name!r} is not a valid name ...``."""
    if is_safe_name(name):
        return name  # type: ignore[return-value]
    raise InputError(f"{what}: {name!r} is not a valid name; use {NAME_RULE}", hint=hint)


def child(parent: str | Path, *parts: str, what: str = "name") -> Path:
    """``parent / part / ...``, refused (InputError) unless it lies strictly inside ``parent``.

    Symbolic links already on disk are followed on both sides, so a name cannot escape through
    ``..``, an absolute part or a link."""
    parent = Path(parent)
    path = parent.joinpath(*parts)
    root = parent.resolve()
    target = path.resolve()
    if target == root or root not in target.parents:
        shown = "/".join(str(p) for p in parts)
        raise InputError(f"{what} {shown!r}: leads outside {parent} ({target}); names never leave their folder")
    return path
