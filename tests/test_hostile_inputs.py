"""Bad and hostile inputs through the real `llgbm` executable, one table.

Each case runs the installed console script as a subprocess on a small project (the CI-sized
profile `profiles/fast.toml`, tiny random Llama) whose zoo is built once for the whole module.
For every case: the exit code, a one-line error on stderr (an optional `hint:` line besides),
no traceback, the key/flag/file named, nothing in the project changed byte for byte and no
temporary or set-aside folder left behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, file_tree

LLGBM = str(Path(sys.executable).parent / "llgbm")



@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny):
    """A project folder: fast profile, a zoo of 2 tasks x 2 random adapters, and bad inputs beside it."""
    from safetensors.torch import load_file, save_file

    from llgbm_cli.adapters import random_adapter, save_adapter
    from llgbm_cli.zoo_manifest import Zoo, ZooEntry

    root = tmp_path_factory.mktemp("hostile")
    w = root / "w"
    toml = (REPO / "profiles" / "fast.toml").read_text().replace('workdir = "../runs-fast"', f'workdir = "{w}"')
    (root / "llgbm.toml").write_text(toml)
    model = tiny[0]
    zoo = Zoo(w / "zoo")
    for t, task in enumerate(["arc-easy", "boolq"]):
        for k in range(2):
            ad = random_adapter(model, r=4, alpha=8.0, seed=10 * t + k, std=0.05)
            aid = f"{task}-{k}"
            save_adapter(w / "zoo" / "adapters" / aid, ad, base_model="tiny-llama")
            zoo.upsert(ZooEntry(id=aid, path=f"adapters/{aid}", task=task, step=k, seed=k, condition=["Q?"]))
    zoo.save()
    (w / "train").mkdir()
    (w / "train" / "notes.txt").write_text("a run folder the user keeps notes in\n")
    # a trained B2 delta predictor: its metrics.jsonl does not make it a training run
    (w / "train" / "b2").mkdir()
    for name, text in (("predictor.json", "{}"), ("metrics.jsonl", '{"epoch": 1}\n'),
                       ("llgbm.json", json.dumps({"command": "train delta-only --variant b2"}))):
        (w / "train" / "b2" / name).write_text(text)
    bad = root / "bad"
    good = random_adapter(model, r=4, alpha=8.0, seed=99, std=0.05)
    save_adapter(bad / "good", good, base_model="tiny-llama")
    save_adapter(bad / "good2", random_adapter(model, r=4, alpha=8.0, seed=98, std=0.05), base_model="tiny-llama")
    # a project whose task name is a path out of the work folder
    (root / "VICTIM").mkdir()
    (root / "VICTIM" / "keep.txt").write_text("an unrelated folder\n")
    (bad / "t.jsonl").write_text('{"question": "q", "choices": ["a", "b"], "answer": 0}\n' * 4)
    (root / "evil.toml").write_text(toml.replace('tasks = ["arc-easy", "boolq", "openbookqa"]',
                                                 'tasks = ["../../../../VICTIM"]')
                                    + f'\n[tasks."../../../../VICTIM"]\npath = "{bad}/t.jsonl"\n')
    # save_adapter refuses NaN: write a NaN into a copy of the good adapter's weights directly
    ts = load_file(str(bad / "good" / "adapter_model.safetensors"))
    key = next(k for k in ts if "lora_B" in k)
    ts[key][0, 0] = float("nan")
    (bad / "nan").mkdir()
    save_file(ts, str(bad / "nan" / "adapter_model.safetensors"), metadata={"format": "pt"})
    (bad / "nan" / "adapter_config.json").write_bytes((bad / "good" / "adapter_config.json").read_bytes())
    # rank in the config disagrees with the tensors
    (bad / "rank").mkdir()
    (bad / "rank" / "adapter_model.safetensors").write_bytes((bad / "good" / "adapter_model.safetensors").read_bytes())
    cfg = json.loads((bad / "good" / "adapter_config.json").read_text())
    cfg["r"] = 8
    (bad / "rank" / "adapter_config.json").write_text(json.dumps(cfg))
    (bad / "binary.toml").write_bytes(bytes(range(256)) * 4)
    (bad / "binary.txt").write_bytes(b"\xff\xfe\x00\x81" * 64)
    (bad / "a-file").write_text("not a folder\n")
    # a generator checkpoint D/final whose parent would be the output
    (bad / "run" / "final").mkdir(parents=True)
    (bad / "run" / "final" / "generator.json").write_text("{}")
    (bad / "run" / "final" / "generator.safetensors").write_bytes(b"\x00" * 16)
    # a corrupt checkpoint: valid-looking meta, garbage weights
    (bad / "corrupt").mkdir()
    (bad / "corrupt" / "generator.json").write_text(json.dumps({"generator": "hyperconv", "cond_dim": 8}))
    (bad / "corrupt" / "generator.safetensors").write_bytes(b"garbage" * 10)
    # a run whose checkpoint state is a pickle that would create a file when unpickled
    import torch

    ck = bad / "evilrun" / "checkpoints" / "step-000001"
    ck.mkdir(parents=True)
    torch.save({"step": 1, "optimizer": _Payload(str(root / "PWNED")), "scheduler": {}, "torch_rng": torch.zeros(1)},
               ck / "trainer_state.pt")
    (ck / "generator.safetensors").write_bytes(b"")
    return root


class _Payload:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):  # unpickling calls open(marker, "w"): the marker file is the proof
        return (open, (self.marker, "w"))


# (id, args, exit code, text the error line must contain, extra check)
CASES = [
    ("cache-into-workdir", ["cache-deltas", "--set", "delta.cache=."], 2, "work folder", None),
    ("cache-into-run-folder", ["cache-deltas", "--set", "delta.cache=train"], 2, "not a delta cache", None),
    ("cache-into-zoo", ["cache-deltas", "--set", "delta.cache=zoo"], 2, "overlaps the input", None),
    ("eval-over-workdir", ["eval", "--out", "{w}", "--force"], 2, "work folder", None),
    ("eval-over-project", ["eval", "--out", "{root}", "--force"], 2, "project", None),
    ("generate-over-its-checkpoint", ["generate", "Q?", "--checkpoint", "{bad}/run/final", "--out", "{bad}/run",
                                      "--force"], 2, "overlaps the input", None),
    ("binary-project-file", ["-p", "{bad}/binary.toml", "config", "validate"], 2, "binary.toml", None),
    ("binary-prompts-file", ["generate", "--prompts-file", "{bad}/binary.txt", "--checkpoint", "{bad}/corrupt",
                             "--out", "{root}/gen1"], 2, "binary.txt", None),
    ("corrupt-generator-checkpoint", ["generate", "Q?", "--checkpoint", "{bad}/corrupt", "--out", "{root}/gen2"],
     2, "generator.json", None),
    ("out-is-a-file", ["merge", "{bad}/good", "{bad}/good2", "--out", "{bad}/a-file"], 2, "is a file", None),
    ("force-over-a-file", ["merge", "{bad}/good", "{bad}/good2", "--out", "{bad}/a-file", "--force"], 2, "is a file",
     None),
    ("merge-nan-adapter", ["merge", "{bad}/nan", "{bad}/good", "--out", "{root}/m1"], 2, "NaN", None),
    ("drop-rate-1", ["merge", "{bad}/good", "{bad}/good2", "--out", "{root}/m2", "--strategy", "dare_linear",
                     "--drop-rate", "1.0"], 2, "--drop-rate", None),
    ("drop-rate-by-set", ["merge", "{bad}/good", "{bad}/good2", "--out", "{root}/m2", "--set", "merge.drop_rate=1.0"],
     2, "--set merge.drop_rate=1.0: 1 drops every entry", None),
    ("rank-above-module", ["merge", "{bad}/good", "{bad}/good2", "--out", "{root}/m3", "--rank", "4096"], 2, "--rank",
     None),
    ("density-from-file", ["-p", "{root}/dense.toml", "merge", "{bad}/good", "{bad}/good2", "--out", "{root}/m4"], 2,
     "dense.toml: merge.density", None),
    ("zoo-checkpoints-too-many", ["zoo", "build", "--checkpoints", "50"], 2, "--checkpoints: 50 checkpoints do not fit", None),
    ("adapter-check-each", ["adapter", "check", "--no-base", "{bad}/nan", "{bad}/good", "{bad}/rank"], 2,
     "2 of 3", "both"),
    ("adapter-rank-mismatch", ["adapter", "check", "--no-base", "{bad}/rank"], 2, "rank 8", None),
    ("zoo-add-rank-mismatch", ["zoo", "add", "{bad}/rank", "--task", "arc-easy"], 2, "rank 8", None),
    ("resume-pickled-state", ["train", "multitask", "--out", "{bad}/evilrun", "--resume"], 2, "trainer_state.pt",
     "pwned"),
    ("resume-pickled-state-b1", ["train", "delta-only", "--variant", "b1", "--out", "{bad}/evilrun", "--resume"], 2,
     "trainer_state.pt", "pwned"),
    ("json-error-object", ["--json", "merge", "{bad}/good", "--out", "{root}/m5", "--density", "2"], 2, "--density: 2 must be",
     "json"),
    # names that are paths never leave their folder
    ("task-name-is-a-path", ["-p", "{root}/evil.toml", "zoo", "build", "--tasks", "../../../../VICTIM"], 2,
     "is not a valid name", None),
    ("eval-task-is-a-path", ["eval", "--task", "../../X"], 2, "../../X", None),
    ("zoo-add-hidden-id", ["zoo", "add", "{bad}/.hidden", "--task", "arc-easy"], 2, "is not a valid name", None),
    # another kind of output is never replaced by a training run
    ("b1-over-b2-predictor", ["train", "delta-only", "--variant", "b1", "--out", "{w}/train/b2", "--force"], 2,
     "is a delta predictor", None),
    ("multitask-over-b2-predictor", ["train", "multitask", "--out", "{w}/train/b2", "--force"], 2,
     "is a delta predictor", None),
    # one input, or one input twice
    ("merge-one-adapter", ["merge", "{bad}/good", "--out", "{root}/m6"], 2, "at least 2 different adapters", None),
    ("merge-same-adapter-twice", ["merge", "{bad}/good", "{bad}/good", "--out", "{root}/m6"], 2,
     "named more than once", None),
    ("zoo-add-same-adapter-twice", ["zoo", "add", "{bad}/good", "{bad}/good", "--task", "arc-easy"], 2, "also that of",
     None),
    # values checked when the project loads
    ("learning-rate-inf", ["train", "multitask", "--set", "train.multitask.learning_rate=inf"], 2,
     "train.multitask.learning_rate=inf: Input should be a finite number", None),
    ("ablation-lambda-negative", ["ablate", "--dry-run", "--set", "ablation.lambda_delta=[-1.0]"], 2,
     "-1.0 is not a valid train.multitask.lambda_delta", None),
    ("ablation-probe-count-0", ["ablate", "--dry-run", "--set", "ablation.probe_count=[0]"], 2,
     "0 is not a valid probes.count", None),
    ("last-layers-beyond-the-model", ["zoo", "build", "--set", "lora.last_layers=50"], 2,
     "lora.last_layers=50: 50 is more than the base model's 2 layers", None),
    # usage errors: one line, and the error object under --json
    ("unknown-command", ["nosuchcommand"], 2, "No such command 'nosuchcommand'", None),
    ("unknown-command-json", ["--json", "nosuchcommand"], 2, "No such command", "json"),
    ("unknown-option-json", ["--json", "merge", "--bogus"], 2, "No such option: --bogus", "json"),
    # -v adds the traceback only: same exit code, same error line, same error object
    ("verbose-bad-input", ["-v", "--json", "merge", "{bad}/nan", "{bad}/good", "--out", "{root}/m1"], 2, "NaN",
     "verbose"),
]


@pytest.mark.parametrize("name,args,code,text,extra", CASES, ids=[c[0] for c in CASES])
def test_hostile_input(world, name, args, code, text, extra):
    root, bad, w = world, world / "bad", world / "w"
    (root / "dense.toml").write_text((root / "llgbm.toml").read_text() + "\n[merge]\ndensity = 3\n")
    before = file_tree(root)
    argv = [a.format(root=root, bad=bad, w=w) for a in args]
    if "--json" not in argv:
        argv = ["--quiet", *argv]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("HF_HUB_DISABLE_PROGRESS_BARS", None)
    r = subprocess.run([LLGBM, *argv], cwd=root, capture_output=True, text=True, env=env, timeout=300)
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert r.returncode == code, r.stderr[-2000:]
    if extra == "verbose":  # the traceback, then the same lines as without -v
        assert "Traceback" in r.stderr
        lines = lines[next(i for i, l in enumerate(lines) if l.startswith("error: ")):]
        extra = "json"
    assert "Traceback" not in "\n".join(lines)
    assert lines and lines[0].startswith("error: "), r.stderr[-2000:]
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), r.stderr[-2000:]
    assert text in lines[0], lines[0]
    assert "internal error" not in lines[0]
    assert file_tree(root) == before  # nothing changed, nothing left behind (temp folders included)
    if extra == "json":
        doc = json.loads(r.stdout)
        assert set(doc) == {"error", "hint", "exit_code"} and doc["exit_code"] == code
        assert doc["error"] == lines[0][len("error: "):]
    if extra == "pwned":
        assert not (root / "PWNED").exists()
    if extra == "both":
        assert "NaN" in lines[0] and "rank 8" in lines[0]
