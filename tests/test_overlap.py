"""Train/test overlap (decontamination): `llgbm data overlap` and its enforcement in eval."""

import json

import pytest

from conftest import TINY_TOML
from test_tasks import write_csv

LONG = ("A farmer has {n} red apples and some green apples in a large wooden basket near the old barn, and "
        "his daughter brings him {m} more from the orchard before lunch. How many apples does he have?")


def _rows(prefix: str, n: int):
    return [(f"{prefix} question number {i}?", "yes", "no", "maybe", "A") for i in range(n)]


def _project(tmp_path, *, train_b_extra=(), test_a_extra=(), extra_toml=""):
    """Two CSV tasks, each a train.csv and test.csv; rows planted in B's train split and A's test split."""
    for name, train, test in (("a", _rows("alpha", 6), _rows("alpha test", 4) + list(test_a_extra)),
                              ("b", _rows("beta", 6) + list(train_b_extra), _rows("beta test", 4))):
        d = tmp_path / "data" / name
        d.mkdir(parents=True)
        write_csv(d / "train.csv", train)
        write_csv(d / "test.csv", test)
    tables = "".join(f'\n[tasks.task-{x}]\npath = "data/{x}"\nprompt = "{{q}}"\nchoices = ["{{opt_a}}", "{{opt_b}}", '
                     f'"{{opt_c}}"]\nanswer = "{{gold}}"\n' for x in "ab")
    toml = TINY_TOML.replace('datasets = ["arc-easy", "boolq"]', 'datasets = ["task-a", "task-b"]')
    p = tmp_path / "llgbm.toml"
    p.write_text(toml + tables + extra_toml)
    return p


def test_normalisation_ignores_case_punctuation_and_spacing():
    from llgbm_cli.tasks.overlap import SplitIndex, normalize

    assert normalize("  Which IS a fruit?!  ") == normalize("which is a fruit") == "which is a fruit"
    ix = SplitIndex.build("t", "train", [("r1", "Which is a  FRUIT ? apple chair")])
    assert ix.match("which is a fruit apple, chair")[:2] == ("exact", "r1")
    assert ix.match("which is a vegetable apple chair") is None  # short: the exact rule alone


def test_ngram_rule_and_threshold():
    from llgbm_cli.tasks.overlap import SplitIndex

    ix = SplitIndex.build("t", "train", [("r1", LONG.format(n=12, m=5))])
    near = LONG.format(n=40, m=7)  # the same problem with other numbers: many 13-grams shared
    kind, rid, share = ix.match(near)
    assert (kind, rid) == ("ngram", "r1") and 0 < share < 1
    assert ix.match(near, threshold=share) is None  # the share must be above the threshold
    assert ix.match("A completely different question about the number of trains leaving a station each "
                    "hour of the day and night in the city") is None


def test_planted_duplicates_between_user_tasks_are_found(cli, tmp_path):
    planted_exact = ("ALPHA test question   number 1 ?!", "YES", "no", "Maybe", "A")  # a's test 1, reformatted
    planted_near = (LONG.format(n=3, m=4), "7", "8", "9", "A")
    p = _project(tmp_path, train_b_extra=[planted_exact, planted_near],
                 test_a_extra=[(LONG.format(n=30, m=9), "39", "38", "37", "A")])
    r = cli("-p", p, "--json", "data", "overlap", "task-a", "task-b")
    assert r.exit_code == 1, r.stderr
    rep = json.loads(r.stdout)
    pair = [x for x in rep["pairs"] if (x["test_task"], x["train_task"]) == ("task-a", "task-b")]
    assert len(pair) == 1 and (pair[0]["questions"], pair[0]["exact"], pair[0]["ngram"]) == (2, 1, 1)
    assert rep["per_task"] == {"task-a": {"contaminated": 2, "of": 5}, "task-b": {"contaminated": 0, "of": 4}}
    assert {e["kind"] for e in pair[0]["examples"]} == {"exact", "ngram"}
    # the plain output names the pair and the count
    r = cli("-p", p, "data", "overlap")
    assert r.exit_code == 1 and "task-a" in r.stdout and "2 of 1009 test questions of 4 tasks" in r.stdout  # + the zoo's arc-easy, boolq
    # a clean pair exits 0
    clean = _project(tmp_path / "clean")
    r = cli("-p", clean, "--json", "data", "overlap")
    assert r.exit_code == 0 and json.loads(r.stdout)["contaminated"] == 0


