import pytest

from llgbm_cli.config import load_config, parse_override, describe_schema, all_keys
from llgbm_cli.errors import ConfigError
from conftest import REPO


def test_shipped_project_file_is_valid():
    cfg = load_config(REPO / "llgbm.toml")
    assert cfg.config.model.base == "smollm2-135m-instruct"
    assert cfg.sources["model.base"] == "file"


def test_defaults_are_the_plans_values(tmp_path):
    from llgbm_cli.config import LlgbmConfig

    c = LlgbmConfig()
    mt = c.train.multitask
    assert (mt.learning_rate, mt.batch_size, mt.delta_batch_size, mt.total_steps, mt.warmup_steps) == (3e-5, 4, 2, 5000, 100)
    assert (mt.lambda_delta, mt.lambda_schedule, mt.lambda_warmup_steps, mt.delta_loss_type) == (1.0, "linear", 500, "mse")
    do = c.train.delta_only
    assert (do.lora_norm_weight, do.lora_variance_weight, do.logit_kl_weight) == (0.01, 0.001, 0.0)
    assert (c.train.b2.hidden, c.train.b2.dropout) == (2048, 0.1)
    assert (c.merge.density, c.merge.drop_rate, c.retrieve.top_k) == (0.5, 0.9, 3)


def test_syntax_error_is_reported(tmp_path):
    p = tmp_path / "llgbm.toml"
    p.write_text("[project\nname = 1\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "TOML syntax error" in e.value.message and str(p) in e.value.message


def test_every_problem_is_listed_together(tmp_path):
    p = tmp_path / "llgbm.toml"
    p.write_text(
        "[project]\nsede = 1\n[lora]\nrank = 'eight'\n[delta]\npool = 'max'\n[merge]\ndensity = 1.5\n[zoo]\ntasks = ['arc-esy']\n"
    )
    with pytest.raises(ConfigError) as e:
        load_config(p)
    probs = e.value.problems
    assert any(s.startswith("project.sede: unknown key") and "project.seed" in s for s in probs)
    assert any(s.startswith("lora.rank:") for s in probs)
    assert any(s.startswith("delta.pool:") for s in probs)
    assert any(s.startswith("merge.density:") for s in probs)
    assert any(s.startswith("zoo.tasks:") and "arc-easy" in s for s in probs)
    assert len(probs) == 5


def test_unknown_section_is_an_error(tmp_path):
    p = tmp_path / "llgbm.toml"
    p.write_text("[modle]\nbase = 'x'\n")
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert "modle: unknown key (did you mean `model`?)" in e.value.message


def test_flags_override_file_and_sources_are_tracked(tmp_path):
    p = tmp_path / "llgbm.toml"
    p.write_text("[lora]\nrank = 4\nalpha = 8.0\n")
    cfg = load_config(p, {"lora.rank": 16})
    assert cfg.config.lora.rank == 16 and cfg.sources["lora.rank"] == "flag"
    assert cfg.config.lora.alpha == 8.0 and cfg.sources["lora.alpha"] == "file"
    assert cfg.sources["lora.dropout"] == "default"


def test_unknown_flag_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(None, {"lora.rnk": 4})
    assert "did you mean `lora.rank`" in e.value.message


def test_parse_override_types():
    assert parse_override("a.b=3") == ("a.b", 3)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=hello") == ("a.b", "hello")
    assert parse_override("a.b=true") == ("a.b", True)


def test_workdir_is_relative_to_project_file(tmp_path):
    p = tmp_path / "sub" / "llgbm.toml"
    p.parent.mkdir()
    p.write_text("[project]\nworkdir = 'out'\n")
    assert load_config(p).workdir == (tmp_path / "sub" / "out").resolve()


def test_schema_rows_have_help():
    rows = describe_schema()
    # `tasks` and `zoo.per_task` are tables of tables: their rows document the keys of one table
    tables = ("tasks.", "zoo.per_task.")
    assert {r["key"] for r in rows if not r["key"].startswith(tables)} == set(all_keys()) - {"tasks", "zoo.per_task"}
    assert {"tasks.<NAME>.path", "tasks.<NAME>.kind", "tasks.<NAME>.metric"} <= {r["key"] for r in rows}
    assert {"zoo.per_task.<NAME>.steps", "zoo.per_task.<NAME>.learning_rate"} <= {r["key"] for r in rows}
    assert all(r["help"] for r in rows)


def test_variants_are_resolved_from_the_data_read_at_load_time(tmp_path):
    # Cross-validation folds and ablation cells resolve the project once per variant; an edit of the
    # file during the run must not reach the later variants.
    p = tmp_path / "llgbm.toml"
    p.write_text('[project]\nseed = 3\n[train.multitask]\ntotal_steps = 40\nwarmup_steps = 4\n')
    resolved = load_config(p, {"train.multitask.learning_rate": 0.01})
    p.write_text('[project]\nseed = 9\n[train.multitask]\ntotal_steps = 7\n')  # edited meanwhile
    v = resolved.with_overrides({"train.multitask.learning_rate": 0.02, "eval.test_sample": 5})
    assert v.config.project.seed == 3 and v.config.train.multitask.total_steps == 40
    assert v.config.train.multitask.learning_rate == 0.02 and v.config.eval.test_sample == 5
    assert v.path == resolved.path and v.root == resolved.root and v.sources["project.seed"] == "file"
    assert v.sources["eval.test_sample"] == "flag" and v.sources["train.multitask.warmup_steps"] == "file"
    p.unlink()  # gone altogether: still the data it was read from
    again = resolved.with_overrides({})
    assert again.config.project.seed == 3 and again.config.train.multitask.learning_rate == 3e-5
    with pytest.raises(ConfigError, match="warmup_steps"):  # a variant is validated like the file
        resolved.with_overrides({"train.multitask.total_steps": 3})


def _extends_world(tmp_path):
    """base.toml <- mid.toml <- top.toml, each in its own folder level."""
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "base.toml").write_text(
        '[project]\nname = "base"\nworkdir = "runs-base"\nseed = 5\n'
        '[zoo]\ntasks = ["arc-easy", "boolq", "piqa"]\nsteps = 40\nwarmup_steps = 20\n'
        '[zoo.per_task.piqa]\nsteps = 80\nwarmup_steps = 40\n'
        '[train.multitask]\ntotal_steps = 30\nwarmup_steps = 3\n')
    (tmp_path / "mid.toml").write_text(
        'extends = "shared/base.toml"\n[zoo]\ntasks = ["arc-easy", "boolq"]\n'
        '[zoo.per_task.boolq]\nsteps = 60\nwarmup_steps = 30\n')
    top = tmp_path / "top.toml"
    top.write_text('extends = "mid.toml"\n[project]\nworkdir = "runs-top"\n[zoo.per_task.piqa]\nsteps = 120\n')
    return top


