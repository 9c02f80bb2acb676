"""One SQL text for two databases: SQLite (the default, one file) and PostgreSQL (psycopg 3, at scale).

`connect(target)` takes a file path (SQLite) or a `postgresql://` / `postgres://` URL (libpq's
syntax; a password may come from the URL, PGPASSWORD or ~/.pgpass) and gives a `Database` with:

    execute(sql, params) -> cursor     (rowcount, description, fetchone, fetchall)
    executemany(sql, rows)
    query(sql, params) -> list[tuple]
    transaction()                      a context: BEGIN ... COMMIT, or ROLLBACK when the block raises
    create(ddl)                        `;`-separated CREATE statements written for SQLite
    backend                            "sqlite" or "postgresql"

SQL is written once, for SQLite, with qmark (`?`) placeholders; for PostgreSQL every `?` outside a
quoted literal becomes `%s` and every `%` becomes `%%` (psycopg's syntax). Portable SQL means: no
rowid, no multi-argument MIN/MAX (use CASE), `ON CONFLICT ... DO NOTHING/UPDATE` instead of
`INSERT OR ...` (SQLite 3.24+), column references in DO UPDATE qualified by the table name, and CAST
of SUM() results (PostgreSQL sums BIGINT to NUMERIC). `create` maps the column types: REAL -> DOUBLE
PRECISION (PostgreSQL's REAL has 24 bits), INTEGER -> BIGINT, BLOB -> BYTEA, and drops WITHOUT ROWID.

Both run in autocommit mode outside `transaction()`. SQLite: WAL journal, BEGIN IMMEDIATE (writers
queue, no deadlock), busy timeout; its own exceptions pass unchanged. PostgreSQL (READ COMMITTED):
psycopg's errors are translated so that callers need not import psycopg:
    DataError(ValueError)         a value the database cannot hold (out of range, NUL in text, NOT NULL)
    Conflict                      the transaction lost a race (deadlock, serialization): run it again
    Unavailable(ConnectionError)  the server cannot be reached or the connection broke; the next
                                  statement or transaction connects again
Anything else (a programming error) passes unchanged.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import urllib.parse
from collections.abc import Iterable, Iterator, Sequence
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

if TYPE_CHECKING:
    import psycopg

BACKENDS: Final = ("sqlite", "postgresql")
SYNCHRONOUS: Final = ("normal", "full")
URL_SCHEMES: Final = ("postgresql://", "postgres://")
_TOKENS: Final = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|--[^\n]*|[?%]")
_TYPES: Final = ((re.compile(r"\bREAL\b"), "DOUBLE PRECISION"), (re.compile(r"\bINTEGER\b"), "BIGINT"),
                 (re.compile(r"\bBLOB\b"), "BYTEA"), (re.compile(r"\s*\bWITHOUT ROWID\b"), ""))


class DataError(ValueError):
    """PostgreSQL refused a value (out of range, a NUL in text, a NOT NULL or unique violation)."""


class Conflict(Exception):
    """The PostgreSQL transaction was rolled back to resolve a race; running it again is safe."""


class Unavailable(ConnectionError):
    """The PostgreSQL server cannot be reached, or the connection broke."""


class Cursor(Protocol):
    """What both drivers' cursors offer."""

    @property
    def rowcount(self) -> int: ...

    @property
    def description(self) -> Any: ...

    def fetchone(self) -> Any: ...

    def fetchall(self) -> list[Any]: ...


def is_url(target: str | Path) -> bool:
    """Whether `target` names a PostgreSQL database rather than a SQLite file."""
    return isinstance(target, str) and target.startswith(URL_SCHEMES)


def redact(target: str | Path) -> str:
    """`target` for logs and messages: a URL without its password."""
    if not is_url(target):
        return str(target)
    parts = urllib.parse.urlsplit(str(target))
    if parts.password is None:
        return str(target)
    netloc = parts.netloc.rsplit("@", 1)
    user = (parts.username or "") + ":***"
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}@{netloc[-1]}"))


def connect(target: str | Path, *, synchronous: str = "normal", timeout: float = 10.0) -> Database:
    """Open (SQLite: create) the database. synchronous ("normal"/"full") applies to SQLite only;
    PostgreSQL follows the server's synchronous_commit. ValueError for a bad argument or a missing
    driver, sqlite3.Error or Unavailable when the database cannot be opened."""
    if synchronous not in SYNCHRONOUS:
        raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
    if is_url(target):
        return Database("postgresql", str(target), timeout=timeout)
    return Database("sqlite", str(target), synchronous=synchronous, timeout=timeout)


