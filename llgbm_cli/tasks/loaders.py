"""Reading a task's data: local files and folders, ``save_to_disk`` folders, hub datasets.

``.json`` (a list of objects, or an object of split name -> list), ``.jsonl`` and ``.csv`` are read
directly, each row remembering its file and line for error messages. ``.parquet`` files,
``save_to_disk`` folders and hub ids go through the Hugging Face ``datasets`` library, which caches
and memory-maps. A folder of ``<split>.<ext>`` files gives one split per file. Data with a single
split is split into train and test with a seeded, recorded shuffle.

Every row becomes a record through the task's format (:mod:`llgbm_cli.tasks.formats`); a row that
cannot is a one-line error naming the file, the line or row and the field, unless the task sets
``skip_bad`` (then it is counted and reported). ``collect=True`` (``llgbm data check``) gathers every
bad row instead of stopping at the first.

Every function here takes the task as a :class:`~llgbm_cli.tasks.registry.Task` (its name, spec,
root and resolved format and kind); the registry calls :func:`load_task_records` and keeps what it
returns, so this module never imports the registry.
"""

from __future__ import annotations

import csv
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..errors import InputError
from .formats import RecordError, format_number, parse_llm_adapters_mc, render, template_fields

log = logging.getLogger(__name__)

FILE_EXTS = (".json", ".jsonl", ".csv", ".parquet")
PACK_PREFIX = "pack:"  # a task path naming a dataset of the shipped pack: pack:<name>
Rows = list[tuple[str, Any]]  # (where, row)


@dataclass
class SplitInfo:
    """How the train/test records were obtained (shown by `data show`, recorded in provenance)."""

    sizes: dict[str, int]
    note: Optional[str] = None
    skipped: list[str] = field(default_factory=list)  # "where: field: reason" of each skipped record


# --------------------------------------------------------------------------- sources


def _read_file(path: Path, key: str) -> dict[str, Rows]:
    ext = path.suffix.lower()
    if ext == ".jsonl":
        rows: Rows = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rows.append((f"{path}:{n}", json.loads(line)))
                except json.JSONDecodeError as e:
                    raise InputError(f"{path}:{n}: not JSON ({e.msg}); one JSON object per line")
        return {"": rows}
    if ext == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise InputError(f"{path}: not JSON ({e.msg} at line {e.lineno})")
        if isinstance(data, dict) and data and all(isinstance(v, list) for v in data.values()):
            return {k: [(f"{path}: {k} record {i + 1}", r) for i, r in enumerate(v)] for k, v in data.items()}
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON list of records (or an object of split name -> list)")
        return {"": [(f"{path}: record {i + 1}", r) for i, r in enumerate(data)]}
    if ext == ".csv":
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows = []
            for row in reader:
                rows.append((f"{path}:{reader.line_num}", dict(row)))
        return {"": rows}
    if ext == ".parquet":
        ds = _datasets(key).Dataset.from_parquet(str(path))
        return {"": [(f"{path}: row {i + 1}", r) for i, r in enumerate(ds)]}
    raise InputError(f"{key}: {path}: unsupported file type {ext!r}; use one of {', '.join(FILE_EXTS)}")


def _datasets(key: str):
    try:
        import datasets
    except ImportError:  # pragma: no cover - a declared dependency
        raise InputError(f"{key}: reading this source needs the `datasets` package; pip install datasets")
    datasets.logging.set_verbosity_error()
    datasets.disable_progress_bars()
    return datasets


def _from_dataset(obj, label: str) -> dict[str, Rows]:
    if type(obj).__name__ in ("DatasetDict", "IterableDatasetDict"):
        return {s: [(f"{label} [{s}] row {i + 1}", r) for i, r in enumerate(obj[s])] for s in obj.keys()}
    return {"": [(f"{label} row {i + 1}", r) for i, r in enumerate(obj)]}


def read_source(task) -> dict[str, Rows]:
    """Rows per split name (``""`` for data that comes without split names)."""
    spec = task.spec
    key = f"tasks.{task.name}.path"
    raw = spec.path or ""
    path = Path(raw).expanduser()
    if not path.is_absolute():
        path = (task.root / path)
    if path.is_file():
        return _read_file(path, key)
    if path.is_dir():
        if (path / "dataset_dict.json").exists() or (path / "state.json").exists():
            ds = _datasets(key)
            try:
                obj = ds.load_from_disk(str(path))
            except Exception as e:  # noqa: BLE001 - a corrupt folder is the user's to fix
                raise InputError(f"{key}: {path}: not a readable `save_to_disk` folder ({_first_line(e)})")
            return _from_dataset(obj, str(path))
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FILE_EXTS and p.is_file())
        if not files:
            raise InputError(f"{key}: {path}: no {'/'.join(FILE_EXTS)} files and not a `save_to_disk` folder")
        out: dict[str, Rows] = {}
        for f in files:
            split = f.stem
            if split in out:
                raise InputError(f"{key}: {path}: two files for split {split!r}; keep one")
            out[split] = _read_file(f, key)[""] if f.suffix.lower() != ".json" else _flat(_read_file(f, key), split)
        return out
    looks_local = raw.startswith((".", "/", "~")) or path.suffix.lower() in FILE_EXTS or raw.count("/") > 1
    if looks_local or not raw:
        raise InputError(f"{key}: {path}: file not found")
    ds = _datasets(key)
    try:
        obj = ds.load_dataset(raw, spec.dataset_name)
    except Exception as e:  # noqa: BLE001 - offline, unknown id, missing config: all one line
        raise InputError(f"{key}: cannot load hub dataset {raw!r}"
                         + (f" (config {spec.dataset_name!r})" if spec.dataset_name else "")
                         + f": {_first_line(e)}; check the id, or where the hub is reachable save it with "
                         "`save_to_disk` and point path at that folder")
    return _from_dataset(obj, raw)