def test_a_profile_extends_another_key_by_key(tmp_path):
    top = _extends_world(tmp_path)
    r = load_config(top)
    c = r.config
    # tables merge key by key through the chain; an array replaces the inherited one whole
    assert (c.project.name, c.project.workdir, c.project.seed) == ("base", "runs-top", 5)
    assert c.zoo.tasks == ["arc-easy", "boolq"] and c.zoo.steps == 40
    assert (c.zoo.per_task["piqa"].steps, c.zoo.per_task["piqa"].warmup_steps) == (120, 40)
    assert c.zoo.per_task["boolq"].steps == 60 and c.train.multitask.total_steps == 30
    # relative paths are the named file's folder's; every value the chain sets counts as the file's
    assert r.workdir == (tmp_path / "runs-top").resolve() and r.path == top.resolve()
    assert r.sources["project.seed"] == "file" and r.sources["zoo.steps"] == "file"
    assert r.sources["train.multitask.learning_rate"] == "default"
    assert r.origin("project.seed") == "base.toml: project.seed"
    assert r.origin("zoo.tasks") == "mid.toml: zoo.tasks" and r.origin("project.workdir") == "top.toml: project.workdir"
    # variants (folds, cells) are resolved from the merged data, edits of any file ignored
    (tmp_path / "shared" / "base.toml").write_text("[project]\nseed = 99\n")
    v = r.with_overrides({"eval.test_sample": 7})
    assert v.config.project.seed == 5 and v.origin("project.seed") == "base.toml: project.seed"


