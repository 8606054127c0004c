"""The tree's shape: no import circles in study/ or trainables/, each room of study/ imports only the rooms
below it (study/__init__.py names them), trainables/ never imports study/, and no module grows past a page.

Every import counts, also one inside a function: a circle through a lazy import is still a circle.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("study", "trainables")
# study/'s rooms, top to bottom: a module may import its own room and the rooms after it.
ROOMS = (
    ("front", ("study.cli", "study.api")),
    ("analysis", ("study.analysis",)),
    ("models", ("study.models",)),
    ("running", ("study.running", "study.tune")),
    ("reading", ("study.reading",)),
    ("folder", ("study.folder",)),
    ("planning", ("study.planning",)),
    ("ground", ("study.errors", "study.names", "study.signals", "study.storage", "study")),
)
MAX_LINES = 520  # "about 500": a module past this does more than one job


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str, known: dict[str, Path]) -> set[str]:
    """The project modules that `path` (module `name`) imports anywhere in its text."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: up from this module's package
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            # `from package import module` imports the module; `from module import name` the module itself
            targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports(path, name, known) for name, path in known.items()}


def circles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, on_stack, stack, found = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(edges.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def room_of(module: str) -> int:
    for position, (_, prefixes) in enumerate(ROOMS):
        # "study" itself (the package's docstring) is ground floor; every other prefix holds what is under it
        if module in prefixes or any(module.startswith(p + ".") for p in prefixes if p != "study"):
            return position
    raise AssertionError(f"{module} is in no room of study/: add it to study/__init__.py and to ROOMS here")


def test_no_import_circles():
    found = circles(graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_the_circle_finder_finds_a_circle():
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert circles({"a": {"b"}, "b": set()}) == []


def test_each_room_of_study_imports_only_the_rooms_below_it():
    wrong = []
    for module, targets in graph().items():
        if not module.startswith("study"):
            continue
        for target in targets:
            if target.startswith("study") and room_of(target) < room_of(module):
                wrong.append(f"{module} ({ROOMS[room_of(module)][0]}) imports {target} ({ROOMS[room_of(target)][0]})")
    assert not wrong, "\n".join(sorted(wrong))


def test_trainables_never_imports_study():
    wrong = [f"{m} imports {t}" for m, targets in graph().items() if m.startswith("trainables")
             for t in targets if t.startswith("study")]
    assert not wrong, wrong


def test_no_module_is_longer_than_a_page_or_so():
    long = {name: n for name, path in modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"