def _flat(splits: dict[str, Rows], split: str) -> Rows:
    if list(splits) == [""]:
        return splits[""]
    raise InputError(f"a split file must hold one list of records ({split})")


def _first_line(e: BaseException) -> str:
    s = str(e).strip().splitlines()
    return s[0][:200] if s else type(e).__name__


# --------------------------------------------------------------------------- records


def _instruction(stem: str, choices: list[str], labels: list[str]) -> str:
    """The LLM-Adapters instruction for label scoring, built from a question and its options."""
    opts = " ".join(f"{l[:1].upper()}{l[1:]}: {c}" for l, c in zip(labels, choices))
    return (f"Please choose the correct answer to the question: {stem}\n\n{opts}\n\n"
            f"Answer format: {'/'.join(labels)}")


def _as_list(v: Any, field: str) -> list[str]:
    if isinstance(v, str):
        try:
            j = json.loads(v)  # a CSV cell may hold a JSON list
        except json.JSONDecodeError:
            j = None
        if isinstance(j, list):
            v = j
        else:
            raise RecordError(field, f"`{field}` must name a list of texts or be a list of templates")
    if not isinstance(v, (list, tuple)):
        raise RecordError(field, f"`{field}` must name a list of texts (got {type(v).__name__})")
    return [str(x) for x in v]


def _resolve_answer(v: Any, choices: list[str], labels: Optional[list[str]]) -> int:
    if v is None or (isinstance(v, str) and not v.strip()):
        raise RecordError("answer", "the record has no answer")
    s = str(v).strip()
    if labels and s in labels:
        return labels.index(s)
    if s in choices:
        return choices.index(s)
    if isinstance(v, int) or s.isdigit():
        i = int(s)
        if 0 <= i < len(choices):
            return i
        raise RecordError("answer", f"answer index {i} is out of range for {len(choices)} choices (0-based)")
    if len(s) == 1 and s.isalpha() and s.upper() == s and ord(s) - 65 < len(choices):
        return ord(s) - 65
    raise RecordError("answer", f"answer {s!r} is not among the choices" + (f" or labels {labels}" if labels else ""))


def make_record(task, row: Any, split: str, idx: int):
    """One raw row -> MCRecord (multiple-choice or generative); raises RecordError."""
    from ..data import MCRecord

    if not isinstance(row, dict):
        raise RecordError("record", f"expected an object with named fields, got {type(row).__name__}")
    spec, fmt, name = task.spec, task.format, task.name
    rid = f"{name}-{split}-{row.get('id', idx)}"
    if fmt in ("llm-adapters", "alpaca"):
        instr = row.get("instruction")
        if not isinstance(instr, str) or not instr.strip():
            raise RecordError("instruction", "missing or empty")
        inp = row.get("input") or ""
        if task.kind == "multiple_choice":
            if fmt == "alpaca":
                raise RecordError("format", "`alpaca` records are generative; set kind = \"generate\"")
            p = parse_llm_adapters_mc(instr, row.get("answer"))
            return MCRecord(rid, name, split, p["instruction"], tuple(p["labels"]), p["answer"], tuple(p["choices"]),
                            stem=p["stem"])
        prompt = instr.strip() + (f"\n\n{inp.strip()}" if str(inp).strip() else "")
        gold = row.get("answer") if fmt == "llm-adapters" else row.get("output")
        if gold is None or not str(gold).strip():
            raise RecordError("answer" if fmt == "llm-adapters" else "output", "the record has no answer")
        completion = row.get("output") if isinstance(row.get("output"), str) and row["output"].strip() else str(gold)
        return MCRecord(rid, name, split, prompt, (), -1, stem=prompt, completion=completion.strip(),
                        gold=format_number(gold) if not isinstance(gold, str) else gold.strip())
    # fields
    stem = render(spec.prompt or "", row, "prompt")
    stem = str(stem).strip()
    if not stem:
        raise RecordError("prompt", "the question is empty")
    if task.kind == "multiple_choice":
        if spec.choices is None:
            raise RecordError("choices", "no `choices` template for a multiple-choice task")
        choices = ([str(render(t, row, "choices")).strip() for t in spec.choices] if isinstance(spec.choices, list)
                   else [c.strip() for c in _as_list(render(spec.choices, row, "choices"), "choices")])
        if len(choices) < 2 or any(not c for c in choices):
            raise RecordError("choices", f"need at least two non-empty choices (got {choices})")
        labels = None
        if spec.labels is not None:
            labels = ([str(render(t, row, "labels")) for t in spec.labels] if isinstance(spec.labels, list)
                      else _as_list(render(spec.labels, row, "labels"), "labels"))
            if len(labels) != len(choices):
                raise RecordError("labels", f"{len(labels)} labels for {len(choices)} choices")
        if spec.answer is None:
            raise RecordError("answer", "no `answer` template")
        ans = _resolve_answer(render(spec.answer, row, "answer"), choices, labels)
        opt_labels = labels or [f"answer{i + 1}" for i in range(len(choices))]
        return MCRecord(rid, name, split, _instruction(stem, choices, opt_labels), tuple(opt_labels), ans,
                        tuple(choices), stem=stem)
    if spec.answer is None:
        raise RecordError("answer", "no `answer` template")
    gold = render(spec.answer, row, "answer")
    if gold is None or not str(gold).strip():
        raise RecordError("answer", "the record has no answer")
    gold_s = format_number(gold) if isinstance(gold, (int, float)) else str(gold).strip()
    completion = str(render(spec.target, row, "target")).strip() if spec.target else gold_s
    return MCRecord(rid, name, split, stem, (), -1, stem=stem, completion=completion, gold=gold_s)


