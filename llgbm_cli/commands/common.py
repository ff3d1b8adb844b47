"""Shared rendering for commands: results to stdout (table or JSON), progress and logs to stderr."""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Optional

import typer


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


def console(stderr: bool = False):
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


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


class ProgressReporter:
    """A minimal progress interface services call; renders a rich bar when enabled.

    ``task = rep.add(description, total)``; ``rep.advance(task, n=1)``; ``rep.update(task, description=...)``.
    A disabled reporter accepts the same calls and does nothing.
    """

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self._progress = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

            self._progress = Progress(
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                console=console(stderr=True),
                transient=False,
            )
            self._progress.__enter__()
        return self

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
            self._progress = None

    def add(self, description: str, total: Optional[float] = None) -> int:
        return self._progress.add_task(description, total=total) if self._progress else 0

    def advance(self, task: int, n: float = 1) -> None:
        if self._progress:
            self._progress.advance(task, n)

    def update(self, task: int, **kw) -> None:
        if self._progress:
            self._progress.update(task, **kw)

    def log(self, message: str) -> None:
        if self._progress:
            self._progress.console.print(message)


NULL_PROGRESS = ProgressReporter(enabled=False)


def given(values: dict) -> dict:
    """Keep only the flags the user gave (not None), so they override --set and file values
    without wiping them when absent."""
    return {k: v for k, v in values.items() if v is not None}
