"""Build llgbm's shipped multiple-choice data pack from the LLM-Adapters release.

    python scripts/build_datapack.py /path/to/llm-adapters

Writes llgbm_cli/data/pack/<dataset>.jsonl.gz (train and test records), manifest.json, the
data license and an attribution note. Deterministic: the same source gives the same bytes.
PIQA ships only a test file: it is shuffled with a fixed seed and split into train and test.
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

SOURCES = {
    "arc-easy": "ARC-Easy",
    "arc-challenge": "ARC-Challenge",
    "boolq": "boolq",
    "openbookqa": "openbookqa",
    "piqa": "piqa",
}
MAX_TRAIN = 1000
MAX_TEST = 500
SEED = 1234
OUT = Path(__file__).resolve().parents[1] / "llgbm_cli" / "data" / "pack"


def parse(rec: dict) -> dict:
    instr = rec["instruction"].strip()
    m = re.search(r"Answer format:\s*(\S+)\s*$", instr)
    if not m:
        raise ValueError(f"no answer format in {instr[:80]!r}")
    labels = m.group(1).split("/")
    body = instr[: m.start()].strip()
    choices = None
    if labels[0].lower() not in ("true", "false"):
        choices = []
        for i, lab in enumerate(labels):
            nxt = labels[i + 1] if i + 1 < len(labels) else None
            pat = rf"{re.escape(lab)}:\s*(.*?)\s*(?={re.escape(nxt)}:|$)" if nxt else rf"{re.escape(lab)}:\s*(.*?)\s*$"
            mm = re.search(pat, body, flags=re.IGNORECASE | re.DOTALL)
            choices.append(mm.group(1).strip() if mm else "")
    answer = labels.index(rec["answer"].strip())
    return {"instruction": instr, "labels": labels, "choices": choices, "answer": answer}


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
        buf = io.BytesIO()
        with gzip.GzipFile(fileobj=buf, mode="wb", mtime=0) as gz:
            for r in rows:
                gz.write((json.dumps(r, ensure_ascii=False) + "\n").encode())
        (OUT / f"{name}.jsonl.gz").write_bytes(buf.getvalue())
        manifest["datasets"][name] = {
            "source_folder": folder,
            "counts": counts,
            "n_options": sorted({len(r["labels"]) for r in rows}),
            "sha256": hashlib.sha256(buf.getvalue()).hexdigest(),
            **({"note": note} if note else {}),
        }
    (OUT / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    shutil.copyfile(src / "DATA_LICENSE", OUT / "DATA_LICENSE")
    shutil.copyfile(src / "README.md", OUT / "SOURCE_README.md")
    print(json.dumps({k: v["counts"] for k, v in manifest["datasets"].items()}))


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/llm-adapters"))
