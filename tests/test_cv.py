"""`llgbm eval --folds`: leave-one-task-out cross-validation on the tiny world (train, eval, statistics,
oracle-best, resume) and its bad input."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from scipy.stats import binomtest

from test_eval import make_world

TASKS = ["arc-easy", "boolq", "openbookqa"]
CV_TOML = """
[train.multitask]
generator = "hyperconv"
learning_rate = 3e-3
batch_size = 2
delta_batch_size = 1
total_steps = 2
warmup_steps = 1
lambda_warmup_steps = 1
condition_prompts = 2
max_text_length = 64
log_interval = 1
save_interval = 2
eval_interval = 2
generator_options = { channels = 8, latent_height = 4, latent_width = 8, depth = 1 }
"""


@pytest.fixture(scope="module")
def cv_world(tmp_path_factory, tiny):
    project = make_world(tmp_path_factory.mktemp("cvworld"), tiny[0], per_task=2, tasks=TASKS)
    project.write_text(project.read_text() + CV_TOML)
    return project


def _run(cli, project, *args):
    return cli("--project", project, "--quiet", "--json", "eval", *args)


FOLDS_ARGS = ["--folds", "arc-easy,boolq", "-m", "base", "-m", "mean-delta", "-m", "multitask", "--test-sample", "5"]


@pytest.fixture(scope="module")
def cv_one(cv_world, tmp_path_factory):
    """One process's cross-validation of two folds: (its --out, its JSON report). Run as the
    processes of the launch test run (one thread each), so that their float results can be equal."""
    import os

    from conftest import launch

    out = tmp_path_factory.mktemp("cvone") / "cv"
    rc, stdout, stderr = launch(["llgbm_cli", "--project", cv_world, "--quiet", "--json", "eval", *FOLDS_ARGS,
                                 "--out", out], 1, env={**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"},
                                cwd=cv_world.parent, timeout=600)
    assert rc == 0, stderr[-3000:]
    return out, json.loads(stdout)


def test_folds_train_evaluate_compare_and_resume(cli, cv_world, cv_one):
    out, res = cv_one
    assert res["folds"] == ["arc-easy", "boolq"] and res["ran"] == ["arc-easy", "boolq"] and res["skipped"] == []
    assert sorted(res["trained"]) == ["arc-easy/multitask", "boolq/multitask"]
    rows = {(x["fold"], x["method"]): x for x in res["rows"]}
    assert set(rows) == {(k, m) for k in ("arc-easy", "boolq") for m in ("base", "mean-delta", "multitask")}
    for k in ("arc-easy", "boolq"):
        # each fold's generator was trained without its task, and eval called the task held out
        meta = json.loads((out / "folds" / k / "runs" / "multitask" / "final" / "generator.json").read_text())
        assert k not in meta["trained_on"] and set(meta["trained_on"]) == set(TASKS) - {k}
        ev = json.loads((out / "folds" / k / "eval" / "results.json").read_text())
        assert ev["holdout"] == [k] and ev["tasks"] == [k] and "--multitask-checkpoint" in ev["command"]
        # eval's check that a generated adapter beats base tests the per-question scores
        bb = next(c for c in ev["checks"] if c["name"] == "a generated or retrieved adapter beats base on a task")
        assert "exact McNemar test vs base, Holm over 1 comparison" in bb["detail"] and bb["status"] == "fail"
        q = json.loads((out / "folds" / k / "questions.json").read_text())
        assert len(q["question_ids"]) == 5
        for m in ("base", "mean-delta", "multitask"):
            row = rows[k, m]
            vals = q["methods"][m]
            assert len(vals) == 5 and set(vals) <= {0.0, 1.0}
            # the per-question scores reproduce eval's own accuracy
            assert row["accuracy"] == pytest.approx(sum(vals) / 5) == pytest.approx(row["eval_accuracy"])
            assert row["accuracy_vs_base"] == pytest.approx(row["accuracy"] - rows[k, "base"]["accuracy"])
            assert row["vs_base_low"] <= row["accuracy_vs_base"] <= row["vs_base_high"]
            assert 0 < row["vs_base_p"] <= 1
            assert row["heldout"] is True and row["n_questions"] == 5
            # the exact McNemar p of the questions only one of the two answered right
            base = q["methods"]["base"]
            mine, theirs = sum(x > y for x, y in zip(vals, base)), sum(x < y for x, y in zip(vals, base))
            want = 1.0 if mine + theirs == 0 else binomtest(theirs, mine + theirs, 0.5).pvalue
            assert row["vs_base_test"] == "mcnemar" and row["vs_base_p"] == pytest.approx(want)
            assert row["vs_base_mde"] is None  # 5 questions: no difference is detectable
            if m != "base":
                assert row["vs_base_p"] <= row["vs_base_p_holm"] <= 1
        assert rows[k, "base"]["vs_base_p"] == 1.0 and rows[k, "mean-delta"]["vs_mean_delta_p"] == 1.0
        assert rows[k, "base"]["vs_base_p_holm"] is None and rows[k, "mean-delta"]["vs_mean_delta_p_holm"] is None
        assert rows[k, "multitask"]["centered_cosine"] is not None
    # oracle-best: the best of the other tasks' last checkpoints, with every method's gap to it
    zoo = [json.loads(x) for x in (cv_world.parent / "runs" / "zoo" / "zoo.jsonl").read_text().splitlines() if x]
    for o in res["oracle"]:
        k = o["fold"]
        assert o["candidates"] == sum(1 for e in zoo if e["task"] != k) and o["adapter"] is not None
        assert next(e for e in zoo if e["id"] == o["adapter"])["task"] != k
        q = json.loads((out / "folds" / k / "questions.json").read_text())
        assert o["accuracy"] == pytest.approx(sum(q["methods"]["oracle-best"]) / 5)
        cached = [json.loads(p.read_text()) for p in (out / "scores").glob("*.json")]
        cand = [c["score"]["accuracy"] for c in cached if c["key"]["task"] == k and c["key"]["adapter"] != "base"
                and "zoo" in (c["adapter_folder"] or "")]
        assert o["accuracy"] == max(cand)
        for m in ("base", "mean-delta", "multitask"):
            assert rows[k, m]["gap_to_oracle"] == pytest.approx(rows[k, m]["accuracy"] - o["accuracy"])
    # across folds: the mean and its t-interval per method, the oracle as a reference
    summ = {s["method"]: s for s in res["summary"]}
    assert summ["oracle-best"]["reference"] is True and summ["multitask"]["reference"] is False
    for m in ("base", "mean-delta", "multitask"):
        accs = [rows[k, m]["accuracy"] for k in ("arc-easy", "boolq")]
        assert summ[m]["folds"] == 2 and summ[m]["accuracy"] == pytest.approx(sum(accs) / 2)
        if accs[0] != accs[1]:
            assert summ[m]["accuracy_low"] < summ[m]["accuracy"] < summ[m]["accuracy_high"]
    md = (out / "results.md").read_text()
    assert md.splitlines()[5].startswith("llgbm --project") and "--folds arc-easy,boolq" in md
    assert "oracle-best (reference" in md and "Student-t" in md and "paired bootstrap" in md
    assert "McNemar" in md and "Wilcoxon" in md and "Holm's method over each family: the 4 comparisons with `base`" in md
    assert "Wins / losses count only folds with a Holm-adjusted p < 0.05" in md and "(Holm " in md
    assert ("were checked against" if res.get("contamination") else "were not checked against") in md
    assert "was seen by no trained method" not in md
    for m in ("base", "mean-delta", "multitask"):
        assert "accuracy_vs_base_wilcoxon_p" in summ[m] and "vs_mean_delta_wilcoxon_p" in summ[m]
        wins = sum(1 for k in ("arc-easy", "boolq") if (rows[k, m]["vs_base_p_holm"] or 1) < 0.05
                   and rows[k, m]["accuracy_vs_base"] > 0)
        assert summ[m]["wins_vs_base"] == wins
    with open(out / "results.csv") as fh:
        table = list(csv.DictReader(fh))
    assert {"vs_base_p_holm", "vs_base_test", "vs_base_mde", "vs_mean_delta_p_holm"} <= set(table[0])
    assert len(table) == 8 and sum(x["method"] == "oracle-best" and x["reference"] == "True" for x in table) == 2
    for f in ("plots/folds.png", "plots/folds.pdf", "plots/folds.svg"):
        assert (out / f).stat().st_size > 0

    # rerun: finished folds are skipped, nothing retrained, nothing rescored
    gen = out / "folds" / "boolq" / "runs" / "multitask" / "final" / "generator.safetensors"
    stamp = {p: p.stat().st_mtime_ns for p in [gen, *(out / "scores").glob("*.json"),
                                               out / "folds" / "boolq" / "done.json"]}
    from unittest import mock

    with mock.patch("llgbm_cli.models.load_base_model", side_effect=AssertionError("a finished fold loads no model")):
        again = json.loads(_run(cli, cv_world, *FOLDS_ARGS, "--out", out).stdout)
    assert again["ran"] == [] and again["skipped"] == ["arc-easy", "boolq"] and again["trained"] == []
    assert again["summary"] == res["summary"]
    assert {p: p.stat().st_mtime_ns for p in stamp} == stamp
    # a finished training run of the same config is reused, not retrained
    from llgbm_cli.config import load_config
    from llgbm_cli.services.cv import fold_overrides, train_method

    cres = load_config(cv_world, fold_overrides({"eval.test_sample": 5}, "boolq"))
    assert train_method(cres, "multitask", gen.parent.parent) is False
    assert gen.stat().st_mtime_ns == stamp[gen]


def test_reused_fold_recomputes_its_statistics(cli, cv_world, cv_one, tmp_path):
    """A finished fold is not rerun, but its rows' statistics are recomputed from its per-question
    scores: edited scores (or rows written by an older version) change the rows, no model loads."""
    import shutil
    from unittest import mock

    out = tmp_path / "cv"
    shutil.copytree(cv_one[0], out)
    qpath = out / "folds" / "boolq" / "questions.json"
    q = json.loads(qpath.read_text())
    base = q["methods"]["base"]
    q["methods"]["multitask"] = [1.0] * len(base)  # right wherever base is wrong
    qpath.write_text(json.dumps(q))
    done = out / "folds" / "arc-easy" / "done.json"
    d = json.loads(done.read_text())
    for r in d["rows"]:  # an older version's rows: another p-value, fields missing
        r["vs_base_p"] = 0.0005
        r.pop("vs_base_test", None)
    done.write_text(json.dumps(d))
    with mock.patch("llgbm_cli.models.load_base_model", side_effect=AssertionError("a finished fold loads no model")):
        r = _run(cli, cv_world, *FOLDS_ARGS, "--out", out)
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["ran"] == [] and res["skipped"] == ["arc-easy", "boolq"]
    rows = {(x["fold"], x["method"]): x for x in res["rows"]}
    old = {(x["fold"], x["method"]): x for x in cv_one[1]["rows"]}
    mt = rows["boolq", "multitask"]
    wrong = sum(1 for v in base if v == 0)
    assert mt["accuracy"] == 1.0 and mt["accuracy_vs_base"] == pytest.approx(wrong / len(base))
    assert mt["vs_base_p"] == pytest.approx(1.0 if not wrong else binomtest(0, wrong, 0.5).pvalue)
    assert mt["eval_accuracy"] == old["boolq", "multitask"]["eval_accuracy"]  # eval's own record is kept
    for m in ("base", "mean-delta", "multitask"):
        assert rows["arc-easy", m]["vs_base_p"] == old["arc-easy", m]["vs_base_p"]
        assert rows["arc-easy", m]["vs_base_test"] == "mcnemar"
    # the recomputed rows are kept, and the next run reads them unchanged
    stored = {x["method"]: x for x in json.loads((out / "folds" / "boolq" / "done.json").read_text())["rows"]}
    assert stored["multitask"]["accuracy"] == 1.0
    assert json.loads((out / "results.json").read_text())["rows"] == res["rows"]


def test_summary_counts_holm_adjusted_wins_only():
    """Wins need a Holm-adjusted p < 0.05 over the family (folds × methods other than the reference)."""
    from llgbm_cli.evaluation.cv_stats import cv_results_md, holm_family, summarize

    def row(fold, method, diff, p):
        return {"fold": fold, "method": method, "accuracy": 0.5 + diff, "accuracy_vs_base": diff, "vs_base_p": p,
                "vs_base_low": diff - 0.1, "vs_base_high": diff + 0.1, "vs_mean_delta": 0.0, "vs_mean_delta_p": 1.0,
                "vs_mean_delta_low": 0.0, "vs_mean_delta_high": 0.0, "vs_base_mde": 0.12, "n_questions": 100}

    rows = []
    for k, (p_mt, p_b1, d_b1) in {"a": (0.01, 0.03, 0.1), "b": (0.02, 0.5, 0.05), "c": (0.004, 0.04, 0.15)}.items():
        rows += [row(k, "base", 0.0, 1.0), row(k, "mean-delta", 0.01, 0.8), row(k, "multitask", 0.1, p_mt),
                 row(k, "b1", d_b1, p_b1)]
    sizes = holm_family(rows)
    assert sizes == {"vs_base": 9, "vs_mean_delta": 9}
    got = {(r["fold"], r["method"]): r["vs_base_p_holm"] for r in rows}
    assert got["c", "multitask"] == pytest.approx(9 * 0.004) and got["a", "multitask"] == pytest.approx(8 * 0.01)
    assert got["b", "multitask"] == pytest.approx(0.14) and got["a", "base"] is None
    summ = {s["method"]: s for s in summarize(rows, [], ["base", "mean-delta", "multitask", "b1"])}
    # raw p < 0.05 on all three folds; after Holm only fold c (0.036) stays below 0.05
    assert summ["multitask"]["wins_vs_base"] == 1 and summ["b1"]["wins_vs_base"] == 0
    assert summ["multitask"]["accuracy_vs_base_wilcoxon_p"] == pytest.approx(0.25)
    assert summ["base"]["accuracy_vs_base_wilcoxon_p"] == 1.0
    md = cv_results_md({"command": "llgbm eval", "base_model": "m", "folds": ["a", "b", "c"], "test_sample": 100,
                        "seed": 0, "level": 0.95, "resamples": 2000, "oracle_candidates": "last", "summary": list(summ.values()),
                        "rows": rows, "oracle": [],
                        "contamination": {"policy": "drop", "checked": ["x", "y"], "dropped": {"a": 2, "b": 0}}})
    assert "+0.1000 [+0.0000, +0.2000] p=4.00e-03 (Holm 0.036)" in md
    assert "the 9 comparisons with `base`" in md and "| 0.120 |" in md
    assert "checked against the train splits of x, y (policy `drop`): 2 dropped in fold a." in md
    assert "+0.1000 [+0.1000, +0.1000] p=0.250 (Holm 0.750)" in md  # the summary: mean, t-interval, Wilcoxon p
    from llgbm_cli.evaluation.stats import t_mde
    # only b1's folds spread (sd 0.05): the others' detectable difference is undefined and left out
    assert f"80% power, at the spread of the folds' differences" in md and f"`b1` {t_mde(0.05, 3):+.3f}." in md
    assert "`multitask` +" not in md.split("80% power, at the spread")[1].split("\n")[0]


def test_few_shot_methods_form_families_of_their_own():
    """A few-shot method (compose) neither joins nor dilutes the zero-shot methods' Holm families, and
    results.md lists it in a section of its own."""
    from llgbm_cli.evaluation.cv_stats import cv_results_md, holm_family, summarize
    from llgbm_cli.evaluation.stats import holm

    def row(fold, method, p, regime=None):
        r = {"fold": fold, "method": method, "accuracy": 0.6, "accuracy_vs_base": 0.1, "vs_base_p": p,
             "vs_base_low": 0.0, "vs_base_high": 0.2, "vs_mean_delta": 0.05, "vs_mean_delta_p": p,
             "vs_mean_delta_low": 0.0, "vs_mean_delta_high": 0.1, "n_questions": 100}
        return {**r, "regime": regime} if regime else r

    zero = {"a": 0.01, "b": 0.02, "c": 0.03}
    few = {"a": 0.001, "b": 0.002, "c": 0.5}
    rows = [x for k in zero for x in (row(k, "base", 1.0), row(k, "mean-delta", 0.9), row(k, "multitask", zero[k]),
                                      row(k, "compose", few[k], "few-shot"))]
    sizes = holm_family(rows)
    assert sizes["vs_base"] == 6 + 3  # mean-delta and multitask (6), compose apart (3)
    got = {(r["fold"], r["method"]): r["vs_base_p_holm"] for r in rows}
    zero_adj = dict(zip([(k, m) for k in zero for m in ("mean-delta", "multitask")],
                        holm([p for k in zero for p in (0.9, zero[k])])))
    few_adj = dict(zip(few, holm(list(few.values()))))
    for k in zero:
        assert got[k, "multitask"] == pytest.approx(zero_adj[k, "multitask"])
        assert got[k, "compose"] == pytest.approx(few_adj[k])
    summ = summarize(rows, [], ["base", "mean-delta", "multitask", "compose"])
    assert {s["method"]: s["regime"] for s in summ} == {"base": "zero-shot", "mean-delta": "zero-shot",
                                                         "multitask": "zero-shot", "compose": "few-shot"}
    md = cv_results_md({"command": "llgbm eval", "base_model": "m", "folds": list(zero), "test_sample": 100,
                        "seed": 0, "level": 0.95, "resamples": 2000, "oracle_candidates": "last", "summary": summ,
                        "rows": rows, "oracle": [], "contamination": None})
    head, tail = md.split("## Few-shot (a separate regime)")
    summary_part = head.split("## Summary")[1]
    assert "| compose |" not in summary_part and "| multitask |" in summary_part
    assert "| compose |" in tail.split("## Per fold")[0] and "| a | compose (few-shot) |" in tail
    assert "the 6 comparisons with `base`" in md


def test_summary_counts_how_often_retrieval_finds_the_oracles_task():
    from llgbm_cli.evaluation.cv_stats import cv_results_md, summarize

    rows = []
    for k, (task, fam) in {"a": (True, True), "b": (False, True), "c": (False, False)}.items():
        for m in ("base", "mean-delta", "b2"):
            r = {"fold": k, "method": m, "accuracy": 0.5, "accuracy_vs_base": 0.0, "vs_base_p": 1.0,
                 "vs_base_low": 0.0, "vs_base_high": 0.0, "vs_mean_delta": 0.0, "vs_mean_delta_p": 1.0,
                 "vs_mean_delta_low": 0.0, "vs_mean_delta_high": 0.0, "n_questions": 10}
            if m == "b2":
                r.update(picks_oracle_task=task, picks_oracle_family=fam, retrieved=["x"], oracle_task="y")
            rows.append(r)
    summ = {s["method"]: s for s in summarize(rows, [], ["base", "mean-delta", "b2"])}
    assert (summ["b2"]["picks_oracle_task"], summ["b2"]["picks_oracle_family"], summ["b2"]["picks_folds"]) == (1, 2, 3)
    assert "picks_folds" not in summ["base"]
    md = cv_results_md({"command": "llgbm eval", "base_model": "m", "folds": ["a", "b", "c"], "test_sample": 10,
                        "seed": 0, "level": 0.95, "resamples": 2000, "oracle_candidates": "last",
                        "summary": list(summ.values()), "rows": rows, "oracle": [], "contamination": None})
    assert "`b2`'s top hit is the oracle-best adapter's task on 1 of 3 folds and of its family" in md


def test_summary_adjusts_the_across_fold_tests_and_counts_folds_closer_than_mean_delta():
    """Across folds the Wilcoxon p of each method against a reference is Holm-adjusted over the methods
    compared with it; the folds where a method's centered cosine is above mean-delta's come with the
    exact sign test's p, also Holm-adjusted."""
    from scipy.stats import binomtest, wilcoxon

    from llgbm_cli.evaluation.stats import holm
    from llgbm_cli.evaluation.cv_stats import summarize

    diffs = {"multitask": [0.01, 0.02, 0.03, 0.04, 0.05, -0.01], "b2": [0.01, -0.02, 0.03, -0.04, 0.05, 0.02]}
    cos = {"mean-delta": [0.1] * 6, "multitask": [0.5, 0.6, 0.4, 0.7, 0.3, 0.2], "b2": [0.2, 0.0, 0.3, 0.05, 0.4, 0.5]}
    rows = []
    for i in range(6):
        for m in ("base", "mean-delta", "multitask", "b2"):
            d = diffs.get(m, [0.0] * 6)[i]
            rows.append({"fold": f"f{i}", "method": m, "accuracy": 0.5 + d, "accuracy_vs_base": d, "vs_base_p": 0.5,
                         "vs_mean_delta": d, "vs_mean_delta_p": 0.5, "centered_cosine": cos.get(m, [0.0] * 6)[i]})
    summ = {s["method"]: s for s in summarize(rows, [], ["base", "mean-delta", "multitask", "b2"])}
    raw = {m: wilcoxon(diffs[m]).pvalue for m in diffs}
    adj = dict(zip(["mean-delta", "multitask", "b2"], holm([1.0, raw["multitask"], raw["b2"]])))
    for m in ("multitask", "b2"):
        assert summ[m]["accuracy_vs_base_wilcoxon_p"] == pytest.approx(raw[m])
        assert summ[m]["accuracy_vs_base_wilcoxon_p_holm"] == pytest.approx(adj[m])
    assert summ["base"]["accuracy_vs_base_wilcoxon_p_holm"] is None
    assert summ["multitask"]["centered_above_mean_delta"] == 6 and summ["b2"]["centered_above_mean_delta"] == 4
    signs = {"multitask": binomtest(6, 6).pvalue, "b2": binomtest(4, 6).pvalue}
    assert summ["multitask"]["centered_above_mean_delta_p"] == pytest.approx(signs["multitask"])
    assert summ["b2"]["centered_above_mean_delta_p_holm"] == pytest.approx(
        holm([signs["multitask"], signs["b2"]])[1])
    assert summ["mean-delta"]["centered_above_mean_delta"] is None
    from statistics import stdev

    from llgbm_cli.evaluation.stats import t_mde
    for m in ("multitask", "b2"):  # the across-fold detectable difference at the folds' own spread
        assert summ[m]["accuracy_vs_base_mde"] == pytest.approx(t_mde(stdev(diffs[m]), 6))
    assert summ["base"]["accuracy_vs_base_mde"] is None and summ["mean-delta"]["accuracy_vs_base_mde"] is None


