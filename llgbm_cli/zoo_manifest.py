"""The zoo manifest: a folder of adapters plus ``zoo.jsonl``, one row per adapter.

Row fields: ``id`` (unique), ``path`` (adapter folder, relative to the zoo folder or absolute),
``task``, ``step`` (training step of the checkpoint, or null), ``seed``, ``condition`` (a stored
sample of unlabeled prompts from the task), ``sha256`` (of the weights file), ``source``
(``built`` by `zoo build` or ``added`` by `zoo add`). The manifest is rewritten atomically.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .errors import InputError
from .workdir import made_by
from .io import FileLock, atomic_write_text

MANIFEST = "zoo.jsonl"


@dataclass
class ZooEntry:
    id: str
    path: str
    task: str
    step: Optional[int] = None
    seed: Optional[int] = None
    condition: list[str] = field(default_factory=list)
    sha256: Optional[str] = None
    source: str = "built"

    def folder(self, zoo_dir: Path) -> Path:
        p = Path(self.path)
        return p if p.is_absolute() else (zoo_dir / p)


class Zoo:
    """An in-memory zoo manifest bound to its folder."""

    def __init__(self, folder: str | Path, entries: Optional[Iterable[ZooEntry]] = None):
        self.folder = Path(folder)
        self.entries: list[ZooEntry] = list(entries or [])

    @property
    def manifest_path(self) -> Path:
        return self.folder / MANIFEST

    @classmethod
    def load(cls, folder: str | Path, *, must_exist: bool = True) -> "Zoo":
        folder = Path(folder)
        mf = folder / MANIFEST
        if not mf.exists():
            if must_exist:
                raise InputError(f"{mf}: no zoo manifest; build one with `{made_by('zoo')}` or register adapters "
                                 "with `llgbm zoo add`")
            return cls(folder)
        entries = []
        for n, line in enumerate(mf.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                entries.append(ZooEntry(**{k: row[k] for k in row if k in ZooEntry.__dataclass_fields__}))
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                raise InputError(f"{mf}:{n}: corrupt manifest row ({e}); fix or remove that line")
        ids = [e.id for e in entries]
        dup = {i for i in ids if ids.count(i) > 1}
        if dup:
            raise InputError(f"{mf}: duplicate adapter ids {sorted(dup)}")
        return cls(folder, entries)

    def save(self) -> None:
        text = "".join(json.dumps(asdict(e), ensure_ascii=False) + "\n" for e in self.entries)
        atomic_write_text(self.manifest_path, text)

    def lock(self) -> FileLock:
        return FileLock(self.folder / ".zoo.lock", what="this zoo")

    def get(self, id_: str) -> ZooEntry:
        for e in self.entries:
            if e.id == id_:
                return e
        raise InputError(f"adapter id {id_!r} is not in {self.manifest_path}")

    def upsert(self, entry: ZooEntry) -> None:
        for i, e in enumerate(self.entries):
            if e.id == entry.id:
                self.entries[i] = entry
                return
        self.entries.append(entry)

    def tasks(self) -> list[str]:
        return sorted({e.task for e in self.entries})

    def by_task(self, task: str) -> list[ZooEntry]:
        return [e for e in self.entries if e.task == task]

    def path_of(self, entry: ZooEntry) -> Path:
        return entry.folder(self.folder)
