"""Train/test overlap between tasks: the decontamination check behind `llgbm data overlap` and eval.

A test question is *contaminated* for a set of train splits when one of them holds the same question
or a near copy of it. Two checks, as lm-evaluation-harness's decontamination makes them:

* **exact**: the question's normalised text equals a train record's. Normalising lowercases, turns
  every character that is not a letter or a digit into a space and collapses runs of spaces, so case,
  punctuation and spacing do not hide a copy. The text of a multiple-choice record is its question
  with its options (the stem followed by the option texts, or the whole instruction where the record
  has no stem); of a generative record, its question.
* **n-gram**: the question shares word n-grams (``n`` = 13 by default) of its normalised text with
  the train split: contaminated when the share of its n-grams found there is above ``threshold``
  (0, the default: any shared n-gram, as lm-evaluation-harness counts it). A question of fewer than
  ``n`` words has no n-gram and is checked by the exact rule alone.

Everything here is pure Python and torch-free; the n-grams of a split are built once per process.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Sequence

NGRAM = 13
THRESHOLD = 0.0
_NON_WORD = re.compile(r"[^0-9a-z]+")


def normalize(text: str) -> str:
    """Lowercase, every run of non-alphanumeric characters one space, stripped."""
    return _NON_WORD.sub(" ", str(text).lower()).strip()


def text_of(prompt: str, stem: Optional[str] = None, choices: Optional[Sequence[str]] = None) -> str:
    """The text a record is compared by: the stem with its option texts where both are known, else
    the prompt (which carries the options of an instruction-style multiple-choice record)."""
    if stem and choices:
        return " ".join([stem, *choices])
    return prompt


def record_text(rec: Any) -> str:
    """:func:`text_of` a task record (:class:`~llgbm_cli.data.MCRecord`)."""
    if rec.generative:
        return rec.prompt
    return text_of(rec.prompt, rec.stem, rec.choices)


def ngrams(words: Sequence[str], n: int) -> set[str]:
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


@dataclass
class SplitIndex:
    """The normalised texts and n-grams of one split of one task, to look test questions up in."""

    task: str
    split: str
    n: int
    exact: dict[str, str] = field(default_factory=dict)  # normalised text -> first record id
    grams: dict[str, str] = field(default_factory=dict)  # n-gram -> first record id

    @classmethod
    def build(cls, task: str, split: str, items: Iterable[tuple[str, str]], n: int = NGRAM) -> "SplitIndex":
        """``items``: (record id, raw text) pairs."""
        ix = cls(task, split, n)
        for rid, text in items:
            norm = normalize(text)
            ix.exact.setdefault(norm, rid)
            for g in ngrams(norm.split(), n):
                ix.grams.setdefault(g, rid)
        return ix

    def match(self, text: str, threshold: float = THRESHOLD) -> Optional[tuple[str, str, float]]:
        """(kind, train record id, share of n-grams found) when ``text`` overlaps this split, else None."""
        norm = normalize(text)
        hit = self.exact.get(norm)
        if hit is not None:
            return "exact", hit, 1.0
        gs = ngrams(norm.split(), self.n)
        if not gs:
            return None
        found = [self.grams[g] for g in gs if g in self.grams]
        share = len(found) / len(gs)
        if found and share > threshold:
            return "ngram", min(found), share
        return None


@dataclass
class Hit:
    """One contaminated test question: where its copy is."""

    test_id: str
    task: str  # the train split's task
    split: str
    kind: str  # exact | ngram
    train_id: str
    share: float

    def to_dict(self) -> dict[str, Any]:
        return {"test_id": self.test_id, "task": self.task, "split": self.split, "kind": self.kind,
                "train_id": self.train_id, "share": round(self.share, 4)}


def find_hits(questions: Iterable[tuple[str, str]], indexes: Iterable[SplitIndex],
              threshold: float = THRESHOLD) -> dict[str, list[Hit]]:
    """Per contaminated question id, every split it overlaps (``questions``: (id, raw text) pairs)."""
    indexes = list(indexes)
    out: dict[str, list[Hit]] = {}
    for qid, text in questions:
        for ix in indexes:
            m = ix.match(text, threshold)
            if m is not None:
                out.setdefault(qid, []).append(Hit(qid, ix.task, ix.split, m[0], m[1], m[2]))
    return out


# --------------------------------------------------------------------------- over registered tasks

_INDEXES: dict[tuple, SplitIndex] = {}


def train_splits(task) -> dict[str, list]:
    """The records a task's teachers, conditions or probes may use: its train split, and the
    pack's validation split where the shipped set has one."""
    out = {"train": task.records("train")}
    if task.format == "pack":
        from ..data import dataset_info, load_dataset
        from .loaders import PACK_PREFIX

        name = task.spec.path[len(PACK_PREFIX):]
        if dataset_info(name)["counts"].get("validation"):
            out["validation"] = load_dataset(name, "validation")
    return out


