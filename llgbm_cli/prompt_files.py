"""Prompt files: the one reader behind `--prompts-file` (generate, retrieve) and probe files.

The rule, everywhere a file of prompts is read:

* ``.jsonl``: one JSON value per non-blank line: a string, or an object whose first string field
  among ``text``, ``prompt``, ``instruction`` (in that order) is the prompt;
* any other suffix (``.txt``): one prompt per non-blank line, kept as written (no stripping, so a
  probe file's fingerprint does not depend on the reader);
* blank lines are skipped; a file with no prompt, a line that is not JSON in a ``.jsonl`` file,
  or an object without one of those fields is an error naming the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

from .errors import InputError

FIELDS = ("text", "prompt", "instruction")
SHAPE = "a .txt file (one prompt per line) or .jsonl (per line a string or an object with a text field)"


def read_prompt_file(path: str | Path, *, label: Optional[str] = None) -> list[str]:
    """The prompts of a file, by the rule above. ``label`` (a flag, e.g. ``--prompts-file``) starts
    the error messages, so the user sees which input was wrong."""
    p = Path(path).expanduser()
    where = f"{label} {p}" if label else str(p)
    if p.is_dir():
        raise InputError(f"{where}: is a folder; give {SHAPE}")
    if not p.is_file():
        raise InputError(f"{where}: no such file")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{where}: not UTF-8 text; give {SHAPE}")
    out = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if p.suffix != ".jsonl":
            out.append(line)
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{p}:{n}: not JSON ({e.msg}); each line of a .jsonl prompt file is a string or an "
                             "object with a text field")
        if isinstance(row, dict):
            row = next((row[k] for k in FIELDS if isinstance(row.get(k), str)), None)
        if not isinstance(row, str):
            raise InputError(f"{p}:{n}: expected a string or an object with a {'/'.join(FIELDS)} string field")
        out.append(row)
    if not out:
        raise InputError(f"{where}: the file is empty (no non-blank line); give at least one prompt")
    return out
