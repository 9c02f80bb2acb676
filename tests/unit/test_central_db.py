"""agent.central.db: targets, SQL translation for PostgreSQL, and the SQLite side of the wrapper.

The PostgreSQL side runs against a real server in tests/integration/test_postgres.py."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from agent.central import db as dbapi
from agent.central.db import _pg_sql, _pg_types


@pytest.mark.parametrize(("target", "url"), [("postgresql://ward@db/central", True),
                                              ("postgres://db/central", True), ("central.db", False),
                                              ("/var/lib/x/postgresql://", False)])
def test_is_url_only_for_postgresql_schemes(target: str, url: bool) -> None:
    """postgresql:// and postgres:// name a server; anything else is a SQLite file."""
    assert dbapi.is_url(target) is url


def test_path_objects_are_files() -> None:
    """A Path is never a URL, even one spelled like it."""
    assert not dbapi.is_url(Path("postgresql:/x"))


@pytest.mark.parametrize(("target", "shown"), [
    ("postgresql://ward:s3cret@db:5432/central", "postgresql://ward:***@db:5432/central"),
    ("postgresql://ward@db/central?sslmode=require", "postgresql://ward@db/central?sslmode=require"),
    ("postgresql://:p%40ss@db/c", "postgresql://:***@db/c"),
    ("/var/lib/central.db", "/var/lib/central.db")])
def test_redact_hides_only_the_password(target: str, shown: str) -> None:
    """A URL's password becomes *** for logs; everything else is kept."""
    assert dbapi.redact(target) == shown


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT ? FROM t WHERE a = ?", "SELECT %s FROM t WHERE a = %s"),
    ("SELECT '?', 'it''s ?', \"odd?\" FROM t WHERE a = ?",
     "SELECT '?', 'it''s ?', \"odd?\" FROM t WHERE a = %s"),
    ("SELECT 5 % 2, '50%' WHERE a LIKE ?", "SELECT 5 %% 2, '50%%' WHERE a LIKE %s"),
    ("SELECT 1 -- why?\nWHERE a = ?", "SELECT 1 -- why?\nWHERE a = %s")])
def test_qmark_becomes_format_outside_literals(sql: str, expected: str) -> None:
    """`?` outside quotes and comments becomes %s; every % is doubled for psycopg."""
    assert _pg_sql(sql) == expected


def test_types_map_to_64_bit_postgresql_types() -> None:
    """REAL, INTEGER and BLOB widen; WITHOUT ROWID goes; names containing the words stay."""
    ddl = "CREATE TABLE t(a REAL, b INTEGER NOT NULL, c BLOB, realm TEXT, PRIMARY KEY(b)) WITHOUT ROWID"
    assert _pg_types(ddl) == ("CREATE TABLE t(a DOUBLE PRECISION, b BIGINT NOT NULL, c BYTEA, realm TEXT, "
                              "PRIMARY KEY(b))")


def test_sqlite_is_the_default_in_wal_mode(tmp_path: Path) -> None:
    """A path opens (and creates) a SQLite file in WAL mode."""
    db = dbapi.connect(tmp_path / "c.db")
    assert db.backend == "sqlite" and db.query("PRAGMA journal_mode") == [("wal",)]
    assert (tmp_path / "c.db").exists()


def test_synchronous_full_is_applied(tmp_path: Path) -> None:
    """synchronous="full" sets PRAGMA synchronous to FULL (2)."""
    assert dbapi.connect(tmp_path / "c.db", synchronous="full").query("PRAGMA synchronous") == [(2,)]


def test_unknown_synchronous_is_refused(tmp_path: Path) -> None:
    """Only normal and full exist."""
    with pytest.raises(ValueError, match="synchronous"):
        dbapi.connect(tmp_path / "c.db", synchronous="off")


def test_transaction_commits(tmp_path: Path) -> None:
    """Rows written in a transaction are visible to another connection after it."""
    db = dbapi.connect(tmp_path / "c.db")
    db.create("CREATE TABLE t(x INTEGER); CREATE INDEX t_x ON t(x);")
    with db.transaction():
        db.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
    assert dbapi.connect(tmp_path / "c.db").query("SELECT x FROM t ORDER BY x") == [(1,), (2,)]


def test_transaction_rolls_back_when_the_block_raises(tmp_path: Path) -> None:
    """An exception in the block undoes its writes and passes through."""
    db = dbapi.connect(tmp_path / "c.db")
    db.execute("CREATE TABLE t(x INTEGER)")
    with pytest.raises(KeyError), db.transaction():
        db.execute("INSERT INTO t VALUES (?)", (1,))
        raise KeyError("x")
    assert db.query("SELECT COUNT(*) FROM t") == [(0,)]


def test_transactions_do_not_nest(tmp_path: Path) -> None:
    """A transaction inside a transaction is a programming error (and the outer one rolls back)."""
    db = dbapi.connect(tmp_path / "c.db")
    db.execute("CREATE TABLE t(x INTEGER)")
    with pytest.raises(RuntimeError, match="nest"), db.transaction():
        db.execute("INSERT INTO t VALUES (1)")
        with db.transaction():
            pass
    assert db.query("SELECT COUNT(*) FROM t") == [(0,)]


def test_on_conflict_do_nothing_reports_no_row(tmp_path: Path) -> None:
    """The dedupe statement's rowcount is 0 for the second copy (the store relies on it)."""
    db = dbapi.connect(tmp_path / "c.db")
    db.execute("CREATE TABLE m(k INTEGER PRIMARY KEY)")
    counts = [db.execute("INSERT INTO m VALUES (?) ON CONFLICT DO NOTHING", (7,)).rowcount for _ in range(2)]
    assert counts == [1, 0]


def test_postgresql_without_psycopg_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the driver missing, a URL gives a ValueError naming the package to install."""
    monkeypatch.setitem(sys.modules, "psycopg", None)  # makes `import psycopg` raise ImportError
    with pytest.raises(ValueError, match="psycopg"):
        dbapi.connect("postgresql://ward@127.0.0.1:1/x")


def test_unknown_backend_is_refused(tmp_path: Path) -> None:
    """Only sqlite and postgresql."""
    with pytest.raises(ValueError, match="backend"):
        dbapi.Database("oracle", str(tmp_path / "x"))
