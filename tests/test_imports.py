"""The package's import structure: the sandbox is a library, and no module imports itself back.

Read from the source (every ``import`` statement, at the top, inside a
function or under ``TYPE_CHECKING``), not from ``sys.modules``: importing
any ``pytest_isolate`` module runs the package's ``__init__``, which
imports pytest for the public API.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "pytest_isolate"

# What pytest_isolate.container may use outside itself: plain data and errors.
CONTAINER_MAY_IMPORT = {"pytest_isolate.errors", "pytest_isolate.spec", "pytest_isolate.environment"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, *, type_checking: bool = True) -> set[str]:
    """The modules a file imports (``from a import b`` counts ``a.b`` when that is a module)."""
    tree = ast.parse(path.read_text(), str(path))
    skipped: set[int] = set()
    if not type_checking:
        for node in ast.walk(tree):
            if isinstance(node, ast.If) and ast.unparse(node.test) in ("TYPE_CHECKING", "typing.TYPE_CHECKING"):
                skipped.update(id(child) for statement in node.body for child in ast.walk(statement))
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if (PACKAGE.parent / candidate.replace(".", "/")).with_suffix(".py").exists():
                    found.add(candidate)
    return found


def package_modules() -> dict[str, Path]:
    return {module_name(path): path for path in PACKAGE.rglob("*.py")}


def packages() -> set[str]:
    return {module_name(path) for path in PACKAGE.rglob("__init__.py")}


def test_the_container_package_imports_nothing_of_pytest_or_the_runner():
    offending = {}
    for name, path in package_modules().items():
        if not name.startswith("pytest_isolate.container"):
            continue
        bad = sorted(
            module
            for module in imports(path)
            if module.split(".")[0] in ("pytest", "_pytest", "xdist", "pluggy")
            or (
                module.startswith("pytest_isolate")
                and not module.startswith("pytest_isolate.container")
                and module not in CONTAINER_MAY_IMPORT
            )
        )
        if bad:
            offending[name] = bad
    assert offending == {}


def test_no_module_imports_itself_back():
    """No import circle among the package's modules, lazy imports in functions included."""
    modules = package_modules()
    # A submodule that imports its package's other submodules (``from pkg import sibling``) names
    # the package too; the package's __init__ importing that submodule is no circle of ours.
    skip = packages()
    graph = {
        name: sorted(
            module for module in imports(path, type_checking=False) if module in modules and module not in skip | {name}
        )
        for name, path in modules.items()
    }
    circles = []
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in graph[name]:
            if state.get(target) == 1:
                circles.append(" -> ".join([*path[path.index(target):], target]))
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert circles == []
