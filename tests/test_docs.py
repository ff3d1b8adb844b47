"""docs/config.md and docs/cli.md are generated from the code; they must not go stale."""

import subprocess
import sys

from conftest import REPO


def test_generated_docs_are_current():
    r = subprocess.run([sys.executable, "-m", "llgbm_cli.docs_gen", "--check"], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr


def test_every_command_documents_json_and_exit_codes():
    text = (REPO / "docs" / "cli.md").read_text()
    assert "Exit codes" in text and "`--json`" in text
    for cmd in ("zoo build", "cache-deltas", "train multitask", "train delta-only", "index build", "retrieve",
                "merge", "eval", "ablate", "generate"):
        assert f"### `llgbm {cmd}`" in text, cmd
