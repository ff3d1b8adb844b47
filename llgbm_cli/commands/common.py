"""Shared rendering for commands: results to stdout (table or JSON), progress and logs to stderr."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import typer

from ..progress import NULL_PROGRESS, ProgressReporter, console  # noqa: F401  (re-exported for commands)


def state(ctx: typer.Context):
    return ctx.find_root().obj


def emit(ctx: typer.Context, result: Any, render: Optional[Callable[[Any], None]] = None) -> None:
    """Print a result: one JSON object with --json, else ``render(result)`` (rich, to stdout)."""
    st = state(ctx)
    if st.json:
        payload = result.to_dict() if hasattr(result, "to_dict") else result
        sys.stdout.write(json.dumps(payload, default=_default) + "\n")
        sys.stdout.flush()
        st.emitted = True  # stdout holds its one object: a later failure reports on stderr only
    elif render is not None:
        render(result)


def _default(o: Any) -> Any:
    from pathlib import Path

    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if hasattr(o, "to_dict"):
        return o.to_dict()
    raise TypeError(type(o).__name__)


def info(ctx: typer.Context, message: str) -> None:
    """An informational line on stderr (silent with --quiet or --json)."""
    st = state(ctx)
    if not st.quiet and not st.json:
        console(stderr=True).print(message)


@contextmanager
def progress(ctx: typer.Context) -> Iterator["ProgressReporter"]:
    """A rich progress display on stderr, off with --quiet. Services receive the reporter."""
    st = state(ctx)
    rep = ProgressReporter(enabled=not st.quiet)
    with rep:
        yield rep


# --------------------------------------------------------------------------- options every command shares

SET_HELP = "Override a config key, e.g. --set train.multitask.lambda_delta=0.5 (repeatable)."


def set_option(help: str = SET_HELP):
    """``--set section.key=value`` (repeatable): config overrides, applied over the project file."""
    return typer.Option(None, "--set", help=help)


def force_option(help: str = "Replace what is already at the output instead of refusing."):
    """``--force``: without it a command refuses to overwrite existing output."""
    return typer.Option(False, "--force", help=help)


def out_option(help: str, *, required: bool = False):
    """``--out``/``-o``: where a command writes (``help`` says the default)."""
    return typer.Option(... if required else None, "--out", "-o", help=help)


def overrides_from(sets: Optional[list[str]]) -> dict:
    """``--set`` values as a {dotted key: value} dict."""
    from ..config import parse_override

    return dict(parse_override(s) for s in (sets or []))


def with_flags(overrides: dict, values: dict[str, tuple[str, Any]]) -> tuple[dict, dict[str, str]]:
    """``overrides`` with the flags the user gave on top (``values``: config key -> (flag, value); a
    value of None is a flag not given, so the ``--set`` and file values stay), and the flag behind each
    key they set, for ``load_config(..., flags=...)``: a problem with such a value names the flag the
    user typed (``--steps: ...``), not ``--set train.multitask.total_steps=0``."""
    given = {k: fv for k, fv in values.items() if fv[1] is not None}
    return {**overrides, **{k: v for k, (_, v) in given.items()}}, {k: flag for k, (flag, _) in given.items()}
