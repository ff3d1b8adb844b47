"""The work-folder layout: one table names every output, its folder and the command that makes it."""

from __future__ import annotations

import pytest

from llgbm_cli import workdir
from llgbm_cli.config import load_config


def test_every_output_resolves_under_the_workdir(tiny_project):
    resolved = load_config(tiny_project)
    lay = workdir.layout(resolved)
    assert set(lay) == {"zoo", "deltas", "index", "multitask", "b1", "b2", "eval", "ablation", "merges"}
    for key, row in lay.items():
        assert row["made_by"].startswith("llgbm ")
        assert str(workdir.path(resolved, key)) == row["path"]
    assert workdir.path(resolved, "b1") == resolved.workdir / "train" / "b1"
    assert workdir.final_checkpoint(resolved, "multitask") == resolved.workdir / "train" / "multitask" / "final"


def test_config_paths_follow_the_config(tiny_project):
    resolved = load_config(tiny_project, {"delta.cache": "/abs/cache", "eval.out": "ev2"})
    assert str(workdir.path(resolved, "deltas")) == "/abs/cache"
    assert workdir.path(resolved, "eval") == resolved.workdir / "ev2"


def test_hints_name_the_command():
    assert workdir.hint("deltas") == "run `llgbm cache-deltas` first"
    assert workdir.hint("zoo", None) == "run `llgbm zoo build`"
    with pytest.raises(KeyError, match="known: zoo"):
        workdir.path(None, "nope")
