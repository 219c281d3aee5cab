"""The import direction the README states (For developers): relay -> addendum -> certifier.

No module in ``certifier/`` imports ``relay`` or ``addendum``; no module in ``addendum/``
imports ``relay``. Read with :mod:`ast`, not by importing, so a module that would only
import the wrong way at run time (inside a function, through ``importlib``) is caught too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "certifier": {"relay", "addendum"},
    "addendum": {"relay"},
}


def imported(path: Path, package: str, root: Path = ROOT) -> list[tuple[int, str, tuple[str, ...]]]:
    """(line, absolute module name, names imported from it) for every import in ``path``
    (a module of ``root/package``), including imports inside functions and
    ``importlib.import_module("...")`` / ``__import__("...")`` calls with a literal name.
    ``from . import x`` with nothing before the names gives module ``x``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    here = [package, *path.relative_to(root / package).with_suffix("").parts]
    found: list[tuple[int, str, tuple[str, ...]]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name, ()) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here[: len(here) - node.level]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            names = tuple(a.name for a in node.names)
            if module:
                found.append((node.lineno, module, names))
            else:  # "from .. import relay" above the top package: the names are modules
                found.extend((node.lineno, n, ()) for n in names)
        elif isinstance(node, ast.Call) and node.args:
            func = node.func
            name = (
                func.attr
                if isinstance(func, ast.Attribute)
                else func.id
                if isinstance(func, ast.Name)
                else ""
            )
            first = node.args[0]
            if (
                name in ("import_module", "__import__")
                and isinstance(first, ast.Constant)
                and isinstance(first.value, str)
            ):
                found.append((node.lineno, first.value, ()))
    return found


def violations(root: Path, package: str, forbidden: set[str]) -> list[str]:
    out = []
    for path in sorted((root / package).rglob("*.py")):
        for line, module, _ in imported(path, package, root):
            if module.split(".", 1)[0] in forbidden:
                out.append(f"{path.relative_to(root)}:{line} imports {module}")
    return out


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_dependencies_point_one_way(package: str) -> None:
    assert list((ROOT / package).glob("*.py")), f"no modules found in {package}/"
    assert violations(ROOT, package, FORBIDDEN[package]) == []


def test_addendum_uses_no_new_private_certifier_helpers() -> None:
    used: dict[str, set[str]] = {}
    for path in sorted((ROOT / "addendum").rglob("*.py")):
        for _, module, names in imported(path, "addendum"):
            if module.startswith("certifier"):
                used.setdefault(module, set()).update(n for n in names if n.startswith("_"))
    assert used, "addendum no longer imports from certifier? then update this test"
    for module, private in used.items():
        assert not private, f"addendum imports private names of {module}: {sorted(private)}"


def test_the_check_finds_each_kind_of_wrong_import(tmp_path: Path) -> None:
    pkg = tmp_path / "certifier"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "fine.py").write_text("import hashlib\nfrom certifier import pool\nfrom . import pki\n")
    (pkg / "top.py").write_text("import relay.queue.store\n")
    (pkg / "sub" / "late.py").write_text(
        "def f():\n    from addendum.tokens import TokenCodec\n    return TokenCodec\n"
    )
    (pkg / "dyn.py").write_text("import importlib\nm = importlib.import_module('relay.cli')\n")
    (pkg / "rel.py").write_text("from .. import relay\n")
    (pkg / "alias.py").write_text("import addendum as a\n")
    found = violations(tmp_path, "certifier", {"relay", "addendum"})
    assert sorted(v.split(":", 1)[0] for v in found) == sorted(
        [
            "certifier/alias.py",
            "certifier/dyn.py",
            "certifier/rel.py",
            "certifier/sub/late.py",
            "certifier/top.py",
        ]
    ), found
