"""All database access lives in relay/queue/ (README, "Queue"): no module elsewhere
writes SQL, so another backend replaces one package and no stage.

The check reads every string literal of every module (with the ast module, so comments
and prose that merely say "select" do not count) and looks for the shape of a statement.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("relay", "addendum", "certifier")
QUEUE = ROOT / "relay" / "queue"

STATEMENT = re.compile(
    r"\bSELECT\b[\s\S]*\bFROM\b"
    r"|\bINSERT\s+(?:OR\s+\w+\s+)?INTO\b"
    r"|\bUPDATE\s+\w+\s+SET\b"
    r"|\bDELETE\s+FROM\b"
    r"|\b(?:CREATE|ALTER|DROP)\s+(?:TABLE|INDEX|UNIQUE\s+INDEX)\b"
    r"|\bPRAGMA\s+\w+"
)


def sql_in(path: Path) -> list[str]:
    """``line: text`` of each string literal in ``path`` that reads like SQL."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if STATEMENT.search(node.value):
                found.append(f"{node.lineno}: {node.value.strip()[:60]!r}")
    return found


def modules_outside_queue() -> list[Path]:
    paths = [p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))]
    return [p for p in paths if QUEUE not in p.parents]


def test_the_check_finds_sql(tmp_path: Path) -> None:
    """The check itself: it finds each kind of statement, and not prose."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        'A = "SELECT qid FROM messages"\n'
        'B = "INSERT OR IGNORE INTO users (a) VALUES (?)"\n'
        'C = "UPDATE recipients SET status = ?"\n'
        'D = "DELETE FROM users WHERE address = ?"\n'
        'E = """CREATE TABLE t (x)"""\n'
        'F = "PRAGMA journal_mode=WAL"\n'
        'G = "select the recipients from the list"  # prose, lower case\n'
        "# SELECT qid FROM messages (a comment)\n"
    )
    assert [line.split(":")[0] for line in sql_in(sample)] == ["1", "2", "3", "4", "5", "6"]


def test_no_sql_outside_the_queue_package() -> None:
    offenders = {
        str(p.relative_to(ROOT)): found for p in modules_outside_queue() if (found := sql_in(p))
    }
    assert offenders == {}, (
        "SQL outside relay/queue/ (give the store a named method instead): "
        + "; ".join(f"{path} line {lines}" for path, lines in offenders.items())
    )


def sqlite_imports(path: Path) -> list[int]:
    """The lines of ``path`` importing the sqlite3 module: a connection opened with it
    runs SQL however the statement is spelled."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "sqlite3" for a in node.names):
            lines.append(node.lineno)
        elif isinstance(node, ast.ImportFrom) and node.module == "sqlite3":
            lines.append(node.lineno)
    return lines


def test_the_import_check_finds_sqlite3(tmp_path: Path) -> None:
    sample = tmp_path / "sample.py"
    sample.write_text("import os, sqlite3\nfrom sqlite3 import connect\nimport sqlite_utils\n")
    assert sqlite_imports(sample) == [1, 2]


def test_no_database_connection_outside_the_queue_package() -> None:
    offenders = {
        str(p.relative_to(ROOT)): found
        for p in modules_outside_queue()
        if (found := sqlite_imports(p))
    }
    assert offenders == {}, (
        "sqlite3 imported outside relay/queue/ (give the queue package a function instead): "
        + "; ".join(f"{path} line {lines}" for path, lines in offenders.items())
    )


def test_the_queue_package_is_where_the_sql_is() -> None:
    """The check looks where SQL is: the queue package has plenty (it would find it)."""
    assert sum(len(sql_in(p)) for p in QUEUE.glob("*.py")) > 50