def test_config_show_names_the_file_each_inherited_value_came_from(tmp_path, cli):
    import json

    top = _extends_world(tmp_path)
    r = cli("-p", top, "--json", "config", "show")
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    assert shown["sources"]["project.seed"] == "file"
    assert shown["inherited"]["project.seed"] == str((tmp_path / "shared" / "base.toml").resolve())
    assert shown["inherited"]["zoo.tasks"] == str((tmp_path / "mid.toml").resolve())
    assert "project.workdir" not in shown["inherited"] and "zoo.batch_size" not in shown["inherited"]
    plain = cli("-p", top, "config", "show")
    assert plain.exit_code == 0 and "file (base.toml)" in plain.stdout


def test_bad_extends_are_one_line_usage_errors(tmp_path, cli):
    a, b = tmp_path / "a.toml", tmp_path / "b.toml"
    a.write_text('extends = "b.toml"\n')
    b.write_text('extends = "a.toml"\n')
    with pytest.raises(ConfigError, match=r"extends: a\.toml -> b\.toml -> a\.toml is a cycle"):
        load_config(a)
    r = cli("-p", a, "config", "validate")
    assert r.exit_code == 2 and "is a cycle" in r.stderr and "Traceback" not in r.stderr
    a.write_text('extends = "nope.toml"\n')
    with pytest.raises(ConfigError, match=r"a\.toml: extends: 'nope\.toml': no such file"):
        load_config(a)
    a.write_text('extends = 3\n')
    with pytest.raises(ConfigError, match="extends: expected the path of another project file"):
        load_config(a)
    a.write_text('extends = "a.toml"\n')  # itself
    with pytest.raises(ConfigError, match="is a cycle"):
        load_config(a)


def test_a_bad_inherited_value_names_the_file_that_set_it(tmp_path):
    (tmp_path / "base.toml").write_text("[lora]\nrank = 'eight'\n")
    top = tmp_path / "top.toml"
    top.write_text('extends = "base.toml"\n[zoo]\nsteps = -1\n')
    with pytest.raises(ConfigError) as e:
        load_config(top)
    msg = e.value.message
    assert msg.startswith(f"{top.resolve()}: 2 problems")
    assert "lora.rank (set in base.toml, which this file extends):" in msg
    assert "\n  zoo.steps:" in msg


def test_b2_keys_of_train_delta_only_are_read_as_train_b2_with_a_notice(tmp_path, caplog):
    """The predictor's settings moved to [train.b2]: train.delta_only.predictor_* (file or --set) are
    still read, as the new key, with a one-line notice; both at once is an error; run fingerprints see
    the old layout, so runs made before the move stay valid."""
    import logging

    from llgbm_cli.config import fingerprint_view, load_config

    p = tmp_path / "llgbm.toml"
    p.write_text("[train.delta_only]\npredictor_epochs = 7\npredictor_hidden = 16\n")
    with caplog.at_level(logging.WARNING):
        r = load_config(p, {"train.delta_only.predictor_dropout": 0.0})
    assert (r.config.train.b2.epochs, r.config.train.b2.hidden, r.config.train.b2.dropout) == (7, 16, 0.0)
    said = " ".join(m.getMessage() for m in caplog.records)
    assert "train.delta_only.predictor_epochs is read as train.b2.epochs" in said
    assert "train.delta_only.predictor_dropout is read as train.b2.dropout" in said
    assert r.origin("train.b2.dropout") == "--set train.delta_only.predictor_dropout=0.0"
    p.write_text("[train.delta_only]\npredictor_epochs = 7\n[train.b2]\nepochs = 9\n")
    with pytest.raises(ConfigError, match="train.delta_only.predictor_epochs: also given as train.b2.epochs"):
        load_config(p)
    view = fingerprint_view(r.to_dict())
    assert "b2" not in view["train"] and view["train"]["delta_only"]["predictor_epochs"] == 7
    assert view["train"]["delta_only"]["predictor_val_fraction"] == 0.2
