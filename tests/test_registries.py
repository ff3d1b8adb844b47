"""`config validate` checks every name a config gives against its registry, listing the valid ones."""

from __future__ import annotations

import pytest

from conftest import TINY_TOML
from llgbm_cli.errors import InputError
from llgbm_cli.registries import check_generator


def test_validate_lists_every_unknown_name(cli, tmp_path):
    p = tmp_path / "llgbm.toml"
    p.write_text(TINY_TOML + """
[train.delta_only]
generator = "hypernt"

[train.multitask]
generator_options = { chanels = 8 }

[index]
kind = "flatt"

[retrieve]
merge_strategy = "tie"

[eval]
methods = ["base", "bsae"]
""")
    r = cli("-p", p, "config", "validate")
    assert r.exit_code == 2
    err = r.stderr
    assert "5 problems" in err, err
    assert "train.delta_only.generator: unknown generator 'hypernt' (did you mean 'hypernet'?)" in err
    assert "train.multitask.generator_options: unknown option(s) chanels for generator 'hyperconv'" in err
    assert "index.kind: unknown index kind 'flatt'" in err and "flat, hnsw, ivf" in err
    assert "retrieve.merge_strategy: unknown merge strategy 'tie'" in err and "ties" in err
    assert "eval.methods bsae: unknown method (did you mean 'base'?)" in err and "merge:<strategy>" in err
    assert "Traceback" not in err


def test_validate_accepts_the_shipped_profiles(cli):
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    for p in [root / "llgbm.toml", *sorted((root / "profiles").glob("*.toml"))]:
        r = cli("-p", p, "config", "validate")
        assert r.exit_code == 0, (p, r.stderr)


def test_the_all_layer_profile_differs_from_the_research_profile_only_in_its_layout():
    """profiles/research-l30.toml extends profiles/research.toml: resolved, only its workdir, the
    layers it adapts and the per-task steps chosen at that layout differ, so that the two worlds'
    tables compare one setting."""
    from pathlib import Path

    from llgbm_cli.config import load_config, read_toml

    profiles = Path(__file__).resolve().parents[1] / "profiles"
    assert read_toml(profiles / "research-l30.toml")["extends"] == "research.toml"
    research, all_layers = (load_config(profiles / n).to_dict() for n in ("research.toml", "research-l30.toml"))
    assert all_layers["lora"]["last_layers"] == 30 and research["lora"]["last_layers"] == 8
    assert research["zoo"]["per_task"]["piqa"]["steps"] == 96 and all_layers["zoo"]["per_task"]["piqa"]["steps"] == 48
    for d in (research, all_layers):
        del d["project"]["workdir"], d["lora"]["last_layers"], d["zoo"]["per_task"]
    assert research == all_layers


def test_generator_errors_name_the_trainers_section():
    with pytest.raises(InputError, match=r"^train.delta_only.generator_options: unknown option\(s\) depht"):
        check_generator("delta_only", "hyperconv", {"depht": 1})
    with pytest.raises(InputError, match=r"^train.multitask.generator: unknown generator 'x'"):
        check_generator("multitask", "x", {})
    check_generator("delta_only", "hypernet", {})
