"""The house rules that no linter checks for us: module and function size, private names staying private, and
the import-linter layer contracts actually failing on a violation."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("app", "functions", "release", "monitoring", "handlers", "schemas")
CHECKED = (*PACKAGES, "tests", "bench")
MAX_FILE_LINES = 400
MAX_FUNCTION_LINES = 60
#: A file that must stay longer says why on a line starting with this marker.
SIZE_EXCEPTION = "# size-exception:"


def _sources() -> list[Path]:
    return sorted(p for top in CHECKED for p in (ROOT / top).rglob("*.py")
                  if "migrations" not in p.parts and ".venv" not in p.parts)


def test_no_source_file_is_over_400_lines_unless_it_says_why():
    """Small modules with one job: a file over 400 lines must carry a size-exception line saying why."""
    long = [f"{p.relative_to(ROOT)}: {n} lines" for p in _sources()
            if (n := p.read_text().count("\n")) > MAX_FILE_LINES and SIZE_EXCEPTION not in p.read_text()]
    assert long == []


def test_no_function_is_over_60_lines_unless_its_file_says_why():
    """Functions stay readable on one screen; the file's size-exception line is the only way past the limit."""
    long = []
    for path in _sources():
        text = path.read_text()
        if SIZE_EXCEPTION in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                length = (node.end_lineno or node.lineno) - node.lineno + 1
                if length > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {length} lines")
    assert long == []


def test_no_module_imports_another_modules_private_names():
    """``from x import _name`` reaches into another module's internals; share it under a public name instead."""
    ours = (*PACKAGES, "tests", "bench")
    offenders = []
    for path in _sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.ImportFrom) and node.module and node.level == 0
                    and node.module.split(".")[0] in ours):
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {node.module}.{alias.name}"
                              for alias in node.names if alias.name.startswith("_") and not alias.name.startswith("__")]
    assert offenders == []


def _lint_imports(tree: Path) -> subprocess.CompletedProcess[str]:
    lint = Path(sys.executable).with_name("lint-imports")
    return subprocess.run([str(lint), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree,
                          env={"PATH": str(lint.parent), "PYTHONPATH": str(tree)}, capture_output=True, text=True,
                          timeout=240, check=False)


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The packages and the contracts copied aside, so a test can break them without touching the checkout."""
    tree = tmp_path_factory.mktemp("layers")
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    return tree


@pytest.mark.parametrize(("module", "source", "contract"), [
    ("release/violation.py", "import monitoring.monitor\n", "Layers"),
    ("monitoring/violation.py", "import app.cli\n", "Layers"),
    ("monitoring/violation.py", "import functions.main\n", "Layers"),
    ("handlers/violation.py", "import release.registry\n", "Serving pods ship without the control plane"),
    ("release/violation.py", "import google.cloud.storage\n", "Cloud SDKs only in adapters"),
])
def test_lint_imports_fails_on_a_deliberate_violation(tree_copy: Path, module: str, source: str, contract: str):
    """The contracts `make lint` runs hold for the tree as it is, and break when a module crosses a layer."""
    violation = tree_copy / module
    violation.write_text(source)
    try:
        broken = _lint_imports(tree_copy)
    finally:
        violation.unlink()
    assert broken.returncode != 0, broken.stdout
    assert f"{contract}" in broken.stdout and "BROKEN" in broken.stdout


def test_lint_imports_passes_on_the_tree_as_it_is(tree_copy: Path):
    """Without the violation every contract is kept (so the failures above come from the violation alone)."""
    kept = _lint_imports(tree_copy)
    assert kept.returncode == 0, kept.stdout
