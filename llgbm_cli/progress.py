"""Progress and console output shared by services and commands (no Typer here).

Services receive a :class:`ProgressReporter` (or :data:`NULL_PROGRESS`) and call ``add`` /
``advance`` / ``update`` / ``log``; they never print. Commands decide whether the reporter renders
(``--quiet``) and where results go. Everything here writes to stderr except ``console()``'s default.
"""

from __future__ import annotations

from typing import Optional


def console(stderr: bool = False):
    """A rich console (stdout by default), without highlighting and with soft wrapping."""
    from rich.console import Console

    return Console(stderr=stderr, highlight=False, soft_wrap=True)


class ProgressReporter:
    """A minimal progress interface services call; renders a rich bar on stderr when enabled.

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