def split_indexes(task, n: int = NGRAM) -> list[SplitIndex]:
    """The :class:`SplitIndex` of each split :func:`train_splits` gives (built once per process)."""
    import json

    key = (task.name, json.dumps(task.spec.model_dump(mode="json"), sort_keys=True), str(task.root), n)
    if key + ("train",) not in _INDEXES:
        for split, recs in train_splits(task).items():
            _INDEXES[key + (split,)] = SplitIndex.build(task.name, split, ((r.id, record_text(r)) for r in recs), n)
    return [ix for k, ix in _INDEXES.items() if k[:4] == key]


def contamination(test_records: Sequence[Any], tasks: Iterable[Any], *, n: int = NGRAM,
                  threshold: float = THRESHOLD) -> dict[str, list[Hit]]:
    """Which of ``test_records`` occur in a train (or validation) split of ``tasks`` (registry Tasks)."""
    indexes = [ix for t in tasks for ix in split_indexes(t, n)]
    return find_hits(((r.id, record_text(r)) for r in test_records), indexes, threshold)


def overlap_report(tasks: Sequence[Any], *, n: int = NGRAM, threshold: float = THRESHOLD,
                   examples: int = 3) -> dict[str, Any]:
    """Every test split of ``tasks`` against every train/validation split of every one of them:
    per (test task, train task) pair the count of contaminated test questions (exact and n-gram)
    and a few examples; per test task the count contaminated by any of them."""
    tasks = list(tasks)
    pairs = []
    per_task = {}
    for t in tasks:
        test = t.records("test")
        hits_any: set[str] = set()
        for other in tasks:
            hits = contamination(test, [other], n=n, threshold=threshold)
            if not hits:
                continue
            hits_any.update(hits)
            flat = [h for hs in hits.values() for h in hs]
            first = {}
            for h in flat:
                first.setdefault(h.test_id, h)
            kinds = [h.kind for h in first.values()]
            pairs.append({"test_task": t.name, "train_task": other.name, "questions": len(hits),
                          "of": len(test), "exact": kinds.count("exact"), "ngram": kinds.count("ngram"),
                          "examples": [_example(h, t, other) for h in list(first.values())[:examples]]})
        per_task[t.name] = {"contaminated": len(hits_any), "of": len(test)}
    total = sum(v["contaminated"] for v in per_task.values())
    return {"ngram": n, "threshold": threshold, "tasks": [t.name for t in tasks], "pairs": pairs,
            "per_task": per_task, "contaminated": total}


def _example(h: Hit, test_task, train_task) -> dict[str, Any]:
    by_id = {r.id: r for r in test_task.records("test")}
    train = {r.id: r for recs in train_splits(train_task).values() for r in recs}
    return {**h.to_dict(), "test_text": _short(record_text(by_id[h.test_id])),
            "train_text": _short(record_text(train[h.train_id])) if h.train_id in train else None}


def _short(text: str, width: int = 160) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --------------------------------------------------------------------------- enforcement (eval, zoo score)