def test_folds_bad_input(cli, cv_world, tmp_path):
    r = _run(cli, cv_world, "--folds", "arc-easy,nope", "-m", "base", "--out", tmp_path / "x")
    assert r.exit_code == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "--folds nope" in err[0] and "Traceback" not in r.stderr
    assert not (tmp_path / "x").exists()
    r = _run(cli, cv_world, "--folds", "all", "--holdout", "boolq", "-m", "base", "--out", tmp_path / "y")
    assert r.exit_code == 2 and "--folds" in r.stderr and "--holdout" in r.stderr
    r = _run(cli, cv_world, "--folds", "boolq", "--task", "boolq", "-m", "base", "--out", tmp_path / "z")
    assert r.exit_code == 2 and "--task" in r.stderr
    r = _run(cli, cv_world, "--folds", " , ", "-m", "base", "--out", tmp_path / "z")
    assert r.exit_code == 2 and "--folds" in r.stderr and not (tmp_path / "z").exists()
    r = _run(cli, cv_world, "--folds", "boolq", "-m", "nope", "--out", tmp_path / "z")
    assert r.exit_code == 2 and "--method nope" in r.stderr and not (tmp_path / "z").exists()
    # a folder that is not a cross-validation output is never written into
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    r = _run(cli, cv_world, "--folds", "boolq", "-m", "base", "--out", tmp_path / "other")
    assert r.exit_code == 2 and "not a cross-validation" in r.stderr


