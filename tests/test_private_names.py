"""No module uses another module's private names (STYLE.md: make it public where it lives).

Read with :mod:`ast`: ``from relay.x import _name``, ``from relay import x`` then
``x._name``, and ``import relay.x as x`` then ``x._name`` are each found, for imports of
the project's own packages (the standard library's ``os._exit`` is its own business).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("relay", "certifier", "addendum")


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _own(module: str) -> bool:
    return module.split(".", 1)[0] in PACKAGES


def private_uses(root: Path) -> list[str]:
    """``path:line: what`` for every private name one module takes from another."""
    found: list[str] = []
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            where = path.relative_to(root)
            here = ".".join(where.with_suffix("").parts)
            imported: dict[str, str] = {}  # local name -> what it names
            for node in ast.walk(tree):
                if isinstance(node, ast.ImportFrom) and node.module and not node.level:
                    if not _own(node.module) or node.module == here:
                        continue
                    for alias in node.names:
                        if _private(alias.name):
                            found.append(f"{where}:{node.lineno}: {node.module}.{alias.name}")
                        imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
                elif isinstance(node, ast.Import):
                    for alias in node.names:
                        if _own(alias.name):
                            local = alias.asname or alias.name.split(".", 1)[0]
                            imported[local] = alias.name if alias.asname else local
            for node in ast.walk(tree):
                if (
                    isinstance(node, ast.Attribute)
                    and _private(node.attr)
                    and isinstance(node.value, ast.Name)
                    and node.value.id in imported
                ):
                    found.append(f"{where}:{node.lineno}: {imported[node.value.id]}.{node.attr}")
    return found


def test_no_module_uses_private_names_of_another() -> None:
    assert private_uses(ROOT) == []


def test_the_check_finds_each_form(tmp_path: Path) -> None:
    pkg = tmp_path / "relay"
    pkg.mkdir()
    (pkg / "owner.py").write_text("def _helper():\n    pass\n\n_helper()\n")
    (pkg / "fine.py").write_text("import os\nfrom relay.owner import helper\nos._exit(0)\n")
    (pkg / "direct.py").write_text("from relay.owner import _helper\n")
    (pkg / "module.py").write_text("from relay import owner\nowner._helper()\n")
    (pkg / "alias.py").write_text("import relay.owner as o\no._helper()\n")
    for package in ("certifier", "addendum"):
        (tmp_path / package).mkdir()
    found = private_uses(tmp_path)
    assert sorted(line.split(":", 1)[0] for line in found) == [
        "relay/alias.py",
        "relay/direct.py",
        "relay/module.py",
    ], found
