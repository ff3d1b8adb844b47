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
    # validate, zoo build, cache-deltas, multitask, b1, b2, index, retrieve, eval
    assert len(docs) == 9, [list(d)[:3] for d in docs]
    assert docs[0]["ok"] is True
    assert docs[2]["rows"] == 6 and not docs[2]["failed"]
    index, retrieved, ev = docs[6], docs[7], docs[8]
    assert index["count"] == 4  # the held-out task's 2 adapters are left out
    assert retrieved["hits"] and all(h["task"] != "openbookqa" for h in retrieved["hits"])
    assert retrieved["merged"] is not None
    w = tmp_path / "w"
    assert (w / "merges" / "openbookqa-ties" / "adapter_model.safetensors").exists()
    for f in ("results.json", "results.csv", "results.md"):
        assert (w / "eval" / f).exists()
    methods = {row["method"] for row in json.loads((w / "eval" / "results.json").read_text())["rows"]}
    merged = os.path.relpath(w / "merges" / "openbookqa-ties", REPO)
    assert methods == {"base", "teacher", "mean-delta", "multitask", "b1", "b2", merged}  # the demo's merge is scored
    # a rerun reuses finished work: no teacher is retrained and no delta recomputed (the two steps
    # the demo runs unguarded; the training steps are skipped by the script once their output exists)
    for p in ("multitask/final", "b1/final", "b2/predictor.json"):
        assert (w / "train" / p).exists(), p
    again = []
    for step in (["zoo", "build"], ["cache-deltas"]):
        r2 = subprocess.run([str(Path(sys.executable).parent / "llgbm"), "-p", str(project), "--json", *step],
                            capture_output=True, text=True, env=env, timeout=600)
        assert r2.returncode == 0, r2.stderr[-3000:]
        again.append(json.loads(r2.stdout))
    assert again[0]["built"] == 0 and again[0]["skipped"] == docs[1]["built"] > 0
    assert again[1]["computed"] == 0 and again[1]["reused"] == 6
