"""Metrics of generative tasks: ``exact_match`` and ``number``.

``number`` extracts one number from the generated text by this rule, then compares it with the
reference within a relative tolerance:

1. The text is cut at the first stop sequence (done by the decoder).
2. If it says ``answer is`` (or ``answer:``), the first number after the last such phrase is taken;
   otherwise the last number in the text.
3. A number is an optional minus sign (``-`` or ``−``), then digits with optional thousands commas
   (``1,234``) and an optional decimal part (``2.5``, ``.5``), or a fraction ``3/4``; a ``$`` before
   it and a unit or full stop after it are ignored (``$1,200.50``, ``12 apples``, ``2.0.``).
4. It matches the reference ``g`` when ``|x - g| <= tolerance * max(1, |g|)``, or when ``x`` is
   written with ``d >= 2`` decimals and equals ``g`` rounded to ``d`` decimals (``1.83`` for 1.8333…).

``exact_match`` compares the text and the reference after trimming, lower-casing, collapsing
white space and dropping a final full stop.
"""

from __future__ import annotations

import re
from typing import Optional

_NUM = re.compile(r"(?<![\w.])[-−]?\$?(?:\d{1,3}(?:,\d{3})+|\d+)?(?:\.\d+)?(?:/\d+)?")
_CUE = re.compile(r"answer\s*(?:is|:|=)", re.IGNORECASE)


def _parse(tok: str) -> Optional[float]:
    t = tok.replace("−", "-").replace("$", "").replace(",", "")
    if not re.search(r"\d", t):
        return None
    try:
        if "/" in t:
            a, b = t.split("/", 1)
            return float(a) / float(b) if float(b) != 0 else None
        return float(t)
    except ValueError:
        return None


def numbers_in(text: str) -> list[tuple[float, str]]:
    """Every number in ``text`` with the way it was written, in order."""
    out = []
    for m in _NUM.finditer(text):
        tok = m.group(0)
        v = _parse(tok)
        if v is not None:
            out.append((v, tok))
    return out


def extract_number(text: str) -> Optional[float]:
    """The answer number of a generated text (see the module doc), or None."""
    return _extract(text)[0]


def _extract(text: str) -> tuple[Optional[float], Optional[str]]:
    cues = list(_CUE.finditer(text))
    if cues:
        after = numbers_in(text[cues[-1].end():])
        if after:
            return after[0]
    nums = numbers_in(text)
    return nums[-1] if nums else (None, None)


def number_match(text: str, reference, tolerance: float = 1e-4) -> bool:
    """Whether the number extracted from ``text`` equals ``reference`` (a number or its text)."""
    value, written = _extract(text)
    ref = reference if isinstance(reference, (int, float)) else extract_number(str(reference))
    if value is None or ref is None:
        return False
    ref = float(ref)
    if abs(value - ref) <= tolerance * max(1.0, abs(ref)):
        return True
    dec = re.search(r"\.(\d+)$", (written or "").replace(",", ""))
    return bool(dec and len(dec.group(1)) >= 2 and round(ref, len(dec.group(1))) == value)


def normalize_text(s: str) -> str:
    s = " ".join(str(s).strip().lower().split())
    return s[:-1].rstrip() if s.endswith(".") else s


def exact_match(text: str, reference) -> bool:
    return normalize_text(text) == normalize_text(reference)


def score_text(metric: str, text: str, reference, tolerance: float = 1e-4) -> bool:
    if metric == "number":
        return number_match(text, reference, tolerance)
    if metric == "exact_match":
        return exact_match(text, reference)
    raise ValueError(f"unknown generative metric {metric!r}; valid: exact_match, number")
