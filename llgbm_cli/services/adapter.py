"""Adapter inspection: load, validate against the project's base model, summarize."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional


@dataclass
class AdapterReport:
    path: str
    ok: bool
    rank: int
    alpha: float
    modules: int
    parameters: int
    target_modules: list
    sha256: str
    base_model: Optional[str]
    error: Optional[str] = None


def check_adapters(paths: list[str], base: Optional[str], device: str = "cpu") -> list[AdapterReport]:
    """Load each adapter and (when ``base`` is given) check it fits that base model. Every path
    gets a report: a bad one has ``ok`` False and its ``error``; the others are still checked."""
    from ..adapters import load_adapter, validate_against
    from ..errors import InputError
    from ..models import load_base_model

    model = load_base_model(base, device=device)[0] if base else None
    reports = []
    for p in paths:
        try:
            ad = load_adapter(p)
            if model is not None:
                validate_against(ad, model)
        except InputError as e:
            reports.append(AdapterReport(str(Path(p)), False, 0, 0.0, 0, 0, [], "", None, e.message))
            continue
        reports.append(
            AdapterReport(str(Path(p)), True, ad.r, ad.alpha, len(ad.modules), ad.num_parameters(),
                          ad.target_modules, ad.sha256(), ad.base_model)
        )
    return reports


def to_dicts(reports: list[AdapterReport]) -> list[dict]:
    return [asdict(r) for r in reports]
