"""scripts/research_tables.py: two worlds' cross-validations side by side (`--against`) only on the same questions."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _tables():
    spec = importlib.util.spec_from_file_location("research_tables", ROOT / "scripts" / "research_tables.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _world(root: Path, acc: dict, ids: dict) -> Path:
    folds = list(acc)
    rows = [{"fold": k, "method": m, "accuracy": a, "centered_cosine": 0.5} for k in folds for m, a in acc[k].items()]
    (root / "cv").mkdir(parents=True)
    (root / "cv" / "results.json").write_text(json.dumps({"folds": folds, "methods": list(acc[folds[0]]),
                                                          "rows": rows}))
    for k in folds:
        (root / "cv" / "folds" / k).mkdir(parents=True)
        (root / "cv" / "folds" / k / "questions.json").write_text(json.dumps({"question_ids": ids[k]}))
    return root


def test_against_compares_fold_by_fold_on_the_same_questions(tmp_path, capsys):
    t = _tables()
    ids = {"a": [1, 2, 3], "b": [4, 5], "c": [6]}
    fp32 = _world(tmp_path / "fp32", {"a": {"base": 0.5, "multitask": 0.6}, "b": {"base": 0.2, "multitask": 0.3},
                                      "c": {"base": 0.1, "multitask": 0.1}}, ids)
    bf16 = _world(tmp_path / "bf16", {"a": {"base": 0.5, "multitask": 0.5}, "b": {"base": 0.2, "multitask": 0.2},
                                      "c": {"base": 0.1, "multitask": 0.1}}, ids)
    t.against(fp32, bf16)
    out = {line.split("|")[1].strip(): line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")}
    assert "| 0.267 | 0.267 | +0.000 [+0.000, +0.000] | 1.000 | 3/3 |" in out["base"]
    assert "| 0.333 | 0.267 | -0.067 [" in out["multitask"] and "| 1/3 |" in out["multitask"]  # two folds moved


def test_against_refuses_folds_scored_on_other_questions(tmp_path):
    t = _tables()
    acc = {"a": {"base": 0.5}}
    x = _world(tmp_path / "x", acc, {"a": [1, 2]})
    y = _world(tmp_path / "y", acc, {"a": [1, 3]})
    with pytest.raises(SystemExit, match="different questions"):
        t.against(x, y)