def test_a_user_task_overlapping_a_shipped_one_is_found(cli, tmp_path):
    from llgbm_cli.data import load_dataset

    q = load_dataset("arc-easy", "test")[0]
    copied = (q.stem.upper() + "  ", *q.choices[:3], "A")  # stem and option texts, case and spacing changed
    p = _project(tmp_path, train_b_extra=[copied])
    r = cli("-p", p, "--json", "data", "overlap", "arc-easy", "task-b")
    assert r.exit_code == 1
    pairs = json.loads(r.stdout)["pairs"]
    assert [(x["test_task"], x["train_task"]) for x in pairs] == [("arc-easy", "task-b")]
    # stem + options: the copy has three of ARC's options; ARC-Easy questions are long enough for 13-grams
    # or else equal, so the copy is found either way
    assert pairs[0]["questions"] == 1 and pairs[0]["examples"][0]["test_id"] == q.id


def test_the_shipped_world_has_no_overlap():
    from llgbm_cli.tasks.overlap import overlap_report
    from llgbm_cli.tasks.registry import builtin_registry

    reg = builtin_registry()
    assert len(reg.names()) == 13
    rep = overlap_report(list(reg))
    assert rep["contaminated"] == 0 and rep["pairs"] == []


def test_scored_sample_drops_refuses_or_flags(tmp_path):
    from llgbm_cli.config import load_config
    from llgbm_cli.errors import InputError
    from llgbm_cli.tasks.overlap import scored_sample
    from llgbm_cli.tasks.registry import registry_for

    p = _project(tmp_path, train_b_extra=[("alpha TEST question number 2", "yes", "no", "maybe", "A")])
    res = load_config(p)
    a = registry_for(res).get("task-a")
    recs, info = scored_sample(res, a, ["task-a", "task-b"])
    assert info["contaminated"] == 1 and info["by_train_task"] == {"task-b": 1} and info["scored"] == 3
    assert len(recs) == 3 and info["ids"][0] not in {r.id for r in recs}
    recs, info = scored_sample(res, a, ["task-a", "task-b"], policy="allow")
    assert len(recs) == 4 and info["contaminated"] == 1 and info["scored"] == 4
    with pytest.raises(InputError, match=r"refuse.*1 of the 4 scored task-a.*task-b: 1.*data overlap task-a task-b"):
        scored_sample(res, a, ["task-a", "task-b"], policy="refuse")
    recs, info = scored_sample(res, a, ["task-a"])  # not checked against task-b: nothing found
    assert len(recs) == 4 and info["contaminated"] == 0


def test_eval_drops_and_counts_contaminated_questions(cli, tmp_path):
    p = _project(tmp_path, train_b_extra=[("Alpha test question number 0.", "yes", "no", "maybe", "A"),
                                          ("alpha test question, number 3", "yes", "no", "maybe", "A")],
                 extra_toml='\n[eval]\nmethods = ["base", "teacher", "mean-delta"]\n')
    p.write_text(p.read_text().replace('tasks = ["arc-easy", "boolq"]', 'tasks = ["task-a", "task-b"]')
                 .replace("steps = 6\nwarmup_steps = 2", "steps = 3\nwarmup_steps = 1"))
    for args in (("zoo", "build"), ("cache-deltas",)):
        r = cli("-p", p, "--quiet", *args)
        assert r.exit_code == 0, r.stderr
    # refuse: exit 2 naming the pair, before any work and without an output folder
    r = cli("-p", p, "--quiet", "eval", "--task", "task-a", "--set", "eval.contamination=refuse")
    assert r.exit_code == 2 and "task-a" in r.stderr and "task-b: 2" in r.stderr
    assert not (tmp_path / "runs" / "eval").exists()
    # drop (the default): left out, counted in results.json and results.md
    r = cli("-p", p, "--quiet", "--json", "eval", "--task", "task-a")
    assert r.exit_code in (0, 1), r.stderr
    res = json.loads((tmp_path / "runs" / "eval" / "results.json").read_text())
    (c,) = res["contamination"]
    assert (c["task"], c["sampled"], c["contaminated"], c["scored"]) == ("task-a", 4, 2, 2)
    assert {r["n_questions"] for r in res["rows"]} == {2}
    md = (tmp_path / "runs" / "eval" / "results.md").read_text()
    assert "task-a 2 of 4 (task-b 2), left out." in md