def _check_templates(task, first_row: Any, where: str) -> None:
    """An unknown field in a template is a definition error: reported once, not once per record."""
    if task.format != "fields" or not isinstance(first_row, dict):
        return
    spec = task.spec
    for fld in ("prompt", "choices", "labels", "answer", "target"):
        t = getattr(spec, fld)
        for tt in (t if isinstance(t, list) else [t] if t else []):
            for name in template_fields(tt):
                try:
                    from .formats import lookup

                    lookup(first_row, name, fld)
                except RecordError as e:
                    raise InputError(f"tasks.{task.name}.{fld}: {e.message} ({where})")


def load_task_records(task, *, collect: bool = False):
    """(records per split ``train``/``test``, SplitInfo, bad rows). See the module doc."""
    spec = task.spec
    if task.format == "pack":
        from ..data import load_dataset

        name = spec.path[len(PACK_PREFIX):]
        recs = {"train": load_dataset(name, spec.train_split), "test": load_dataset(name, spec.test_split)}
        from ..data import dataset_info

        note = dataset_info(name).get("note")
        return recs, SplitInfo({k: len(v) for k, v in recs.items()}, note), []
    splits = read_source(task)
    note = None
    tr, te = spec.train_split, spec.test_split
    if tr in splits and te in splits:
        chosen = {"train": splits[tr], "test": splits[te]}
    elif len(splits) == 1:
        (only, rows), = splits.items()
        idx = list(range(len(rows)))
        random.Random(spec.split_seed).shuffle(idx)
        n_test = max(1, round(len(rows) * spec.test_fraction)) if len(rows) > 1 else 0
        test_idx, train_idx = sorted(idx[:n_test]), sorted(idx[n_test:])
        chosen = {"train": [rows[i] for i in train_idx], "test": [rows[i] for i in test_idx]}
        note = (f"one split in the source{f' ({only})' if only else ''}: {len(rows)} records shuffled with seed "
                f"{spec.split_seed} and split {len(train_idx)} train / {len(test_idx)} test "
                f"(test_fraction {spec.test_fraction})")
    else:
        missing = [s for s in (tr, te) if s not in splits]
        raise InputError(f"tasks.{task.name}.{'train_split' if tr in missing else 'test_split'}: split "
                         f"{missing[0]!r} not in {spec.path}; its splits: {', '.join(sorted(splits))}")
    out: dict[str, list] = {}
    bad: list[str] = []
    skipped: list[str] = []
    for split, rows in chosen.items():
        if rows:
            _check_templates(task, rows[0][1], rows[0][0])
        recs = []
        for i, (where, row) in enumerate(rows):
            try:
                recs.append(make_record(task, row, split, i))
            except RecordError as e:
                msg = f"{where}: field `{e.field}`: {e.message}"
                if collect:
                    bad.append(msg)
                elif spec.skip_bad:
                    skipped.append(msg)
                else:
                    raise InputError(f"tasks.{task.name}: {msg}; `llgbm data check {task.name}` lists every bad "
                                     f"record, or set tasks.{task.name}.skip_bad = true to skip them")
        if not recs and not collect:
            raise InputError(f"tasks.{task.name}: the {split} split ({spec.path}) has no usable records"
                             + (f" ({len(skipped)} skipped)" if skipped else ""))
        if not rows and collect:  # an empty source or split is as unusable as a bad record
            bad.append(f"{spec.path}: the {split} split has no records; a task needs at least one train and one "
                       "test record")
        out[split] = recs
    if skipped:
        log.warning("task %s: skipped %d bad record(s), first: %s", task.name, len(skipped), skipped[0])
    info = SplitInfo({k: len(v) for k, v in out.items()}, note, skipped)
    return out, info, bad
