"""Atomic file and folder writes, file locks, hashing and provenance.

Nothing already on disk is lost: files and folders are written beside their target under a
temporary name and renamed into place; an existing target is replaced only with ``force``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator, Optional

from .errors import InputError, LlgbmError

PROVENANCE_FILE = "llgbm.json"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(chunk)
            if not b:
                break
            h.update(b)
    return h.hexdigest()


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, force: bool = False, flag: str = "--force") -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``target`` in one rename.

    Refuses an existing target unless ``force``. On failure the temporary folder is removed and
    the target is untouched.
    """
    target = Path(target)
    if target.exists() and not force:
        raise InputError(f"{target}: already exists; pass {flag} to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    if target.exists():
        old = target.parent / f".{target.name}.old-{os.getpid()}"
        os.replace(target, old)
    os.replace(tmp, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class FileLock:
    """An exclusive, non-blocking lock on ``path`` (fcntl on POSIX).

    A second writer fails at once with a clear message instead of waiting or corrupting.
    """

    def __init__(self, path: str | Path, what: str = "this folder"):
        self.path = Path(path)
        self.what = what
        self._fh = None

    def __enter__(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = open(self.path, "a+")
        try:
            if sys.platform == "win32":  # pragma: no cover
                import msvcrt

                msvcrt.locking(self._fh.fileno(), msvcrt.LK_NBLCK, 1)
            else:
                import fcntl

                fcntl.flock(self._fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._fh.close()
            self._fh = None
            raise LlgbmError(
                f"{self.path}: another llgbm process is writing {self.what}; wait for it to finish "
                f"(or remove the lock file if no such process exists)",
                exit_code=1,
            )
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            if sys.platform != "win32":
                import fcntl

                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def provenance(command: str, config: Optional[dict] = None, **extra: Any) -> dict[str, Any]:
    """The record written beside every output: what made it, with which config."""
    from . import __version__

    rec: dict[str, Any] = {
        "llgbm_version": __version__,
        "command": command,
        "argv": sys.argv[1:] if sys.argv and "pytest" not in sys.argv[0] else [],
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    if config is not None:
        rec["config"] = config
    rec.update(extra)
    return rec


def write_provenance(folder: str | Path, record: dict[str, Any]) -> Path:
    p = Path(folder) / PROVENANCE_FILE
    atomic_write_json(p, record)
    return p


def read_provenance(folder: str | Path) -> Optional[dict[str, Any]]:
    p = Path(folder) / PROVENANCE_FILE
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        raise InputError(f"{p}: corrupt provenance file (not JSON); remove it or rebuild the output")