def test_oracle_candidates_last_per_trajectory():
    from llgbm_cli.services.cv import oracle_candidates
    from llgbm_cli.zoo_manifest import Zoo, ZooEntry

    ids = [("a-s00010", "a", 10), ("a-s00020", "a", 20), ("a-r1-s00010", "a", 10), ("a-r1-s00020", "a", 20),
           ("b-s00020", "b", 20), ("c-s00005", "c", 5)]
    zoo = Zoo("z", [ZooEntry(id=i, path=i, task=t, step=s) for i, t, s in ids])
    assert [e.id for e in oracle_candidates(zoo, "c", "last")] == ["a-s00020", "a-r1-s00020", "b-s00020"]
    assert len(oracle_candidates(zoo, "c", "all")) == 5
    assert [e.id for e in oracle_candidates(zoo, "a", "last")] == ["b-s00020", "c-s00005"]


def test_b2_fold_trains_its_predictor_and_index_without_the_task(cli, cv_world, tmp_path):
    out = tmp_path / "cvb2"
    r = _run(cli, cv_world, "--folds", "boolq", "-m", "b2", "--test-sample", "4", "--out", out,
             "--set", "train.b2.epochs=3", "--set", "train.b2.hidden=16")
    assert r.exit_code == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["methods"] == ["base", "mean-delta", "b2"] and res["trained"] == ["boolq/b2"]
    runs = out / "folds" / "boolq" / "runs"
    meta = json.loads((runs / "b2" / "predictor.json").read_text())
    assert meta["train_ids"] and not any(i.startswith("boolq") for i in meta["train_ids"])
    ids = json.loads((runs / "b2-index" / "ids.json").read_text())["ids"]
    assert ids and not any(i.startswith("boolq") for i in ids)
    row = next(x for x in res["rows"] if x["method"] == "b2")
    assert row["heldout"] is True and row["n_questions"] == 4
    ev = json.loads((out / "folds" / "boolq" / "eval" / "results.json").read_text())
    assert "--b2-checkpoint" in ev["command"] and "index.path" in ev["command"]
    assert all(h["task"] != "boolq" for h in ev["runs"]["b2"]["hits"]["boolq"])
    assert "oracle-best (reference" in (out / "results.md").read_text()


