"""The core packages never depend on the embedded demo or the apps: importing them loads neither, and no
core file imports them (``medmvl.demo`` depends on the library, never the reverse)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import medmvl

CORE = ("models", "data", "training", "inference", "evaluation", "interop")
OUTSIDE = ("medmvl.demo", "medmvl.apps", "medmvl.cli")
PACKAGE = Path(medmvl.__file__).parent


def test_importing_the_core_loads_no_demo_module() -> None:
    code = (
        "import sys\n"
        + "".join(f"import medmvl.{p}\n" for p in CORE)
        + f"print(sorted(m for m in sys.modules if m.startswith({OUTSIDE!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True
    )
    assert out.stdout.strip() == "[]", out.stdout


def _imports(path: Path) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def test_no_core_file_imports_the_demo_or_the_apps() -> None:
    files = [f for p in CORE for f in sorted((PACKAGE / p).rglob("*.py"))]
    assert len(files) > 40
    wrong = {
        str(f.relative_to(PACKAGE)): [m for m in _imports(f) if m.startswith(OUTSIDE)]
        for f in files
        if any(m.startswith(OUTSIDE) for m in _imports(f))
    }
    assert not wrong, wrong
