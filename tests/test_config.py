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
    assert (do.predictor_hidden, do.predictor_dropout) == (2048, 0.1)
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
