"""The package's shape: no import cycle between stlser modules (function-level imports
included), and no module much over 500 lines without saying why at its top."""

from __future__ import annotations

import ast
from pathlib import Path

import stlser

PKG = Path(stlser.__file__).parent


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, name: str, modules: set[str]) -> set[str]:
    """stlser modules `path` imports anywhere in its body (top level or inside functions)."""
    is_pkg = path.name == "__init__.py"
    base = name if is_pkg else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                pkg = base.split(".")
                pkg = pkg[: len(pkg) - (node.level - 1)]
                mod = ".".join(pkg + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            # `from pkg import sub` imports pkg.sub; `from mod import name` imports mod
            targets = [
                f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names
            ]
        for t in targets:
            while t and t not in modules:
                t = t.rpartition(".")[0]
            if t and t != name and t != "stlser":
                found.add(t)
    return found


def _graph() -> dict[str, set[str]]:
    files = {_module_name(p): p for p in PKG.rglob("*.py")}
    return {name: _imports(p, name, set(files)) for name, p in files.items()}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for m in sorted(graph.get(n, ())):
            if state.get(m) == 1:
                return stack[stack.index(m) :] + [m]
            if m not in state and (c := visit(m)):
                return c
        stack.pop()
        state[n] = 2
        return None

    for n in sorted(graph):
        if n not in state and (c := visit(n)):
            return c
    return None


def test_graph_sees_function_level_imports():
    g = _graph()
    assert "stlser.training" in g["stlser.kinds.network"]  # imported inside a function
    assert "stlser.runs" in g["stlser.driver"]


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, " → ".join(cycle or [])


def test_a_cycle_would_be_found():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]


def test_no_module_over_600_lines():
    long = {p.name: n for p in PKG.rglob("*.py") if (n := p.read_text().count("\n")) > 600}
    assert not long, long


def test_commands_reach_kinds_only_through_the_registry():
    """No module outside the registry names a kind's module or tests a kind's format."""
    allowed = {"stlser.kinds", "stlser.pretrain", "stlser.finetune"}
    for name, deps in _graph().items():
        if name.startswith("stlser.kinds") or name in allowed:
            continue
        named = {d for d in deps if d.startswith("stlser.kinds.") and d != "stlser.kinds.base"}
        assert not named, f"{name} imports {named}"


def test_long_modules_say_why():
    for path in PKG.rglob("*.py"):
        text = path.read_text()
        if text.count("\n") > 500:
            head = "\n".join(text.splitlines()[:40])
            assert "Why this is one module" in head, f"{path.name}: {text.count(chr(10))} lines"
