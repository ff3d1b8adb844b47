"""Exceptions that the CLI turns into one plain line and an exit code.

Exit codes are part of the shell contract: 0 ok, 1 ran but a check failed, 2 bad input.
"""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2


class LlgbmError(Exception):
    """An error the user can act on. Printed as one line, never as a traceback (unless -v)."""

    exit_code = EXIT_USAGE

    def __init__(self, message: str, *, hint: str | None = None, exit_code: int | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        if exit_code is not None:
            self.exit_code = exit_code


class ConfigError(LlgbmError):
    """The project file or a flag is invalid. Carries every problem found, one per line."""

    def __init__(self, problems: list[str], *, source: str | None = None):
        self.problems = list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        if len(self.problems) == 1:
            msg = head + self.problems[0]
        else:
            msg = head + f"{len(self.problems)} problems:\n" + "\n".join(f"  {p}" for p in self.problems)
        super().__init__(msg)


class InputError(LlgbmError):
    """A file, folder or argument given to a command is missing, corrupt or does not fit."""


class CheckFailed(LlgbmError):
    """The command ran, but a check it was asked to enforce failed (exit 1)."""

    exit_code = EXIT_FAILED
