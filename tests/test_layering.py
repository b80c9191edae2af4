"""The import rules of ../shared/ARCHITECTURE.md, checked on the source (static, no import)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OURS = {"scanfort", "protocol", "cipher", "agent", "service", "gateway"}

# Which of our packages each package may import (itself always).
ALLOWED: dict[str, set[str]] = {
    "protocol": set(),
    "cipher": set(),
    "agent": {"cipher", "protocol"},
    "service": {"protocol"},
    "gateway": {"cipher", "protocol"},
    "scanfort": OURS,
}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found & OURS


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_what_the_architecture_allows(package: str) -> None:
    sources = sorted((ROOT / package).rglob("*.py"))
    assert sources, f"no sources under {package}/"
    bad = {
        str(path.relative_to(ROOT)): sorted(_imports(path) - ALLOWED[package] - {package})
        for path in sources
    }
    assert {k: v for k, v in bad.items() if v} == {}


def test_protocol_is_standard_library_only() -> None:
    import sys

    for path in sorted((ROOT / "protocol").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module] if isinstance(node, ast.ImportFrom)
                     and node.level == 0 and node.module else [])
            for name in names:
                top = name.split(".")[0]
                assert top == "protocol" or top in sys.stdlib_module_names, (path, name)

