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
from typing import Any, Iterable, Iterator, Optional

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


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _respect_umask(path: Path, mode: int) -> None:
    """mkstemp/mkdtemp create 0600/0700; give the result the mode a plain open/mkdir would."""
    with contextlib.suppress(OSError):
        os.chmod(path, mode & ~_umask())


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    _mkdir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _respect_umask(Path(tmp), 0o666)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{folder}: is a file, not a folder; choose another output path")
    except PermissionError:
        raise InputError(f"{folder}: permission denied; choose a folder you can write to")


# --------------------------------------------------------------------------- output-folder policy

#: What each kind of output folder holds, so that a folder can be recognised before it is replaced.
OUTPUT_MARKERS: dict[str, tuple[str, ...]] = {
    "adapter": ("adapter_config.json",),
    "zoo": ("zoo.jsonl", "adapters"),
    "delta cache": ("manifest.json",),
    "delta index": ("index.faiss", "index.json"),
    "evaluation": ("results.json",),
    "training run": ("checkpoints", "metrics.jsonl", "final"),
    "delta predictor": ("predictor.json",),
    "cross-validation": ("cv.json",),
}

# The command whose provenance record (llgbm.json, written first) also marks a folder as an output
# of that kind: a build interrupted before its first marker file is written stays resumable.
OUTPUT_COMMANDS: dict[str, str] = {"zoo": "zoo build"}


def _written_by(folder: Path, kind: str) -> bool:
    command = OUTPUT_COMMANDS.get(kind)
    if command is None:
        return False
    try:
        record = read_provenance(folder)
    except (InputError, OSError, UnicodeDecodeError):  # an unreadable record marks nothing
        return False
    return isinstance(record, dict) and record.get("command") == command


def _overlaps(a: Path, b: Path) -> bool:
    return a == b or a in b.parents or b in a.parents


def check_output(
    target: str | Path,
    kind: str,
    *,
    force: bool = False,
    inputs: Iterable[str | Path] = (),
    roots: Iterable[str | Path] = (),
    flag: str = "--out",
    incremental: bool = False,
) -> Path:
    """The output-folder policy every writing command applies before it computes anything.

    Refused with or without ``--force`` (exit 2): an output that is a file; one that is, contains
    or lies inside one of the command's ``inputs``; one that is or contains one of the ``roots``
    (the project's work folder and project folder); an existing, non-empty folder that does not
    hold the marker files of ``kind`` (:data:`OUTPUT_MARKERS`) nor a provenance record of the
    command that writes ``kind`` (:data:`OUTPUT_COMMANDS`), i.e. is not an earlier output of this
    kind. Refused without ``--force``: an existing output of this kind, unless the command
    updates its output in place (``incremental``, e.g. the delta cache). Returns the absolute path.
    """
    raw = Path(target).expanduser()
    out = raw.resolve()
    name = f"{flag} {raw}" if flag else str(raw)
    if out.exists() and not out.is_dir():
        raise InputError(f"{name}: is a file, not a folder; a file is never replaced, choose a folder path")
    for root in roots:
        if root is None:
            continue
        rp = Path(root).expanduser().resolve()
        if out == rp or out in rp.parents:
            raise InputError(f"{name}: is or contains {rp} (the project or its work folder); "
                             "outputs go into their own folder, choose another path")
    for inp in inputs:
        if inp is None:
            continue
        ip = Path(inp).expanduser().resolve()
        if _overlaps(out, ip):
            raise InputError(f"{name}: overlaps the input {ip}; inputs are never overwritten, choose another folder")
    if out.is_dir():
        entries = [p.name for p in out.iterdir()]
        if entries:
            markers = OUTPUT_MARKERS.get(kind, ())
            if markers and not any((out / m).exists() for m in markers) and not _written_by(out, kind):
                shown = ", ".join(sorted(entries)[:5]) + (", ..." if len(entries) > 5 else "")
                raise InputError(
                    f"{name}: holds files that are not a {kind} ({shown}); it is never replaced, even with "
                    "--force: choose another folder, or empty it yourself"
                )
            if not force and not incremental:
                raise InputError(f"{name}: already exists; pass --force to overwrite it")
    return out


@contextlib.contextmanager
def atomic_dir(target: str | Path, *, force: bool = False, flag: str = "--force") -> Iterator[Path]:
    """Yield a temporary folder; on success it replaces ``target`` in one rename.

    Refuses an existing target unless ``force``. On failure or interruption (even during the
    final swap) the temporary folder is removed and the previous ``target`` is back in place.
    """
    target = Path(target)
    if target.exists() and not force:
        raise InputError(f"{target}: already exists; pass {flag} to overwrite it")
    if target.exists() and not target.is_dir():
        raise InputError(f"{target}: is a file, not a folder; a file is never replaced, choose a folder path")
    _mkdir(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except PermissionError:
        raise InputError(f"{target.parent}: permission denied; choose a folder you can write to")
    _respect_umask(tmp, 0o777)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = None
    try:
        if target.exists():
            old = target.parent / f".{target.name}.old-{os.getpid()}"
            os.replace(target, old)
        os.replace(tmp, target)
    except BaseException as e:
        if old is not None and old.exists() and not target.exists():
            os.replace(old, target)
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, PermissionError):
            raise InputError(f"{target}: permission denied; choose a folder you can write to") from e
        raise
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