def test_train_method_reuses_resumes_or_replaces(tmp_path, monkeypatch):
    """A finished run of this config is reused, an interrupted one resumes from its latest checkpoint,
    a run of another config (or a finished one without its marker) is replaced."""
    from unittest import mock

    from llgbm_cli import workdir
    from llgbm_cli.config import load_config
    from llgbm_cli.services.cv import run_fingerprint, train_method
    from llgbm_cli.zoo_manifest import Zoo, ZooEntry

    monkeypatch.chdir(tmp_path)  # the built-in defaults, whatever the current folder holds
    cres = load_config(None, {"train.multitask.holdout_tasks": ["boolq"]})
    run = tmp_path / "runs" / "multitask"
    marker = tmp_path / "runs" / "multitask.json"
    calls = []

    def fake(resolved, *, out_dir, resume, force, progress=None):
        calls.append({"resume": resume, "force": force})
        (out_dir / "final").mkdir(parents=True, exist_ok=True)

    with mock.patch("llgbm_cli.services.train_multitask.train_multitask", fake):
        assert train_method(cres, "multitask", run) is True  # nothing there: a fresh run
        assert calls[-1] == {"resume": False, "force": False}
        assert json.loads(marker.read_text()) == {"method": "multitask", "fingerprint": run_fingerprint(
            cres.config, "multitask"), "finished": True}
        assert train_method(cres, "multitask", run) is False and len(calls) == 1  # finished: reused
        # interrupted: no final, a checkpoint, the marker of this config -> resume
        (run / "final").rmdir()
        (run / "checkpoints" / "step-00002").mkdir(parents=True)
        (run / "checkpoints" / "step-00002" / "trainer_state.json").write_text("{}")
        marker.write_text(json.dumps({"method": "multitask", "fingerprint": run_fingerprint(cres.config, "multitask"),
                                      "finished": False}))
        assert train_method(cres, "multitask", run) is True
        assert calls[-1] == {"resume": True, "force": False}
        # another config: replaced, not resumed
        other = load_config(None, {"train.multitask.holdout_tasks": ["boolq"], "train.multitask.total_steps": 777})
        assert run_fingerprint(other.config, "multitask") != run_fingerprint(cres.config, "multitask")
        assert train_method(other, "multitask", run) is True
        assert calls[-1] == {"resume": False, "force": True}
        assert train_method(other, "multitask", run) is False
        # the same config on another zoo, or on a teacher rebuilt under the same id: replaced
        zoo = Zoo(workdir.path(other, "zoo"), [ZooEntry(id="boolq-r0-s00004", path="a", task="boolq", sha256="1")])
        zoo.save()
        assert train_method(other, "multitask", run) is True and len(calls) == 4
        assert train_method(other, "multitask", run) is False
        zoo.entries[0].sha256 = "2"
        zoo.save()
        assert train_method(other, "multitask", run) is True and calls[-1] == {"resume": False, "force": True}
        assert train_method(other, "multitask", run, zoo=zoo) is False  # a zoo given is the one read


