"""The layering rules: services and everything below them never pull in the command layer or
Typer, and no module imports another module's private (``_name``) objects."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import llgbm_cli
import llgbm_cli.services

PKG = Path(llgbm_cli.__file__).parent
BELOW_COMMANDS = [p for p in PKG.rglob("*.py") if p.relative_to(PKG).parts[0] not in ("commands", "app.py", "docs_gen.py", "__main__.py")]


def _service_modules() -> list[str]:
    return [f"llgbm_cli.services.{m.name}" for m in pkgutil.iter_modules(llgbm_cli.services.__path__)]


def test_services_do_not_import_commands_or_typer():
    # A fresh interpreter per run, so nothing the test session already imported hides a leak.
    mods = _service_modules()
    assert len(mods) >= 10
    code = (
        "import importlib, sys\n"
        f"for m in {mods!r}:\n"
        "    importlib.import_module(m)\n"
        "bad = sorted(k for k in sys.modules if k == 'typer' or k.startswith('typer.') or k.startswith('llgbm_cli.commands'))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "", f"importing the services pulled in: {out}"


def _imports(path: Path):
    tree = ast.parse(path.read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            yield node, node.module or "", [a.name for a in node.names]
        elif isinstance(node, ast.Import):
            yield node, "", [a.name for a in node.names]


def test_no_module_below_commands_names_commands_or_typer():
    offenders = []
    for p in BELOW_COMMANDS:
        for node, module, names in _imports(p):
            targets = [module] if module else names
            if any(t == "typer" or t.startswith("typer.") or "commands" in t.split(".") for t in targets):
                offenders.append(f"{p.relative_to(PKG)}:{node.lineno}")
    assert offenders == []


def _module_name(p: Path) -> str:
    rel = p.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def test_no_import_cycles_at_module_level():
    """Top-level imports between llgbm_cli modules form no cycle (function-level imports are lazy)."""
    graph: dict[str, set[str]] = {}
    for p in PKG.rglob("*.py"):
        name = _module_name(p)
        pkg = name if p.name == "__init__.py" else name.rsplit(".", 1)[0]
        deps = graph.setdefault(name, set())
        for node in ast.parse(p.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.ImportFrom):
                if node.level:
                    base = pkg.split(".")
                    base = base[: len(base) - (node.level - 1)]
                    mod = ".".join(base + ([node.module] if node.module else []))
                else:
                    mod = node.module or ""
                if mod.startswith("llgbm_cli"):
                    deps.add(mod)
                    deps.update(f"{mod}.{a.name}" for a in node.names)
            elif isinstance(node, ast.Import):
                deps.update(a.name for a in node.names if a.name.startswith("llgbm_cli"))
    graph = {k: {d for d in v if d in graph and d != k} for k, v in graph.items()}
    # A package's __init__ importing its own submodules is not a cycle worth flagging.
    graph = {k: {d for d in v if not d.startswith(k + ".") and not k.startswith(d + ".")} for k, v in graph.items()}
    seen: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[str] = []

    def visit(n: str) -> None:
        seen[n] = 1
        stack.append(n)
        for d in sorted(graph[n]):
            if seen.get(d) == 1:
                cycles.append(" -> ".join(stack[stack.index(d):] + [d]))
            elif d not in seen:
                visit(d)
        stack.pop()
        seen[n] = 2

    for n in sorted(graph):
        if n not in seen:
            visit(n)
    assert cycles == []


def test_no_private_import_across_modules():
    offenders = []
    for p in PKG.rglob("*.py"):
        for node, module, names in _imports(p):
            if isinstance(node, ast.ImportFrom) and module:
                priv = [n for n in names if n.startswith("_") and not n.startswith("__")]
                if priv:
                    offenders.append(f"{p.relative_to(PKG)}:{node.lineno} {module}.{','.join(priv)}")
    assert offenders == []


def test_importing_the_services_does_not_import_torch():
    """`llgbm --help` stays instant: commands import services lazily, services import torch lazily."""
    code = (
        "import importlib, sys\n"
        f"for m in {_service_modules()!r}:\n"
        "    importlib.import_module(m)\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip()
    assert out == "False"


def test_nothing_below_commands_prints():
    """Services and mechanisms return results; only commands (and the progress reporter) write."""
    offenders = []
    for p in BELOW_COMMANDS:
        if p.name == "progress.py":
            continue
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print":
                offenders.append(f"{p.relative_to(PKG)}:{node.lineno} print()")
            if isinstance(node, ast.Attribute) and node.attr in ("stdout", "stderr") and \
                    isinstance(node.value, ast.Name) and node.value.id == "sys":
                offenders.append(f"{p.relative_to(PKG)}:{node.lineno} sys.{node.attr}")
    assert offenders == []
