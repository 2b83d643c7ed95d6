"""The core library imports no experiment wing: the wings build on the core, never the other way round."""
import ast
import subprocess
import sys
from pathlib import Path

from ..conftest import REPO

WINGS = ("truthfulqa", "faithfulness", "concepts")
#: The application layer (the command line) may import the wings; everything else at the top of iti/ is core.
APP = {"cli.py", "__main__.py"}
CORE = sorted(p for p in (REPO / "iti").glob("*.py") if p.name not in APP) + sorted((REPO / "iti" / "interop").glob("*.py"))


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


def test_no_core_file_names_a_wing():
    offenders = {p.name: sorted(m for m in _imported_modules(p) if m.split(".")[:2] in [["iti", w] for w in WINGS])
                 for p in CORE}
    assert {k: v for k, v in offenders.items() if v} == {}
    assert {"features.py", "collect.py", "intervention.py", "probes.py", "directions.py", "bake.py"} <= {p.name for p in CORE}


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