def test_run_fingerprint_multitask_only_keys_concern_multitask_alone(tmp_path, monkeypatch):
    """A change to a key only multitask's training reads (its learning rate, schedule, λ) makes the
    multitask run stale but leaves B1's and B2's valid; a key of the shared condition encoding makes
    every run stale. The keys listed as multitask-only are section fields that the B1/B2 trainers
    never read."""
    import re

    import llgbm_cli
    from llgbm_cli.config import MultitaskSection, load_config
    from llgbm_cli.services.cv import MULTITASK_ONLY, run_fingerprint

    monkeypatch.chdir(tmp_path)
    base = load_config(None, {}).config
    fp = {m: run_fingerprint(base, m) for m in ("multitask", "b1", "b2")}
    for key, value in (("learning_rate", 0.5), ("lr_schedule", "constant"), ("lambda_delta", 7.0)):
        other = load_config(None, {f"train.multitask.{key}": value}).config
        assert run_fingerprint(other, "multitask") != fp["multitask"], key
        assert run_fingerprint(other, "b1") == fp["b1"] and run_fingerprint(other, "b2") == fp["b2"], key
    shared = load_config(None, {"train.multitask.max_text_length": 64}).config
    assert all(run_fingerprint(shared, m) != fp[m] for m in fp)
    assert MULTITASK_ONLY <= set(MultitaskSection.model_fields)
    root = Path(llgbm_cli.__file__).parent
    for src in (root / "services" / "train_delta_only.py", root / "training" / "trainer.py",
                root / "training" / "methods" / "b1.py", root / "training" / "methods" / "b2.py"):
        text = src.read_text()
        read = set(re.findall(r"(?:\bmt|train\.multitask)\.([a-z_]+)", text))
        assert not (read & MULTITASK_ONLY), (src.name, read & MULTITASK_ONLY)


