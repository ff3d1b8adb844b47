"""The one held-out-task splitter and `config show`'s table of which task is held out where."""

from __future__ import annotations

import json

import pytest

from llgbm_cli.errors import InputError
from llgbm_cli.holdout import split, split_entries
from llgbm_cli.zoo_manifest import ZooEntry


def _entries():
    return [ZooEntry(id=f"{t}-{i}", path="x", task=t) for t in ("a", "b", "c") for i in range(2)]


def test_split_keeps_order_and_names_the_key():
    es = _entries()
    kept, held = split(es, ["b"], key="train.multitask.holdout_tasks")
    assert [e.id for e in kept] == ["a-0", "a-1", "c-0", "c-1"] and [e.id for e in held] == ["b-0", "b-1"]
    assert split(es, [], key="k") == (es, [])
    with pytest.raises(InputError, match=r"^index.exclude_tasks: zzz not among the zoo's tasks \(a, b, c\)"):
        split(es, ["zzz"], key="index.exclude_tasks")
    with pytest.raises(InputError, match="eval.holdout: every task is held out"):
        split(es, ["a", "b", "c"], key="eval.holdout")


def test_split_by_a_lookup_with_known_tasks():
    ids = ["a-0", "x-9", "b-0"]
    by_id = {"a-0": "a", "b-0": "b"}
    kept, held = split(list(range(3)), ["b"], key="k", task_of=lambda i: by_id.get(ids[i]), known=by_id.values())
    assert kept == [0, 1] and held == [2]


def test_random_share_when_no_task_is_named():
    es = _entries()
    tr, va = split_entries(es, [], 0.5, 0)
    assert len(va) == 3 and not {e.id for e in tr} & {e.id for e in va}
    assert split_entries(es, [], 0.5, 0) == (tr, va)  # seeded


def test_config_show_lists_where_tasks_are_held_out(cli, tiny_project):
    r = cli("-p", tiny_project, "config", "show", "--json",
            "--set", 'eval.holdout=["boolq"]', "--set", 'train.multitask.holdout_tasks=["boolq"]')
    assert r.exit_code == 0, r.stderr
    d = json.loads(r.stdout)
    assert d["holdout"]["eval.holdout"]["tasks"] == ["boolq"]
    assert d["holdout"]["train.multitask.holdout_tasks"]["tasks"] == ["boolq"]
    assert d["holdout"]["index.exclude_tasks"]["tasks"] == []
    assert any("train.delta_only.holdout_tasks does not" in n for n in d["holdout_notes"])
    assert not any("train.multitask" in n for n in d["holdout_notes"])
