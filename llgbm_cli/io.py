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
from .training.methods import TRAINED

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


# --------------------------------------------------------------------------- set-aside and temporary names
#
# A write in progress lives beside its target as ``.<name>.<pid>.<random>.tmp``; a folder being
# replaced is set aside as ``.<name>.old-<pid>``. A process killed outright (SIGKILL, power loss)
# cannot clean up, so the next writer of the same target does: the pid in the name tells a dead
# writer's leftovers from a live one's.


def temp_prefix(target: Path) -> str:
    return f".{target.name}.{os.getpid()}."


def set_aside_name(target: Path, pid: Optional[int] = None) -> Path:
    return target.parent / f".{target.name}.old-{os.getpid() if pid is None else pid}"


def pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _leftovers(target: Path) -> tuple[list[Path], list[Path]]:
    """(temporary entries, set-aside folders) of ``target`` left by writers that are no longer running."""
    import re

    parent = target.parent
    if not parent.is_dir():
        return [], []
    esc = re.escape(target.name)
    tmp_re = re.compile(rf"\.{esc}\.(\d+)\.[^/]*\.tmp")
    old_re = re.compile(rf"\.{esc}\.old-(\d+)")
    temps, olds = [], []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return [], []
    for p in entries:
        m = tmp_re.fullmatch(p.name)
        if m and not pid_alive(int(m.group(1))):
            temps.append(p)
            continue
        m = old_re.fullmatch(p.name)
        if m and not pid_alive(int(m.group(1))):
            olds.append(p)
    return temps, sorted(olds, key=lambda p: p.name)


def recover_leftovers(target: str | Path, finished=None) -> list[str]:
    """Clean up after writers of ``target`` that were killed; returns what was done, one line each.

    Their temporary files and folders go. A folder one of them set aside comes back when ``target``
    is not a finished output (``finished(target)``; default: it exists), replacing the unfinished
    one; when ``target`` is finished, the set-aside folder (whose removal the killed writer did not
    reach) goes. Of several set-aside folders (a writer killed more than once), a finished one is put
    back and unfinished ones go; any other finished one is left where it is and named."""
    target = Path(target)
    finished = finished or (lambda p: p.exists())
    temps, olds = _leftovers(target)
    done = []
    for p in temps:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
        done.append(f"removed {p.name}, left by a killed writer")
    if not olds:
        return done
    if finished(target):
        back = None
    else:
        done_olds = [o for o in olds if finished(o)]
        back = done_olds[0] if done_olds else olds[-1]
    for old in olds:
        if old is back:
            if target.exists():
                shutil.rmtree(target, ignore_errors=True)
            os.replace(old, target)
            done.append(f"restored from {old.name}: the run replacing it was killed before it finished")
        elif finished(old) and back is not None:
            done.append(f"another earlier output is kept at {old} (set aside by a killed writer); move it back "
                        "yourself if you want it")
        else:
            shutil.rmtree(old, ignore_errors=True)
            done.append(f"removed {old.name}: set aside by a killed writer, and not needed")
    return done


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    _mkdir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), suffix=".tmp", dir=path.parent)
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


