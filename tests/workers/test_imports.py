"""workers/ has no import circle: base.py (the interface) imports no worker module, and the module
graph of meshnode.workers, read from the source, has no cycle (the registry imports the built-ins, not
the other way round)."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "meshnode" / "workers"


def graph() -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        deps: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                if node.module:
                    deps.add(node.module.split(".")[0])
                else:
                    deps.update(alias.name for alias in node.names)
        out[path.stem] = deps & {p.stem for p in PACKAGE.glob("*.py")}
    return out


def test_base_imports_no_worker_and_workers_have_no_cycle() -> None:
    g = graph()
    assert g["base"] == set(), g["base"]
    assert "registry" not in {d for deps in g.values() for d in deps}
    done: set[str] = set()

    def visit(node: str, stack: tuple[str, ...]) -> None:
        assert node not in stack, f"import cycle: {' -> '.join(stack + (node,))}"
        if node in done:
            return
        for dep in g.get(node, ()):
            visit(dep, stack + (node,))
        done.add(node)

    for node in g:
        visit(node, ())
