"""The shipped data pack: seven multiple-choice sets (ARC-Easy, ARC-Challenge, BoolQ, OpenBookQA,
PIQA, and the five-option math sets AQuA and MathQA) and six generative arithmetic sets (MAWPS,
AddSub, MultiArith, SingleEq, SVAMP, GSM8K).

Built by ``scripts/build_datapack.py`` from the LLM-Adapters release (ODC-By 1.0; see
``pack/DATA_LICENSE`` and ``pack/SOURCE_README.md``). A multiple-choice record keeps the original
instruction (which lists the options and ends with ``Answer format: a/b/...``), its stem (the
question alone), the option labels the model answers with, the option texts, and the index of the
right answer. A generative record keeps the word problem, its target (MAWPS: a worked equation;
the others: ``The answer is N.``) and the numeric answer. Sets the source ships as one test file
are split with a fixed seed (recorded in the manifest).
These are the presets of the task registry (:mod:`llgbm_cli.tasks.registry`).
"""

from __future__ import annotations

import difflib
import gzip
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Optional

PACK_DIR = Path(__file__).resolve().parent / "pack"
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class MCRecord:
    """One task record: a multiple-choice question or, with ``completion`` set, a generative one."""

    id: str
    dataset: str
    split: str
    prompt: str  # the instruction text, options included (generative: the question)
    options: tuple[str, ...]  # the labels the model answers with, e.g. ("answer1", "answer2"); () if generative
    answer: int  # index into options (-1 for a generative record)
    choices: Optional[tuple[str, ...]] = None  # option texts where the source has them
    stem: Optional[str] = None  # the question without its options (the cloze form's question)
    completion: Optional[str] = None  # generative: the target text teachers train on
    gold: Optional[str] = None  # generative: the reference answer the metric compares with

    @property
    def target(self) -> str:
        return self.options[self.answer] if self.options else (self.completion or "")

    @property
    def generative(self) -> bool:
        return not self.options


@lru_cache(maxsize=1)
def _manifest() -> dict:
    return json.loads((PACK_DIR / "manifest.json").read_text())


def pack_manifest() -> dict:
    """The pack's manifest: per dataset its source folder, kind, split sizes and checksum."""
    return _manifest()


def list_datasets() -> list[str]:
    """Names of the shipped datasets."""
    return list(_manifest()["datasets"])


def dataset_info(name: str) -> dict:
    return dict(_manifest()["datasets"][check_dataset(name)])


def check_dataset(name: str) -> str:
    """Return the canonical name or raise InputError listing the valid ones."""
    from ..errors import InputError

    valid = list_datasets()
    low = name.strip().lower()
    for v in valid:
        if low == v or low == _manifest()["datasets"][v]["source_folder"].lower():
            return v
    guess = difflib.get_close_matches(low, valid, n=1)
    raise InputError(
        f"unknown dataset {name!r}" + (f" (did you mean {guess[0]!r}?)" if guess else "")
        + f"; valid datasets: {', '.join(valid)}"
    )


@lru_cache(maxsize=16)
def _load_all(name: str) -> tuple[MCRecord, ...]:
    rows = []
    with gzip.open(PACK_DIR / f"{name}.jsonl.gz", "rt", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if "labels" not in r:  # generative (MAWPS)
                from ..tasks.formats import format_number

                rows.append(MCRecord(id=r["id"], dataset=name, split=r["split"], prompt=r["question"], options=(),
                                     answer=-1, stem=r["question"], completion=r["target"],
                                     gold=format_number(r["answer"])))
                continue
            rows.append(
                MCRecord(
                    id=r["id"],
                    dataset=name,
                    split=r["split"],
                    prompt=r["instruction"],
                    options=tuple(r["labels"]),
                    answer=int(r["answer"]),
                    choices=tuple(r["choices"]) if r.get("choices") else None,
                    stem=r.get("stem"),
                )
            )
    return tuple(rows)


def load_dataset(name: str, split: str = "train") -> list[MCRecord]:
    """All records of one split of a shipped dataset."""
    from ..errors import InputError

    name = check_dataset(name)
    if split not in SPLITS:
        raise InputError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    return [r for r in _load_all(name) if r.split == split]


def sample(name: str, split: str, n: int, seed: int = 0) -> list[MCRecord]:
    """A seeded sample of n records (all of them when n exceeds the split), in a stable order."""
    import random

    recs = load_dataset(name, split)
    if n >= len(recs):
        return recs
    idx = sorted(random.Random(f"{seed}-{name}-{split}").sample(range(len(recs)), n))
    return [recs[i] for i in idx]
