"""A project's own tasks through the whole chain, via the real `llgbm` executable on the tiny profile:
one multiple-choice task from a JSON file in the LLM-Adapters format, one from a CSV with its own
column names. zoo build -> cache-deltas (task probes) -> train multitask -> generate --task -> eval --task."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from test_tasks import CSV_ROWS, LA_ROWS

TOML = """
[project]
workdir = "runs"
seed = 0

[model]
base = "tiny-llama"
device = "cpu"

[lora]
rank = 4
alpha = 8.0

[data]
datasets = ["my-json", "my-csv"]
test_sample = 4

[zoo]
tasks = ["my-json", "my-csv"]
steps = 4
warmup_steps = 2
checkpoints = 2
batch_size = 2
condition_prompts = 4

[probes]
source = "task:my-json"
count = 3

[train.multitask]
learning_rate = 1e-2
total_steps = 3
warmup_steps = 1
lambda_warmup_steps = 1
condition_prompts = 2
save_interval = 3
eval_interval = 3
generator_options = { channels = 8, latent_height = 4, latent_width = 8, depth = 1 }

[eval]
methods = ["base", "teacher", "multitask"]
test_sample = 3

[tasks.my-json]
path = "data/mine.json"
test_fraction = 0.3

[tasks.my-csv]
path = "data/quiz.csv"
prompt = "{q}"
choices = ["{opt_a}", "{opt_b}", "{opt_c}"]
answer = "{gold}"
description = "Add one to a number."
"""


@pytest.mark.slow
def test_project_tasks_run_the_whole_chain(cli, tmp_path, monkeypatch):
    data = tmp_path / "data"
    data.mkdir()
    (data / "mine.json").write_text(json.dumps(LA_ROWS))
    with open(data / "quiz.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["q", "opt_a", "opt_b", "opt_c", "gold"])
        w.writerows(CSV_ROWS)
    project = tmp_path / "llgbm.toml"
    project.write_text(TOML)
    exe = Path(sys.executable).parent / "llgbm"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    for k in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        monkeypatch.setenv(k, "1")
    monkeypatch.chdir(tmp_path)

    def run(*args):  # in-process: the subprocess contract of the same chain is test_demo_fast's
        r = cli("-p", project, "--quiet", "--json", *args)
        assert r.exit_code == 0, (args, r.stderr[-3000:])
        return json.loads(r.stdout)

    listed = {t["name"]: t for t in run("data", "list")["tasks"]}
    assert listed["my-csv"]["scoring"] == "choice" and listed["my-json"]["scoring"] == "label"
    assert listed["my-json"]["sizes"] == {"train": 7, "test": 3}
    built = run("zoo", "build")
    assert built["built"] == 4
    cached = run("cache-deltas")
    assert cached["rows"] == 4 and not cached["failed"]
    trained = run("train", "multitask")
    assert trained["steps"] == 3
    out = tmp_path / "gen-csv"
    gen = run("generate", "--task", "my-csv", "-o", str(out))
    assert gen["texts"] == 4 and (out / "adapter_model.safetensors").exists()
    ev = run("eval", "--task", "my-csv")
    rows = json.loads((tmp_path / "runs" / "eval" / "results.json").read_text())["rows"]
    assert {r["method"] for r in rows} == {"base", "teacher", "multitask"}
    assert all(r["task"] == "my-csv" and r["metric"] == "acc" and r["n_questions"] == 2 for r in rows)  # 12 rows: 2 test
    assert ev is not None
    # bad input: an unknown task is one line, exit 2
    r = subprocess.run([str(exe), "-p", str(project), "generate", "--task", "my-cvs", "-o", str(tmp_path / "x")],
                       capture_output=True, text=True, env=env, cwd=tmp_path)
    assert r.returncode == 2 and "did you mean 'my-csv'" in r.stderr and len(r.stderr.strip().splitlines()) == 1
