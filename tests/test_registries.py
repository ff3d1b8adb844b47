"""Every config load checks each name a config gives against its registry, listing the valid ones; a
problem with a value a flag gave names that flag."""

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
    assert "eval.methods: bsae: unknown method (did you mean 'base'?)" in err and "merge:<strategy>" in err
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


BAD_NAMES = """
[train.multitask]
generator = "hypernt"

[index]
kind = "flatt"

[eval]
methods = ["base", "bsae"]
"""


@pytest.mark.parametrize("args", [["config", "show"], ["train", "multitask", "--dry-run"], ["config", "workdir"]],
                         ids=["config-show", "train-dry-run", "config-workdir"])
def test_every_config_load_reports_unknown_names_together(cli, tmp_path, args):
    """Not only `config validate`: any command's load lists every unknown name with the valid ones."""
    p = tmp_path / "llgbm.toml"
    p.write_text(TINY_TOML + BAD_NAMES)
    r = cli("-p", p, *args)
    assert r.exit_code == 2, r.stdout + r.stderr
    err = r.stderr
    assert "3 problems" in err and str(p) in err, err
    assert "train.multitask.generator: unknown generator 'hypernt' (did you mean 'hypernet'?); valid: hyperconv, " \
           "hypernet" in err
    assert "index.kind: unknown index kind 'flatt' (did you mean 'flat'?); valid: flat, hnsw, ivf, ivfpq" in err
    assert "eval.methods: bsae: unknown method" in err and "valid: base, teacher, mean-delta" in err
    assert "Traceback" not in err


def test_unknown_names_are_reported_beside_type_errors_and_under_their_flag(cli, tiny_project):
    r = cli("-p", tiny_project, "config", "show", "--set", "lora.rank=0", "--set", "retrieve.merge_strategy=tie")
    assert r.exit_code == 2
    assert "--set lora.rank=0: Input should be greater than or equal to 1" in r.stderr
    assert "--set retrieve.merge_strategy=tie: unknown merge strategy 'tie' (did you mean 'ties'?)" in r.stderr


@pytest.mark.parametrize("args,flag,text", [
    (["train", "multitask", "--steps", "0", "--dry-run"], "--steps", "greater than or equal to 1"),
    (["train", "multitask", "--lr", "-1", "--dry-run"], "--lr", "greater than 0"),
    (["train", "multitask", "--generator", "hypernt", "--dry-run"], "--generator", "unknown generator 'hypernt'"),
    (["train", "delta-only", "--variant", "b3", "--dry-run"], "--variant", "'b1' or 'b2'"),
    (["index", "build", "--kind", "nope"], "--kind", "unknown index kind 'nope'; valid: flat, hnsw, ivf, ivfpq"),
    (["cache-deltas", "--pool", "max"], "--pool", "'last_token' or 'mean'"),
    (["cache-deltas", "--probe-count", "0"], "--probe-count", "greater than or equal to 1"),
    (["eval", "--test-sample", "0"], "--test-sample", "greater than or equal to 1"),
    (["ablate", "--steps", "0", "--dry-run"], "--steps", "greater than or equal to 1"),
    (["zoo", "build", "--checkpoints", "50"], "--checkpoints", "50 checkpoints do not fit"),
], ids=lambda v: " ".join(v) if isinstance(v, list) else None)
def test_a_bad_flag_value_names_the_flag(cli, tiny_project, args, flag, text):
    r = cli("-p", tiny_project, *args)
    assert r.exit_code == 2, r.stdout + r.stderr
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {flag}: "), lines
    assert text in lines[0] and "--set" not in lines[0] and "Traceback" not in r.stderr


def test_each_flag_is_named_beside_the_others_and_a_set_value_keeps_its_set(cli, tiny_project):
    r = cli("-p", tiny_project, "train", "multitask", "--steps", "0", "--lr", "-1", "--dry-run")
    assert r.exit_code == 2
    assert "2 problems" in r.stderr and "\n  --lr: " in r.stderr and "\n  --steps: " in r.stderr
    # the same key given by --set is named by it, not by the flag that could have set it
    r = cli("-p", tiny_project, "zoo", "build", "--set", "zoo.steps=0")
    assert r.exit_code == 2 and "error: --set zoo.steps=0: " in r.stderr, r.stderr


def test_loading_a_config_checks_generator_options_without_torch(tmp_path):
    """The registries are read lazily: a project with generator options loads without torch (or numpy),
    the options read from each generator's source being its constructor's."""
    import inspect
    import json
    import subprocess
    import sys

    from llgbm_cli.generators import generator_names, get_generator_class

    p = tmp_path / "llgbm.toml"
    p.write_text(TINY_TOML + "\n[train.multitask]\ngenerator_options = { depth = 1 }\n"
                 "\n[train.delta_only]\ngenerator = \"hypernet\"\ngenerator_options = { hidden = 8 }\n")
    code = (
        "import json, sys\nfrom llgbm_cli.config import load_config\n"
        "from llgbm_cli.generators import generator_names, option_names\n"
        f"load_config({str(p)!r})\n"
        "print(json.dumps([sorted(m for m in ('torch', 'numpy') if m in sys.modules),\n"
        "                  {n: option_names(n) for n in generator_names()}]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    imported, from_source = json.loads(out.stdout)
    assert imported == []
    for name in generator_names():
        params = inspect.signature(get_generator_class(name).__init__).parameters
        assert from_source[name] == [k for k in params if k not in ("self", "tokenizer", "cond_dim")]


def test_ablation_methods_and_cell_methods_are_checked_on_load(cli, tmp_path):
    p = tmp_path / "llgbm.toml"
    p.write_text('[ablation]\nmethods = ["base", "multitsk"]\n[ablation.cells.x]\nset = {}\nmethods = ["bb1"]\n')
    r = cli("--project", p, "config", "show")
    assert r.exit_code == 2
    assert "ablation.methods: multitsk: unknown method (did you mean 'multitask'?)" in r.stderr
    assert "ablation.cells.x.methods: bb1: unknown method (did you mean 'b1'?)" in r.stderr
