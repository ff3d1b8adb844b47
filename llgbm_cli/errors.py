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


def error_object(message: str, hint: str | None, exit_code: int) -> dict:
    """What ``--json`` prints on stdout when a command fails: one object, same text as stderr."""
    return {"error": message, "hint": hint, "exit_code": int(exit_code)}


def as_input_error(e: BaseException) -> "LlgbmError | None":
    """Map an OS-level failure on a user's path to a plain error naming it (exit 2); None otherwise.

    Permission, not-a-folder and is-a-folder errors come from a path the user chose; a byte that
    is not UTF-8 in a text file the user gave is bad input too (the file is named where it is read).
    """
    import errno

    if isinstance(e, OSError) and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOTDIR,
                                              errno.EISDIR, errno.EEXIST, errno.ENOENT):
        where = e.filename if e.filename is not None else "a path"
        what = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EROFS: "read-only file system", errno.ENOTDIR: "a part of this path is a file, not a folder",
                errno.EISDIR: "is a folder, expected a file", errno.EEXIST: "already exists",
                errno.ENOENT: "no such file or folder"}[e.errno]
        return InputError(f"{where}: {what}", hint="check the path and its permissions")
    if isinstance(e, UnicodeDecodeError):
        return InputError(f"a text input is not UTF-8 ({e.reason} at byte {e.start})",
                          hint="give a UTF-8 text file; binary files are not accepted")
    return None
