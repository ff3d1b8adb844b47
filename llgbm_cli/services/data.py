"""The task registry as the `data` commands show it: list, show a few records, check every record."""

from __future__ import annotations

from typing import Any, Optional

from ..errors import InputError


def list_tasks(resolved) -> list[dict[str, Any]]:
    """One row per registered task; a task whose data cannot be read shows the error instead of sizes."""
    from ..tasks.registry import registry_for

    rows = []
    for t in registry_for(resolved):
        row = t.describe()
        try:
            info = t.split_info()
            row.update(sizes=info.sizes, note=info.note, skipped=len(info.skipped))
        except InputError as e:
            row.update(sizes={}, error=e.message)
        rows.append(row)
    return rows


def show_task(resolved, name: str, split: str = "test", n: int = 3) -> dict[str, Any]:
    """The task's resolved definition and ``n`` records with the model input (before the chat template,
    when the form uses one) and the target."""
    from ..tasks.evaluate import form_for
    from ..tasks.registry import registry_for

    task = registry_for(resolved).get(name)
    recs = task.records(split)[:n]
    info = task.split_info()
    form = form_for(resolved, task)
    tok = _Plain()
    out = []
    for r in recs:
        inp = form.context(tok, r)
        target = r.completion if form.kind == "generate" else form.continuations(r)[r.answer].strip()
        out.append({"id": r.id, "prompt": r.prompt, "input": inp, "target": target,
                    **({"options": list(r.options), "choices": list(r.choices or []), "answer": r.answer}
                       if not r.generative else {"reference": r.gold})})
    return {"task": {**task.describe(), "definition": task.definition(), "chat_template": form.chat_template},
            "sizes": info.sizes, "note": info.note,
            "skipped": info.skipped, "records": out}


def check_task(resolved, name: str) -> dict[str, Any]:
    """Every record of ``name`` read; every bad one listed with its file, line and field."""
    from ..tasks.registry import registry_for

    return registry_for(resolved).get(name).check()


def project_tasks(resolved) -> list[str]:
    """The tasks a project uses: its zoo's tasks, `[data] datasets`, the tasks its probes are drawn
    from and its own `[tasks.NAME]` tables, each once, in that order."""
    from ..deltas.probes import probe_task_names
    from ..tasks.registry import registry_for

    cfg = resolved.config
    reg = registry_for(resolved)
    names = list(cfg.zoo.tasks) + list(cfg.data.datasets)
    names += probe_task_names(cfg.probes.source)
    names += list(getattr(cfg, "tasks", None) or {})
    return list(dict.fromkeys(reg.check(n) for n in names))


def overlap(resolved, tasks: Optional[list[str]] = None, examples: int = 3) -> dict[str, Any]:
    """Every test split of ``tasks`` (default: :func:`project_tasks`) against every train/validation
    split of every one of them, by the rules of :mod:`llgbm_cli.tasks.overlap` with the project's
    `[data] overlap_ngram` and `overlap_threshold`."""
    from ..tasks.overlap import overlap_report
    from ..tasks.registry import registry_for

    reg = registry_for(resolved)
    names = list(dict.fromkeys(reg.check(t) for t in tasks)) if tasks else project_tasks(resolved)
    if not names:
        raise InputError("data overlap: no task to compare; name some (llgbm data overlap TASK...) or set "
                         "[zoo] tasks / [data] datasets")
    d = resolved.config.data
    return overlap_report([reg.get(n) for n in names], n=d.overlap_ngram, threshold=d.overlap_threshold,
                          examples=examples)


class _Plain:
    """Stands in for a tokenizer: shows the input without the chat template (that is the model's to add)."""

    chat_template = None