@pytest.mark.slow
def test_two_accelerate_processes_cross_validate_as_one(tmp_path, cv_world, cv_one):
    """Two gloo processes, a fold each (trained, evaluated and scored alone), give the one-process
    results, per-question scores and generators."""
    import os
    import subprocess

    from conftest import launch_cmd

    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    folds = ["arc-easy", "boolq"]
    out = tmp_path / "two"
    tail = ["llgbm_cli", "-p", cv_world, "--quiet", "--json", "eval", *FOLDS_ARGS, "--out", out]
    r = subprocess.run(launch_cmd(tail, 2), capture_output=True, text=True, env=env, cwd=cv_world.parent, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.splitlines() if line.startswith("{")]
    assert len(lines) == 1  # only the main process reports
    two = json.loads(lines[0])
    assert two["processes"] == 2 and two["ran"] == folds
    assert sorted(two["trained"]) == [f"{k}/multitask" for k in folds]

    def snapshot(o: Path) -> dict:
        res = json.loads((o / "results.json").read_text())
        assert res.pop("processes") in (1, 2)
        res.pop("ran"), res.pop("skipped"), res.pop("trained")  # the one-process run was resumed since
        got = {"results": json.loads(json.dumps(res).replace(str(o), "<out>"))}
        for k in folds:
            got[k] = ((o / "folds" / k / "questions.json").read_text(),
                      (o / "folds" / k / "runs" / "multitask" / "final" / "generator.safetensors").read_bytes())
            assert json.loads((o / "folds" / k / "eval" / "llgbm.json").read_text())["processes"] == 1  # alone
        return got

    assert snapshot(out) == snapshot(cv_one[0])


