"""Record formats: how a raw row (a dict from a file or a dataset) becomes a task record.

* ``llm-adapters``: ``{"instruction", "input", "output", "answer"}`` as released with LLM-Adapters. A
  multiple-choice instruction ends with ``Answer format: a/b/c`` and lists its options as
  ``Answer1: text Answer2: text``; the parser keeps the question's stem apart from the options so
  the cloze form (``Question: {stem}\\nAnswer:`` + option text) can be built. A generative record
  (no answer format) keeps the instruction as the prompt and ``answer`` as the gold answer.
* ``alpaca``: ``{"instruction", "input", "output"}``; generative only: the prompt is the
  instruction (and input), the target and gold answer are ``output``.
* ``fields``: templates over the row's own columns (``prompt = "{question}"``, ``choices =
  "{choices.text}"`` or a list of templates, ``answer = "{answerKey}"``), see :func:`render`.

No torch import here: ``scripts/build_datapack.py`` and config validation use this module.
"""

from __future__ import annotations

import re
from typing import Any, Optional

_FIELD = re.compile(r"\{([^{}]+)\}")
TRUE_FALSE = ("true", "false")


class RecordError(ValueError):
    """A record that cannot become a task record; ``field`` names the template field or key at fault."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field
        self.message = message


def template_fields(template: str) -> list[str]:
    """The ``{name}`` placeholders of a template (dotted names reach into nested dicts)."""
    return [m.group(1).strip() for m in _FIELD.finditer(template)]


def lookup(row: dict, name: str, field: str) -> Any:
    cur: Any = row
    for part in name.split("."):
        if isinstance(cur, dict) and part in cur:
            cur = cur[part]
        elif isinstance(cur, (list, tuple)) and part.isdigit() and int(part) < len(cur):
            cur = cur[int(part)]
        else:
            keys = ", ".join(sorted(row)) if isinstance(row, dict) else ""
            raise RecordError(field, f"unknown field {{{name}}} in the `{field}` template; the record has: {keys}")
    return cur


def render(template: str, row: dict, field: str) -> Any:
    """Fill ``{name}`` placeholders from ``row``. A template that is exactly one placeholder returns
    the value itself (a list stays a list, a number a number); otherwise values are joined as text."""
    names = template_fields(template)
    if len(names) == 1 and template.strip() == "{" + names[0] + "}":
        return lookup(row, names[0], field)
    return _FIELD.sub(lambda m: _text(lookup(row, m.group(1).strip(), field)), template)


def _text(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def format_number(v: Any) -> str:
    """``2.0`` -> ``2``, ``0.75`` -> ``0.75``: the way a worked answer writes a number."""
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v).strip()
    if f.is_integer():
        return str(int(f))
    return f"{f:.6f}".rstrip("0").rstrip(".")


# --------------------------------------------------------------------------- llm-adapters


def parse_llm_adapters_mc(instruction: str, answer: Optional[str]) -> dict:
    """Split an LLM-Adapters multiple-choice instruction into stem, option labels and option texts.

    True/false questions (BoolQ) get the option texts ``yes``/``no``, the words a cloze prompt
    continues with. Raises RecordError when the instruction has no ``Answer format`` line or the
    answer is not one of its labels.
    """
    instr = instruction.strip()
    m = re.search(r"Answer format:\s*(\S+)\s*$", instr)
    if not m:
        raise RecordError("instruction", "no `Answer format: a/b/...` line, so the options are unknown")
    labels = m.group(1).split("/")
    body = instr[: m.start()].strip()
    if [l.lower() for l in labels] == list(TRUE_FALSE):
        choices = ["yes", "no"]
        first = None
    else:
        choices = []
        for i, lab in enumerate(labels):
            nxt = labels[i + 1] if i + 1 < len(labels) else None
            pat = (rf"{re.escape(lab)}:\s*(.*?)\s*(?={re.escape(nxt)}:|$)" if nxt
                   else rf"{re.escape(lab)}:\s*(.*?)\s*$")
            mm = re.search(pat, body, flags=re.IGNORECASE | re.DOTALL)
            choices.append(mm.group(1).strip() if mm else "")
        first = re.search(rf"{re.escape(labels[0])}:", body, flags=re.IGNORECASE)
    head = body[: first.start()] if first else body
    # The stem follows the instruction's lead-in ("Please choose the correct answer to the question: ").
    lead = re.match(r"^[^:\n]*(?:question|sentence|statement)[^:\n]*:\s*", head, flags=re.IGNORECASE)
    stem = (head[lead.end():] if lead else head).strip()
    if answer is None or not str(answer).strip():
        raise RecordError("answer", "the record has no answer")
    ans = str(answer).strip()
    low = [l.lower() for l in labels]
    if ans.lower() not in low:
        raise RecordError("answer", f"answer {ans!r} is not among the options {'/'.join(labels)}")
    if any(not c for c in choices):
        raise RecordError("instruction", "an option has no text")
    return {"instruction": instr, "stem": stem, "labels": labels, "choices": choices, "answer": low.index(ans.lower())}