def used_tasks(resolved, tasks: Iterable[str]) -> list[str]:
    """The tasks whose train splits an evaluation of ``tasks`` depends on: the zoo's tasks (teachers,
    `mean-delta`, the retrieval index and the generators' targets come from them), the tasks the
    probes are drawn from, and ``tasks`` themselves (their own teachers and condition prompts)."""
    from .. import workdir
    from ..deltas.probes import probe_task_names
    from ..zoo_manifest import Zoo
    from .registry import registry_for

    cfg = resolved.config
    reg = registry_for(resolved)
    zoo = Zoo.load(workdir.path(resolved, "zoo"), must_exist=False)
    names = list(zoo.tasks()) + list(tasks)
    names += probe_task_names(cfg.probes.source)
    known = set(reg.names())
    return [n for n in dict.fromkeys(names) if n in known]  # an imported adapter's unknown task: nothing to read


def scored_sample(resolved, task, used: Sequence[str], n: Optional[int] = None,
                  policy: Optional[str] = None) -> tuple[list, dict[str, Any]]:
    """The seeded test sample of ``task`` (a registry Task) that an evaluation scores, checked against
    the train splits of ``used``, and what the check found. ``policy`` (default `[eval] contamination`):
    ``drop`` leaves contaminated questions out, ``refuse`` raises InputError naming the pair, ``allow``
    keeps them (flagged in the returned record)."""
    from ..errors import InputError
    from .registry import registry_for

    cfg = resolved.config
    policy = policy or cfg.eval.contamination
    reg = registry_for(resolved)
    recs = task.sample("test", n or cfg.eval.test_sample, seed=cfg.project.seed)
    hits = contamination(recs, [reg.get(u) for u in used], n=cfg.data.overlap_ngram,
                         threshold=cfg.data.overlap_threshold)
    pairs: dict[str, int] = {}
    for hs in hits.values():
        for t in dict.fromkeys(h.task for h in hs):
            pairs[t] = pairs.get(t, 0) + 1
    info = {"task": task.name, "policy": policy, "checked": list(used), "sampled": len(recs),
            "contaminated": len(hits), "by_train_task": pairs, "ids": sorted(hits),
            "scored": len(recs) - (len(hits) if policy == "drop" else 0)}
    if hits and policy == "refuse":
        worst = max(pairs, key=pairs.get)
        raise InputError(f"eval.contamination = \"refuse\": {len(hits)} of the {len(recs)} scored {task.name} test "
                         f"questions occur in a train split ({worst}: {pairs[worst]}); `llgbm data overlap "
                         f"{task.name} {worst}` lists them, or set eval.contamination = \"drop\" to leave them out")
    if policy == "drop" and hits:
        recs = [r for r in recs if r.id not in hits]
        if not recs:
            raise InputError(f"eval.contamination = \"drop\": every scored {task.name} test question occurs in a train "
                             f"split ({', '.join(pairs)}); nothing is left to score")
    return recs, info


def summary_line(infos: Sequence[dict[str, Any]]) -> str:
    """One sentence on what the contamination check of an evaluation compared and found."""
    if not infos:
        return "Scored questions were not checked against train splits."
    policy = infos[0]["policy"]
    checked = sorted({t for i in infos for t in i["checked"]})
    found = [i for i in infos if i["contaminated"]]
    head = (f"Contamination check (`data overlap`'s rules, eval.contamination = \"{policy}\"): the scored test "
            f"questions of {', '.join(i['task'] for i in infos)} against the train splits of {', '.join(checked)}: ")
    if not found:
        return head + "none found."
    what = "; ".join(f"{i['task']} {i['contaminated']} of {i['sampled']} ("
                     + ", ".join(f"{k} {v}" for k, v in i["by_train_task"].items()) + ")" for i in found)
    verb = {"drop": "left out", "allow": "scored and flagged", "refuse": "refused"}[policy]
    return head + f"{what}, {verb}."
