"""The demo chain, CI-sized: `JSON=1 scripts/demo.sh --fast` through the real `llgbm` executable.

Every step is a subprocess of the installed console script; each prints one JSON object on stdout,
which is parsed here, so the shell-scripting contract (--json, exit codes) is exercised end to end.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO


@pytest.mark.slow
def test_fast_profile_runs_the_whole_chain(tmp_path):
    toml = (REPO / "profiles" / "fast.toml").read_text().replace('workdir = "../runs-fast"', f'workdir = "{tmp_path / "w"}"')
    project = tmp_path / "fast.toml"
    project.write_text(toml)
    env = dict(os.environ, LLGBM_PROJECT=str(project), JSON="1", OMP_NUM_THREADS="1",
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    r = subprocess.run(["bash", str(REPO / "scripts" / "demo.sh"), "--fast"], capture_output=True, text=True,
                       env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    docs = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    # validate, overlap, zoo build, cache-deltas, eval --folds
    assert len(docs) == 5, [list(d)[:3] for d in docs]
    assert docs[0]["ok"] is True
    assert docs[1]["contaminated"] == 0 and docs[1]["tasks"] == ["arc-easy", "boolq", "openbookqa"]
    assert docs[3]["rows"] == 6 and not docs[3]["failed"]
    cv = docs[4]
    assert cv["folds"] == ["openbookqa"] and cv["ran"] == ["openbookqa"]
    assert {r["method"] for r in cv["rows"]} == {"base", "teacher", "mean-delta", "multitask", "b1", "b2"}
    assert cv["oracle"][0]["candidates"] == 2 and cv["oracle"][0]["accuracy"] is not None  # each other task's last teacher
    w = tmp_path / "w" / "eval-cv"
    for f in ("results.json", "results.csv", "results.md", "plots/folds.png", "folds/openbookqa/eval/results.md"):
        assert (w / f).exists(), f
    # the fold's trained methods never saw the held-out task, and every acceptance check is reported
    for m in ("multitask", "b1", "b2"):
        assert (w / "folds" / "openbookqa" / "runs" / f"{m}.json").exists(), m
    names = [c["name"] for c in cv["checks"]["openbookqa"]]
    assert "a generated or retrieved adapter beats base on a task" in names
    assert "## Acceptance checks per fold" in (w / "results.md").read_text()
    # retrieval against the oracle-best: its top hit's task and family, counted in results.md
    b2 = next(r for r in cv["rows"] if r["method"] == "b2")
    assert b2["oracle_task"] == cv["oracle"][0]["adapter_task"] and b2["retrieved"]
    assert b2["picks_oracle_task"] == (b2["retrieved"][0] == b2["oracle_task"])
    assert "`b2`'s top hit is the oracle-best adapter's task on" in (w / "results.md").read_text()
    # a rerun reuses finished work: no teacher is retrained, no delta recomputed, the fold not rerun
    again = []
    for step in (["zoo", "build"], ["cache-deltas"], ["eval", "--folds", "openbookqa"]):
        r2 = subprocess.run([str(Path(sys.executable).parent / "llgbm"), "-p", str(project), "--json", *step],
                            capture_output=True, text=True, env=env, timeout=600)
        assert r2.returncode == 0, r2.stderr[-3000:]
        again.append(json.loads(r2.stdout))
    assert again[0]["built"] == 0 and again[0]["skipped"] == docs[2]["built"] > 0
    assert again[1]["computed"] == 0 and again[1]["reused"] == 6
    assert again[2]["ran"] == [] and again[2]["skipped"] == ["openbookqa"] and again[2]["rows"] == cv["rows"]