PROCESS_ERRORS = """
import functools, os, sys

from llgbm_cli.distributed import IndependentProcesses
from llgbm_cli.errors import InputError

p = IndependentProcesses()
log = open(os.path.join(sys.argv[1], f"rank{p.rank}.txt"), "w")  # the processes' stdout interleaves
print = functools.partial(print, file=log, flush=True)
print(p.rank, "prepared", p.on_main(lambda: "ready"))
print(p.rank, "each", p.each(list("abcde"), lambda x: x.upper() + str(p.rank)))

def refuse():
    raise InputError("out: not a cross-validation folder", hint="pick another --out")

for step in (lambda: p.on_main(refuse), lambda: p.each(list("abcd"), lambda x: 1 / (x != "d"))):
    try:
        step()
    except Exception as e:
        print(p.rank, "raised", type(e).__name__, getattr(e, "exit_code", None), str(e))
"""


def test_processes_meet_repeatedly_and_share_a_failure(tmp_path):
    """Processes of a launch meet several times; a refusal on the main process and a failure in
    one process's share stop every process (exit code kept) instead of leaving one waiting."""
    import os
    import subprocess

    from conftest import launch_cmd

    script = tmp_path / "meet.py"
    script.write_text(PROCESS_ERRORS)
    cmd = launch_cmd(["llgbm_cli"], 2)
    cmd = cmd[: cmd.index("-m", 4)] + [str(script), str(tmp_path)]  # the script in place of `-m llgbm_cli`
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    lines = sorted((tmp_path / "rank0.txt").read_text().splitlines() + (tmp_path / "rank1.txt").read_text().splitlines())
    assert lines == [
        "0 each ['A0', 'B1', 'C0', 'D1', 'E0']", "0 prepared ready",
        "0 raised InputError 2 out: not a cross-validation folder",
        "0 raised LlgbmError 1 another process of the launch failed: ZeroDivisionError: division by zero",
        "1 each ['A0', 'B1', 'C0', 'D1', 'E0']", "1 prepared ready",
        "1 raised LlgbmError 2 out: not a cross-validation folder",
        "1 raised ZeroDivisionError None division by zero",
    ]


LEAVE_AT_EXIT = """
import atexit, os, sys, time

import torch.distributed as tdist

def report():  # registered first, so it runs after the handlers llgbm registers
    with open(os.path.join(sys.argv[1], f"exit{os.environ['RANK']}.txt"), "w") as f:
        f.write(f"initialized={tdist.is_initialized()}")

atexit.register(report)
from llgbm_cli.distributed import ProcessGroup

g = ProcessGroup("cpu")
assert g.gather([g.rank]) == [0, 1]
if g.is_main:
    time.sleep(1.0)  # the other process exits first, as eval's non-main processes do
"""


