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


def test_detectable_difference_and_half_the_oracle_gap(tmp_path):
    """The across-fold detectable difference is t_mde at the spread of the method's per-fold differences to base;
    half the gap averages oracle − base over the folds the oracle scored on the main run's questions."""
    from statistics import stdev

    from llgbm_cli.evaluation.stats import t_mde

    t = _tables()
    ids = {"a": [1, 2], "b": [3], "c": [4]}
    w = _world(tmp_path, {"a": {"base": 0.5, "multitask": 0.6}, "b": {"base": 0.2, "multitask": 0.2},
                          "c": {"base": 0.1, "multitask": 0.15}}, ids)
    run = json.loads((w / "cv" / "results.json").read_text())
    for r in run["rows"]:
        r["accuracy_vs_base"] = r["accuracy"] - {"a": 0.5, "b": 0.2, "c": 0.1}[r["fold"]]
    assert t.detectable(run, "multitask") == f"{t_mde(stdev([0.1, 0.0, 0.05]), 3):+.3f}"
    assert t.detectable(run, "base") == "—"  # no spread
    assert t.half_gap(w) == "—"  # no oracle run
    (w / "cv-oracle").mkdir()
    (w / "cv-oracle" / "results.json").write_text(json.dumps({"oracle": [
        {"fold": "a", "accuracy": 0.7}, {"fold": "b", "accuracy": 0.3}, {"fold": "c", "accuracy": None}]}))
    for k in ("a", "b"):
        (w / "cv-oracle" / "folds" / k).mkdir(parents=True)
        (w / "cv-oracle" / "folds" / k / "questions.json").write_text(json.dumps({"question_ids": ids[k]}))
    assert t.half_gap(w) == "+0.075"  # (0.2 + 0.1) / 2 folds / 2


def test_picks_compares_b2s_top_hit_with_the_oracle_best_task(tmp_path, capsys):
    """Per fold B2's top hit (from the fold's eval results) against the oracle-best adapter's task; the counts
    of the same task and of the same family (registry kind: multiple-choice or generative)."""
    t = _tables()
    (tmp_path / "cv-oracle").mkdir()
    (tmp_path / "cv-oracle" / "results.json").write_text(json.dumps({"oracle": [
        {"fold": "arc-easy", "adapter_task": "openbookqa"}, {"fold": "mawps", "adapter_task": "piqa"},
        {"fold": "gsm8k", "adapter_task": "svamp"}]}))
    top = {"arc-easy": "openbookqa", "mawps": "singleeq", "gsm8k": "mawps"}
    for k, hit in top.items():
        e = tmp_path / "cv" / "folds" / k / "eval"
        e.mkdir(parents=True)
        e.joinpath("results.json").write_text(json.dumps({"runs": {"b2": {"hits": {k: [{"task": hit}, {"task": "x"}]}}}}))
    t.picks(tmp_path)
    out = capsys.readouterr().out
    assert "| mawps | piqa | singleeq |" in out
    assert "B2 (main): the oracle-best's task on 1 of 3 folds, its family on 2 of 3" in out  # mawps: MC oracle


def test_per_fold_puts_a_cell_beside_the_main_run(capsys):
    t = _tables()
    row = lambda k, m, a, c=None, tp=None: {"fold": k, "method": m, "accuracy": a, "centered_cosine": c,
                                            "task_probe_centered_cosine": tp}
    main = {"folds": ["a", "b"], "rows": [row("a", "base", 0.5), row("a", "multitask", 0.6, 0.7),
                                          row("b", "base", 0.2), row("b", "multitask", 0.1, 0.4)]}
    cell = {"rows": [row("a", "base", 0.5), row("a", "multitask", 0.55, 0.65, 0.3)]}  # fold b not run yet
    t.per_fold(cell, main, "kl", "multitask")
    lines = [x for x in capsys.readouterr().out.splitlines() if x.startswith("| a") or x.startswith("| b")]
    assert lines == ["| a | 0.55 | 0.60 | 0.50 | 0.65 / 0.70 | 0.30 |"]