class Database:
    """One connection; not thread-safe (one thread owns it)."""

    def __init__(self, backend: str, target: str, *, synchronous: str = "normal",
                 timeout: float = 10.0) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {', '.join(BACKENDS)}")
        self.backend, self.target, self._timeout = backend, target, timeout
        self._sqlite: sqlite3.Connection | None = None
        self._pg: psycopg.Connection[Any] | None = None
        self._in_transaction = False
        if backend == "sqlite":
            self._sqlite = _open_sqlite(target, synchronous, timeout)
        else:
            self._pg = self._open_pg()

    @property
    def name(self) -> str:
        """The target without a password, for logs."""
        return redact(self.target)

    def close(self) -> None:
        if self._sqlite is not None:
            self._sqlite.close()
        if self._pg is not None:
            self._pg.close()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Cursor:
        if self._sqlite is not None:
            return self._sqlite.execute(sql, tuple(params))
        with self._translated():
            return self._live().execute(_pg_sql(sql), tuple(params))

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        if self._sqlite is not None:
            self._sqlite.executemany(sql, rows)
            return
        with self._translated():
            self._live().cursor().executemany(_pg_sql(sql), [tuple(row) for row in rows])

    def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return [tuple(row) for row in self.execute(sql, params).fetchall()]

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN (SQLite: IMMEDIATE) ... COMMIT; ROLLBACK and re-raise when the block raises."""
        if self._in_transaction:
            raise RuntimeError("transactions do not nest")
        self._in_transaction = True
        try:
            if self._sqlite is not None:
                self._sqlite.execute("BEGIN IMMEDIATE")
                try:
                    yield
                except BaseException:
                    self._sqlite.execute("ROLLBACK")
                    raise
                self._sqlite.execute("COMMIT")
            else:
                with self._translated(), self._live().transaction():
                    yield
        finally:
            self._in_transaction = False

    def create(self, ddl: str) -> None:
        """Run `;`-separated DDL written for SQLite (types mapped for PostgreSQL)."""
        for statement in ddl.split(";"):
            if statement.strip():
                self.execute(statement if self.backend == "sqlite" else _pg_types(statement))

    # -- PostgreSQL ---------------------------------------------------------------------------------

    def _open_pg(self) -> psycopg.Connection[Any]:
        try:
            import psycopg
        except ImportError:
            raise ValueError("PostgreSQL needs the psycopg package: pip install 'psycopg[binary]' "
                             "(the [postgresql] extra)") from None
        with self._translated():
            return psycopg.connect(self.target, autocommit=True, connect_timeout=max(2, round(self._timeout)),
                                   application_name="ward-agent-collector")

    def _live(self) -> psycopg.Connection[Any]:
        """The connection, opened again if it broke (never inside a transaction: that one failed)."""
        assert self._pg is not None
        if self._pg.closed and not self._in_transaction:
            self._pg = self._open_pg()
        elif self._pg.closed:
            raise Unavailable("the connection to PostgreSQL broke")
        return self._pg

    @contextlib.contextmanager
    def _translated(self) -> Iterator[None]:
        import psycopg
        from psycopg import errors

        try:
            yield
        except (psycopg.DataError, psycopg.IntegrityError) as exc:
            raise DataError(str(exc)) from exc
        except errors.TransactionRollback as exc:  # deadlock_detected, serialization_failure
            raise Conflict(str(exc)) from exc
        except (psycopg.OperationalError, psycopg.InterfaceError) as exc:
            if self._pg is not None and self._pg.broken:
                self._pg.close()
            raise Unavailable(str(exc)) from exc


def _open_sqlite(path: str, synchronous: str, timeout: float) -> sqlite3.Connection:
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=timeout)
    try:
        db.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        db.execute("PRAGMA journal_mode = WAL")
        db.execute(f"PRAGMA synchronous = {synchronous.upper()}")
    except sqlite3.Error:
        db.close()
        raise
    return db


@lru_cache(maxsize=512)
def _pg_sql(sql: str) -> str:
    """qmark -> psycopg's format style: `?` outside quotes -> %s, every `%` -> %%."""
    return _TOKENS.sub(lambda m: {"?": "%s", "%": "%%"}.get(m.group(0), m.group(0).replace("%", "%%")), sql)


def _pg_types(statement: str) -> str:
    for pattern, replacement in _TYPES:
        statement = pattern.sub(replacement, statement)
    return statement