def save_safetensors(tensors: dict, path: str | Path, metadata: Optional[dict[str, str]] = None) -> None:
    """``safetensors.torch.save_file`` with the mode a plain open gives (the library creates 0600)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    _respect_umask(Path(path), 0o666)


def respect_umask_tree(folder: str | Path) -> None:
    """Give every file under ``folder`` the mode a plain open would (for folders written by libraries
    that create their files 0600, e.g. transformers' safetensors shards)."""
    for dirpath, _, filenames in os.walk(folder):
        for f in filenames:
            _respect_umask(Path(dirpath) / f, 0o666)


def _mkdir(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise InputError(f"{folder}: is a file, not a folder; choose another output path")
    except PermissionError:
        raise InputError(f"{folder}: permission denied; choose a folder you can write to")



def fingerprint(obj: Any) -> str:
    """A short hash of a JSON-able object (keys sorted): what a run, fold or cached score depends on."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]

# --------------------------------------------------------------------------- output-folder policy

#: What each kind of output folder holds, so that a folder can be recognised before it is replaced.
OUTPUT_MARKERS: dict[str, tuple[str, ...]] = {
    "adapter": ("adapter_config.json",),
    "zoo": ("zoo.jsonl", "adapters"),
    "delta cache": ("manifest.json",),
    "delta index": ("index.faiss", "index.json"),
    "evaluation": ("results.json",),
    "cross-validation": ("cv.json",),
}  # and each trained method's run kind (llgbm_cli.training.methods): output_markers()

# The commands whose provenance record (llgbm.json, written first) marks a folder as an output of
# that kind: a build interrupted before its first marker file is written stays resumable, and a
# folder that another command wrote is never taken for this kind, whatever files the two share
# (a B2 predictor's metrics.jsonl does not make it a training run). Kinds not listed here are
# recognised by their marker files alone.
OUTPUT_COMMANDS: dict[str, tuple[str, ...]] = {
    "zoo": ("zoo build",),
    "delta cache": ("cache-deltas",),
    "delta index": ("index build",),
    "evaluation": ("eval", "eval --folds"),
    "cross-validation": ("eval --folds", "eval"),
}  # and each trained method's run kind: output_commands()


def output_markers() -> dict[str, tuple[str, ...]]:
    """:data:`OUTPUT_MARKERS` and the run kind of every trained method."""
    return {**OUTPUT_MARKERS, **{m.kind: m.markers for m in TRAINED.values()}}


def output_commands() -> dict[str, tuple[str, ...]]:
    """:data:`OUTPUT_COMMANDS` and the command of every trained method's run kind."""
    return {**OUTPUT_COMMANDS, **{m.kind: (m.provenance_command,) for m in TRAINED.values()}}


def _record_command(folder: Path) -> Optional[str]:
    """The command of ``folder``'s provenance record; None when there is none or it is unreadable."""
    try:
        record = read_provenance(folder)
    except (InputError, OSError, UnicodeDecodeError):  # an unreadable record marks nothing
        return None
    command = record.get("command") if isinstance(record, dict) else None
    return command if isinstance(command, str) else None


def _written_by(folder: Path, kind: str) -> bool:
    return _record_command(folder) in output_commands().get(kind, ())


def _kind_of_command(command: str) -> str:
    kinds = [k for k, cmds in output_commands().items() if cmds and cmds[0] == command]
    return f"a {kinds[0]}" if kinds else "an output"


def _foreign(folder: Path, kind: str) -> Optional[str]:
    """Why ``folder`` (non-empty) is an output of another kind than ``kind``, or None."""
    commands = output_commands()
    own = commands.get(kind)
    if own is None:
        return None
    command = _record_command(folder)
    if command is not None and command not in own and any(command in c for c in commands.values()):
        return f"is {_kind_of_command(command)} (written by `llgbm {command}`), not a {kind}"
    return None


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
    kind; a folder whose provenance record names the command of another kind. Refused without ``--force``: an existing output of this kind, unless the command
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
            foreign = _foreign(out, kind)
            if foreign is not None:
                raise InputError(f"{name}: {foreign}; it is never replaced, even with --force: choose another "
                                 "folder, or remove it yourself")
            markers = output_markers().get(kind, ())
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
    final swap) the temporary folder is removed and the previous ``target`` is back in place; what a
    writer killed outright left (its temporary folder, a set-aside ``target``) is cleaned up, or put
    back, by the next call for the same target (:func:`recover_leftovers`).
    """
    target = Path(target)
    recover_leftovers(target)  # what a killed earlier writer of this target left
    if target.exists() and not force:
        raise InputError(f"{target}: already exists; pass {flag} to overwrite it")
    if target.exists() and not target.is_dir():
        raise InputError(f"{target}: is a file, not a folder; a file is never replaced, choose a folder path")
    _mkdir(target.parent)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=temp_prefix(target), suffix=".tmp", dir=target.parent))
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
            old = set_aside_name(target)
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

    A second writer fails at once with a clear message instead of waiting or corrupting. The lock
    file is removed on release (while still locked), and a lock taken on a file that was removed
    meanwhile is taken again on the new one, so that no lock file is left behind and two writers
    never both hold one.
    """

    def __init__(self, path: str | Path, what: str = "this folder"):
        self.path = Path(path)
        self.what = what
        self._fh = None

    def __enter__(self) -> "FileLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fh = open(self.path, "a+")
            try:
                if sys.platform == "win32":  # pragma: no cover
                    import msvcrt

                    msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
                else:
                    import fcntl

                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.close()
                raise LlgbmError(
                    f"{self.path}: another llgbm process is writing {self.what}; wait for it to finish "
                    f"(or remove the lock file if no such process exists)",
                    exit_code=1,
                )
            if sys.platform == "win32" or _same_file(fh, self.path):  # pragma: no branch
                break
            fh.close()  # its holder removed it on release: lock the file that is there now
        self._fh = fh
        self._fh.seek(0)
        self._fh.truncate()
        self._fh.write(str(os.getpid()))
        self._fh.flush()
        return self

    def __exit__(self, *exc) -> None:
        if self._fh is not None:
            if sys.platform != "win32":
                import fcntl

                with contextlib.suppress(OSError):
                    if _same_file(self._fh, self.path):
                        self.path.unlink()
                fcntl.flock(self._fh.fileno(), fcntl.LOCK_UN)
            self._fh.close()
            self._fh = None


def output_lock(out: str | Path, what: str) -> FileLock:
    """The lock of an output folder: ``.<name>.lock`` beside it, held by the one command writing it."""
    out = Path(out)
    return FileLock(out.parent / f".{out.name}.lock", what=what)


def _same_file(fh, path: Path) -> bool:
    try:
        a, b = os.fstat(fh.fileno()), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


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
