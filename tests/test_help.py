"""`--help` shows every word of docs/cli.md's entry for the command, brackets included.

docs/cli.md is generated from the same help strings, so a difference here means the terminal
renderer dropped or rewrote something (rich markup once ate every `[section]` reference).
"""

from __future__ import annotations

import re

import pytest

from conftest import REPO


def _entries() -> dict[str, list[str]]:
    """docs/cli.md: `llgbm CMD` -> the texts its help must show (paragraphs and option helps)."""
    entries: dict[str, list[str]] = {}
    current = None
    for line in (REPO / "docs" / "cli.md").read_text().splitlines():
        m = re.match(r"^#{2,3} `llgbm (.+)`$", line)
        if m:
            current = entries.setdefault(m.group(1), [])
            continue
        if current is None or not line.strip() or line.startswith("| ---") or line.startswith("| argument"):
            continue
        if line.startswith("|"):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            if cells and cells[-1]:
                current.append(cells[-1].replace("\\|", "|"))
        else:
            current.append(line)
    return entries


def _squash(text: str) -> str:
    # The terminal wraps lines (also after a hyphen); compare with all whitespace removed.
    return re.sub(r"\s+", "", text)


ENTRIES = _entries()


def test_docs_list_the_commands():
    assert {"zoo build", "eval", "ablate", "merge", "config validate"} <= set(ENTRIES)


@pytest.mark.parametrize("command", sorted(ENTRIES))
def test_help_matches_docs_entry(cli, command):
    r = cli(*command.split(), "--help")
    assert r.exit_code == 0, r.output
    shown = _squash(r.stdout)
    missing = [t for t in ENTRIES[command] if _squash(t) not in shown]
    assert not missing, f"`llgbm {command} --help` lacks: {missing}"


def test_bracketed_config_references_survive(cli):
    """The words that rich markup used to swallow."""
    assert "[zoo] steps" in " ".join(cli("zoo", "build", "--help").stdout.split())
    assert "Default: [eval] methods" in " ".join(cli("eval", "--help").stdout.split())
    assert "[ablation]" in cli("ablate", "--help").stdout
