"""Build llgbm's shipped data pack from the LLM-Adapters release.

    python scripts/build_datapack.py /path/to/llm-adapters

Writes llgbm_cli/data/pack/<dataset>.jsonl.gz, manifest.json, the data license and an attribution
note. Deterministic: the same source gives the same bytes.

* Multiple-choice sets (ARC-Easy, ARC-Challenge, BoolQ, OpenBookQA, PIQA): each record keeps the
  original instruction, its stem (the question without the options, for the cloze form), the option
  labels and texts, and the index of the answer. PIQA ships only a test file: it is shuffled with a
  fixed seed and split into train and test.
* MAWPS (generative): the word problem, its equation, the numeric answer and a worked target
  (``(22 - 14) / 4 = 2. The answer is 2.``) that teachers train on; train/validation/test are the
  source's trainset/validset/testset files, kept whole.
* The arithmetic family (test-only in the source): AddSub, MultiArith, SingleEq, SVAMP and GSM8K as
  generative sets (the word problem, the numeric answer and the target ``The answer is N.``); AQuA
  and MathQA as five-option multiple-choice sets (stem and option texts parsed from the
  instruction, answer letter A-E). Each is shuffled with a fixed seed and split: half of it, at most
  500 records, is the test split, the rest (at most 1000) the train split; the manifest records it.

Decontamination, last (the rules of ``llgbm data overlap``, :mod:`llgbm_cli.tasks.overlap`): each
split keeps one record per normalised text, then every train and validation record that equals
some task's test question or shares a 13-word n-gram with one is removed (MAWPS, assembled from
AddSub, MultiArith and SingleEq, loses most; the halves of a set shipped as one file lose the near
copies of their test half). Test splits are never cut for it. The manifest lists, per dataset and
split, how many records went and why.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import random
import re
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from llgbm_cli.tasks.formats import format_number, parse_llm_adapters_mc  # noqa: E402
from llgbm_cli.tasks.overlap import NGRAM, SplitIndex, normalize, text_of  # noqa: E402

SOURCES = {
    "arc-easy": "ARC-Easy",
    "arc-challenge": "ARC-Challenge",
    "boolq": "boolq",
    "openbookqa": "openbookqa",
    "piqa": "piqa",
}
ARITHMETIC = {  # name -> (source folder, kind)
    "addsub": ("AddSub", "generate"),
    "multiarith": ("MultiArith", "generate"),
    "singleeq": ("SingleEq", "generate"),
    "svamp": ("SVAMP", "generate"),
    "gsm8k": ("gsm8k", "generate"),
    "aqua": ("AQuA", "multiple_choice"),
    "mathqa": ("mathqa", "multiple_choice"),
}
MAX_TRAIN = 1000
MAX_TEST = 500
SEED = 1234
OUT = Path(__file__).resolve().parents[1] / "llgbm_cli" / "data" / "pack"


def parse(rec: dict) -> dict:
    return parse_llm_adapters_mc(rec["instruction"], rec["answer"])


_NUM = re.compile(r"\d+\.\d+|\d+")


def mawps_record(rec: dict, split: str) -> dict:
    """A MAWPS row as a generative record with a worked target (equation, value, answer sentence)."""
    eq = re.sub(r"^\s*[xX]\s*=\s*", "", str(rec["equation"]).strip())
    expr = _NUM.sub(lambda m: format_number(m.group(0)), eq)
    expr = re.sub(r"\s*([-+*/])\s*", r" \1 ", expr).replace("( ", "(").replace(" )", ")")
    expr = re.sub(r"^ - ", "-", expr).strip()
    ans = format_number(rec["ans"])
    question = " ".join(str(rec["original_text"]).split())
    question = re.sub(r" ([.,?!;:'])", r"\1", question).replace(" n't", "n't")
    return {"id": f"mawps-{split}-{rec['id']}", "split": split, "question": question, "equation": expr,
            "answer": float(rec["ans"]), "target": f"{expr} = {ans}. The answer is {ans}."}


def build_mawps(src: Path, manifest: dict) -> None:
    rows, counts = [], {}
    for split, fname in (("train", "trainset.json"), ("validation", "validset.json"), ("test", "testset.json")):
        recs = json.loads((src / "mawps" / fname).read_text())
        rows.extend(mawps_record(r, split) for r in recs)
        counts[split] = len(recs)
    BUILT["mawps"] = rows
    manifest["datasets"]["mawps"] = {"source_folder": "mawps", "kind": "generate", "counts": counts}


_AQUA = re.compile(r"\(([A-E])\)\s*(.*?)\s*(?=\([A-E]\)|$)", re.DOTALL)
_MATHQA = re.compile(r"(?:^|,)\s*([a-e])\s*\)\s*(.*?)\s*(?=,\s*[a-e]\s*\)|$)", re.DOTALL | re.IGNORECASE)


def letter_mc(instruction: str, answer: str) -> dict:
    """AQuA (``Answer Choices: (A) x (B) y ...``) and MathQA (``The options: a ) x , b ) y ...``):
    stem, labels A-E, option texts and the answer's index. Raises ValueError when it does not parse."""
    text = " ".join(instruction.split())
    m = re.search(r"Answer Choices:|The options:", text)
    if not m:
        raise ValueError("no option list")
    stem, opts = text[: m.start()].strip(), text[m.end():].strip()
    found = (_AQUA if m.group(0).startswith("Answer") else _MATHQA).findall(opts)
    labels = [lab.upper() for lab, _ in found]
    choices = [c.strip().rstrip(",").strip() for _, c in found]
    if labels != list("ABCDE")[: len(labels)] or len(labels) < 2 or any(not c for c in choices):
        raise ValueError(f"options do not parse: {opts[:80]!r}")
    ans = str(answer).strip().upper()
    if ans not in labels:
        raise ValueError(f"answer {answer!r} not among {labels}")
    listed = " ".join(f"{lab}: {c}" for lab, c in zip(labels, choices))
    instr = (f"Please choose the correct answer to the question: {stem}\n\n{listed}\n\n"
             f"Answer format: {'/'.join(labels)}")
    return {"instruction": instr, "stem": stem, "labels": labels, "choices": choices, "answer": labels.index(ans)}