def test_process_group_is_left_before_the_interpreter_exits(tmp_path):
    """A gloo group left to the interpreter's teardown aborts its process now and then (SIGABRT,
    'terminate called without an active exception') after the work is done; every process of a
    launch destroys the group at exit instead."""
    import os
    import subprocess

    from conftest import launch_cmd

    script = tmp_path / "leave.py"
    script.write_text(LEAVE_AT_EXIT)
    cmd = launch_cmd(["llgbm_cli"], 2)
    cmd = cmd[: cmd.index("-m", 4)] + [str(script), str(tmp_path)]
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"},
                       timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "terminate called" not in r.stderr
    for rank in (0, 1):
        assert (tmp_path / f"exit{rank}.txt").read_text() == "initialized=False"


def test_a_trained_method_registered_in_one_place_runs_under_cross_validation(cli, cv_world, tmp_path):
    """A trained method declared by one TrainedMethod alone (trainer, builder, checks here in the test)
    is valid for eval, trained per fold without the fold's task, reused on a rerun, checked, and put
    beside base and mean-delta with its exact test, with no other module touched."""
    from llgbm_cli import workdir
    from llgbm_cli.adapters import load_adapter, save_adapter
    from llgbm_cli.evaluation.checks import check
    from llgbm_cli.io import atomic_write_json
    from llgbm_cli.merging import merge_adapters
    from llgbm_cli.services.eval_methods import Built, check_methods, refuse_seen
    from llgbm_cli.training import methods as TM
    from llgbm_cli.zoo_manifest import Zoo

    trained_runs = []

    def train(resolved, *, out_dir, force, progress=None):
        # the trained method: the linear mean of the teachers of every task it may see
        held = resolved.config.train.delta_only.holdout_tasks
        zoo = Zoo.load(workdir.path(resolved, "zoo"))
        entries = [e for e in zoo.entries if e.task not in held]
        save_adapter(out_dir, merge_adapters([load_adapter(zoo.path_of(e)) for e in entries], "linear"), force=force)
        atomic_write_json(out_dir / "trained_on.json", sorted({e.task for e in entries}))
        (out_dir / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 0.5}) + "\n")
        trained_runs.append(sorted(held))

    def build(ctx, method, tasks):
        folder = ctx.checkpoints[method]
        seen = json.loads((folder / "trained_on.json").read_text())
        refuse_seen(method, folder, seen, ctx.world.holdout, "delta_only")
        ad = load_adapter(folder)
        return Built({t: ad for t in tasks}, {t: t not in seen for t in tasks}, {t: str(folder) for t in tasks},
                     {"checkpoint": str(folder), "trained_on": seen})

    def checks(label, rows, provenance, checkpoint):
        return [check(f"{label} saved its mean", (checkpoint / "trained_on.json").exists(), "trained_on.json")]

    TM.register(TM.TrainedMethod(
        "zoo-mean", "the mean of the seen tasks' teachers, made by a training run", section="delta_only",
        what="the zoo-mean run", command="llgbm train zoo-mean", kind="zoo-mean run", markers=("trained_on.json",),
        train=train, build=build, checks=checks, checkpoint_help="zoo-mean folder.", generates=False, final=False))
    try:
        assert check_methods(["zoo-mean"]) == ["zoo-mean"]
        out = tmp_path / "cvx"
        r = _run(cli, cv_world, "--folds", "boolq,arc-easy", "-m", "zoo-mean", "--test-sample", "4", "--out", out)
        assert r.exit_code == 0, r.stderr
        res = json.loads(r.stdout)
        assert res["methods"] == ["base", "mean-delta", "zoo-mean"]
        assert res["trained"] == ["boolq/zoo-mean", "arc-easy/zoo-mean"] and trained_runs == [["boolq"], ["arc-easy"]]
        for k in ("boolq", "arc-easy"):
            run = out / "folds" / k / "runs" / "zoo-mean"
            assert json.loads((run / "trained_on.json").read_text()) == sorted(set(TASKS) - {k})
            row = next(x for x in res["rows"] if x["method"] == "zoo-mean" and x["fold"] == k)
            assert row["heldout"] is True and row["n_questions"] == 4 and row["vs_base_test"] == "mcnemar"
            ev = json.loads((out / "folds" / k / "eval" / "results.json").read_text())
            assert "--zoo-mean-checkpoint" in ev["command"]
            assert any(c["name"] == "zoo-mean saved its mean" and c["status"] == "pass" for c in ev["checks"])
            assert any(c["name"].startswith("zoo-mean trains stably") for c in ev["checks"])
        assert "zoo-mean" in (out / "results.md").read_text()
        # a rerun reuses the finished folds and runs: nothing trained again
        r = _run(cli, cv_world, "--folds", "boolq,arc-easy", "-m", "zoo-mean", "--test-sample", "4", "--out", out)
        assert r.exit_code == 0 and json.loads(r.stdout)["skipped"] == ["boolq", "arc-easy"] and len(trained_runs) == 2
    finally:
        TM.unregister("zoo-mean")
    r = _run(cli, cv_world, "--folds", "boolq", "-m", "zoo-mean", "--out", tmp_path / "gone")
    assert r.exit_code == 2 and "unknown method" in r.stderr
