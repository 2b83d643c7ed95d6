"""The layers: the core library imports no experiment wing and not the command line; the wings import not the command
line; no module imports, even inside a function, a module that imports it back. No file is exempted."""
import ast
import subprocess
import sys
from pathlib import Path

from ..conftest import REPO

WINGS = ("truthfulqa", "faithfulness", "concepts")
#: Every module at the top of iti/ and the interop formats are the core; the command line is its own package, iti/cli/.
CORE = sorted((REPO / "iti").glob("*.py")) + sorted((REPO / "iti" / "interop").glob("*.py"))
ALL = sorted((REPO / "iti").rglob("*.py"))


def _imported_modules(path: Path) -> set[str]:
    """Absolute module names imported anywhere in a core file (relative imports resolved against its package)."""
    out = set()
    package = list(path.relative_to(REPO).with_suffix("").parts[:-1])  # ["iti"] or ["iti", "interop"]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package[: len(package) - node.level + 1]) or None
                out.add(f"{base}.{node.module}" if node.module else f"{base}.{node.names[0].name}")
            elif node.module:
                out.add(node.module)
        elif isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
    return out


def test_no_core_file_names_a_wing_or_the_command_line():
    above = [["iti", w] for w in (*WINGS, "cli")]
    offenders = {p.name: sorted(m for m in _imported_modules(p) if m.split(".")[:2] in above) for p in CORE}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert {"features.py", "collect.py", "intervention.py", "steering.py", "fitting.py", "probes.py", "bake.py"} <= {p.name for p in CORE}


def test_no_wing_names_the_command_line():
    wings = [p for p in ALL if p.relative_to(REPO / "iti").parts[0] in WINGS]
    assert wings and not {str(p): m for p in wings for m in _imported_modules(p) if m.startswith("iti.cli")}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_no_import_circle():
    """Between modules (a package's __init__ re-exporting its modules is not a circle with them), counting imports
    inside functions too: a lazy import still ties the two modules together."""
    modules = {_module_name(p): p for p in ALL}
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        targets = set()
        for m in _imported_modules(path):
            while m and m not in modules:  # "iti.intervention.Intervention" -> "iti.intervention"
                m = m.rpartition(".")[0]
            if m and m != name and not name.startswith(m + ".") and not (path.name == "__init__.py" and m.startswith(name + ".")):
                targets.add(m)
        graph[name] = {t for t in targets if not modules[t].name == "__init__.py"}
    seen: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        seen[node] = 1
        for nxt in sorted(graph[node]):
            assert seen.get(nxt) != 1, f"import circle: {' -> '.join(stack[stack.index(nxt):] + [nxt])}"
            if nxt not in seen:
                visit(nxt, stack + [nxt])
        seen[node] = 2

    for node in sorted(graph):
        if node not in seen:
            visit(node, [node])
    assert "iti.fitting" in graph["iti.truthfulqa.fit"] and "iti.intervention" in graph["iti.fitting"]


_BLOCKED = """
import importlib.abc, sys
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name.split(".")[:2] in [["iti", w] for w in {wings!r}]:
            raise ImportError(f"core imported the wing module {{name}}")
sys.meta_path.insert(0, Block())
import iti
for m in {modules!r}:
    importlib.import_module("iti." + m)
print("ok", sorted(k for k in sys.modules if k.startswith("iti.")))
"""


def test_the_core_imports_and_runs_with_every_wing_blocked():
    modules = [".".join(p.relative_to(REPO / "iti").with_suffix("").parts) for p in CORE if p.stem != "__init__"]
    code = _BLOCKED.format(wings=WINGS, modules=modules)
    run = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0 and run.stdout.startswith("ok"), run.stderr[-2000:]
    assert not any(f"iti.{w}" in run.stdout for w in WINGS)