def arithmetic_record(name: str, rec: dict, split: str, i: int) -> dict:
    question = " ".join(str(rec["instruction"]).split())
    ans = format_number(rec["answer"])
    return {"id": f"{name}-{split}-{i}", "split": split, "question": question, "answer": float(rec["answer"]),
            "target": f"The answer is {ans}."}


def build_arithmetic(src: Path, manifest: dict) -> None:
    for name, (folder, kind) in ARITHMETIC.items():
        recs = json.loads((src / folder / "test.json").read_text())
        idx = list(range(len(recs)))
        random.Random(f"{SEED}-{name}").shuffle(idx)
        n_test = min(MAX_TEST, len(idx) // 2)
        parts = {"train": sorted(idx[n_test:][:MAX_TRAIN]), "test": sorted(idx[:n_test])}
        rows, counts, bad = [], {}, 0
        for split, keep in parts.items():
            n = 0
            for i in keep:
                try:
                    if kind == "generate":
                        float(recs[i]["answer"])
                        rows.append(arithmetic_record(name, recs[i], split, i))
                    else:
                        rows.append({"id": f"{name}-{split}-{i}", "split": split,
                                     **letter_mc(recs[i]["instruction"], recs[i]["answer"])})
                    n += 1
                except (ValueError, KeyError, TypeError):
                    bad += 1
            counts[split] = n
        BUILT[name] = rows
        note = (f"no train split in the source: its {len(idx)} test records were shuffled with seed {SEED} and "
                f"split {len(parts['train'])} train / {len(parts['test'])} test"
                + (f"; {bad} record(s) whose options or answer do not parse were left out" if bad else ""))
        manifest["datasets"][name] = {"source_folder": folder, "kind": kind, "counts": counts,
                                      **({"n_options": sorted({len(r["labels"]) for r in rows})}
                                         if kind == "multiple_choice" else {}),
                                      "note": note}


BUILT: dict[str, list[dict]] = {}  # dataset -> its rows, every split, before decontamination


def row_text(r: dict) -> str:
    """The text a row is compared by (a multiple-choice row: its stem with its options)."""
    if "labels" not in r:
        return r["question"]
    return text_of(r["instruction"], r.get("stem"), r.get("choices"))


def decontaminate(manifest: dict) -> None:
    """One record per normalised text in each split; then no train/validation record that is, or
    shares a 13-gram with, any dataset's test question. Writes each dataset and its manifest entry."""
    tests = SplitIndex.build("all", "test", ((f"{name}/{r['id']}", row_text(r)) for name, rows in BUILT.items()
                                             for r in rows if r["split"] == "test"))
    for name, rows in BUILT.items():
        kept, seen = [], set()
        removed: dict[str, dict] = {}
        for r in rows:
            norm = normalize(row_text(r))
            why = None
            if (r["split"], norm) in seen:
                why = "duplicate"
            elif r["split"] != "test":
                m = tests.match(row_text(r))
                if m is not None:
                    why = "test:" + m[1].split("/")[0]
            if why is None:
                seen.add((r["split"], norm))
                kept.append(r)
                continue
            d = removed.setdefault(r["split"], {})
            d[why] = d.get(why, 0) + 1
        info = manifest["datasets"][name]
        info["counts"] = {s: sum(1 for r in kept if r["split"] == s) for s in info["counts"]}
        if removed:
            info["removed"] = {s: dict(sorted(v.items())) for s, v in removed.items()}
        data = _gz(kept)
        (OUT / f"{name}.jsonl.gz").write_bytes(data)
        info["sha256"] = hashlib.sha256(data).hexdigest()


def _gz(rows: list[dict]) -> bytes:
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
        for r in rows:
            gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
    return buf.getvalue()


def main(src: Path) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    manifest = {"source": "LLM-Adapters release (dataset/ folder), ODC-By 1.0", "seed": SEED, "datasets": {}}
    for name, folder in SOURCES.items():
        test = json.loads((src / folder / "test.json").read_text())
        train_file = src / folder / "train.json"
        note = None
        if train_file.exists():
            train = json.loads(train_file.read_text())
        else:
            rng = random.Random(SEED)
            idx = list(range(len(test)))
            rng.shuffle(idx)
            n_test = min(MAX_TEST, len(test) // 3)
            test_idx, train_idx = sorted(idx[:n_test]), sorted(idx[n_test:])
            train = [test[i] for i in train_idx]
            test = [test[i] for i in test_idx]
            note = (f"no train split in the source: its {len(idx)} test records were shuffled with "
                    f"seed {SEED} and split {len(train)} train / {len(test)} test")
        rows = []
        counts = {}
        for split, recs in (("train", train), ("test", test)):
            cap = MAX_TRAIN if split == "train" else MAX_TEST
            rng = random.Random(f"{SEED}-{name}-{split}")
            keep = sorted(rng.sample(range(len(recs)), min(cap, len(recs))))
            for i in keep:
                r = parse(recs[i])
                rows.append({"id": f"{name}-{split}-{i}", "split": split, **r})
            counts[split] = len(keep)
        BUILT[name] = rows
        manifest["datasets"][name] = {
            "source_folder": folder,
            "kind": "multiple_choice",
            "counts": counts,
            "n_options": sorted({len(r["labels"]) for r in rows}),
            **({"note": note} if note else {}),
        }
    build_mawps(src, manifest)
    build_arithmetic(src, manifest)
    decontaminate(manifest)
    manifest["decontamination"] = (
        f"each split keeps one record per normalised text; every train/validation record equal to some dataset's "
        f"test question after normalisation, or sharing a {NGRAM}-word n-gram with one, is removed (counts under "
        "`removed`: `duplicate`, or `test:<dataset>` whose test question it copies)")
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.copyfile(src / "DATA_LICENSE", OUT / "DATA_LICENSE")
    shutil.copyfile(src / "README.md", OUT / "SOURCE_README.md")
    print(json.dumps({k: v["counts"] for k, v in manifest["datasets"].items()}))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/llm-adapters"))
