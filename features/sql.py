"""SQL sources: connections, watermarks and the incremental query.

A database is named in code and located by configuration: the URL of database
`hotel` comes from ORCHARD_SQL_HOTEL (`postgresql://...` or `sqlite:///path`),
and without one it is the embedded SQLite file `landing/hotel.sqlite` under a
local storage root. URLs are never logged or written to a table, since they
may carry a password; rows name their source as `sql:<database>.<table>`.
"""

from __future__ import annotations

import contextlib
import json
import re
import sqlite3
from dataclasses import dataclass
from datetime import date, datetime, timezone
from typing import Any, Callable, Mapping
from urllib.parse import quote, urlparse

from features.definitions import SqlSource
from orchard.errors import UsageError
from orchard.storage import Storage


class SqlSourceError(UsageError):
    """A SQL source cannot be reached or read as declared."""


@dataclass(frozen=True)
class Database:
    name: str
    url: str
    dialect: str
    """"sqlite" or "postgresql"."""

    @property
    def placeholder(self) -> str:
        return "?" if self.dialect == "sqlite" else "%s"

    def connection_factory(self) -> Callable[[], Any]:
        """A picklable function that opens a DB-API connection (it runs inside Ray read tasks)."""
        if self.dialect == "sqlite":
            read_only = f"file:{quote(_sqlite_path(self.url))}?mode=ro"
            return lambda: sqlite3.connect(read_only, uri=True)
        url = re.sub(r"^postgres(ql)?\+[a-z0-9_]+://", "postgresql://", self.url)  # SQLAlchemy-style +driver
        return lambda: _connect_postgresql(url)

    def __repr__(self) -> str:  # the URL may hold a password
        return f"Database(name={self.name!r}, dialect={self.dialect!r})"


def default_sqlite_location(database: str) -> str:
    return f"landing/{database}.sqlite"


def resolve_database(name: str, databases: Mapping[str, str], storage: Storage) -> Database:
    url = databases.get(name)
    if url is None:
        if not storage.is_local:
            raise SqlSourceError(
                f"database {name!r} has no URL: set ORCHARD_SQL_{name.upper()} (the embedded SQLite "
                "default needs a local storage root)")
        path = storage.path(default_sqlite_location(name))
        return Database(name, f"sqlite:///{path}", "sqlite")
    scheme = urlparse(url).scheme.split("+")[0]
    if scheme == "sqlite":
        return Database(name, url, "sqlite")
    if scheme in ("postgresql", "postgres"):
        return Database(name, url, "postgresql")
    raise SqlSourceError(f"database {name!r}: unsupported URL scheme {scheme!r}; expected sqlite or postgresql")


def _sqlite_path(url: str) -> str:
    """The file of `sqlite:////absolute/path` (Ray workers run elsewhere, so relative paths are refused)."""
    path = urlparse(url).path[1:]
    if not path.startswith("/"):
        raise SqlSourceError("a sqlite URL must name an absolute file path, as in sqlite:////data/hotel.sqlite")
    return path


def _connect_postgresql(url: str):
    import psycopg

    return psycopg.connect(url, autocommit=True)


def connect(database: Database):
    try:
        if database.dialect == "sqlite" and not _exists(_sqlite_path(database.url)):
            raise SqlSourceError(f"database {database.name!r}: SQLite file does not exist")
        return database.connection_factory()()
    except SqlSourceError:
        raise
    except Exception as error:  # driver errors vary; keep the URL out of the message
        raise SqlSourceError(f"database {database.name!r}: cannot connect ({type(error).__name__})") from None


def database_failure(error: BaseException) -> BaseException | None:
    """The database driver's error (psycopg's or sqlite3's) in `error`'s chain of causes, if there is one: a Ray
    task that read a source carries its worker's exception as the cause."""
    import sqlite3

    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        module = type(error).__module__ or ""
        if isinstance(error, sqlite3.Error) or module.split(".")[0] == "psycopg":
            return error
        error = getattr(error, "cause", None) or error.__cause__ or error.__context__
    return None


def describe_failure(error: BaseException) -> str:
    """A database driver's error in words that hold no URL, host or password: a lost or refused connection as
    such, any other error by PostgreSQL's primary message or SQLite's (which name tables and columns)."""
    if (type(error).__module__ or "").split(".")[0] == "psycopg":
        import psycopg

        if isinstance(error, (psycopg.OperationalError, psycopg.InterfaceError)):
            return f"{type(error).__name__}: the connection was lost or refused"
        primary = getattr(getattr(error, "diag", None), "message_primary", None)
        return f"{type(error).__name__}: {primary or 'the database refused the query'}"
    return f"{type(error).__name__}: {error}"


def _exists(path: str) -> bool:
    from pathlib import Path

    return Path(path).is_file()


# Watermarks are kept in the checkpoint as JSON [type, text], so they come back as the type the column has.
def encode_watermark(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        raise SqlSourceError(f"watermark value {value!r} is not orderable")
    if isinstance(value, int):
        return json.dumps(["int", str(value)])
    if isinstance(value, float):
        return json.dumps(["float", repr(value)])
    if isinstance(value, datetime):
        return json.dumps(["datetime", value.isoformat()])
    if isinstance(value, date):
        return json.dumps(["date", value.isoformat()])
    if isinstance(value, str):
        return json.dumps(["str", value])
    raise SqlSourceError(f"watermark of type {type(value).__name__} is not supported")


def decode_watermark(text: str) -> Any:
    kind, value = json.loads(text)
    return {"int": int, "float": float, "datetime": datetime.fromisoformat, "date": date.fromisoformat,
            "str": str}[kind](value)


def newest_watermark(database: Database, source: SqlSource) -> Any:
    """The largest watermark in the table now: the upper bound of this run's read."""
    try:
        return _scalar(database, source, f"SELECT MAX({source.watermark}) FROM {source.table}")
    except SqlSourceError as error:
        raise SqlSourceError(f"{error} (cannot read column {source.watermark!r})") from None


def newest_null_row_id(database: Database, source: SqlSource) -> int | None:
    """The largest row id among rows whose watermark is null (they cannot be read incrementally)."""
    return _scalar(database, source, f"SELECT MAX({source.row_id}) FROM {source.table} WHERE {source.watermark} IS NULL")


def check_text_watermarks(database: Database, source: SqlSource, sample: Any) -> None:
    """In SQLite, text watermarks order correctly only if all share one layout: refuse the others by name.

    ('2026-01-02 10:00' sorts before '2026-01-02T08:00', and '...00Z' after '...00.5+00:00'.)
    """
    if database.dialect != "sqlite" or not isinstance(sample, str):
        return
    layout = re.sub(r"\d", "9", sample)
    pattern = layout.replace("9", "[0-9]")
    connection = connect(database)
    try:
        cursor = connection.cursor()
        cursor.execute(f"SELECT {source.row_id}, {source.watermark} FROM {source.table} WHERE {source.watermark} IS NOT "
                       f"NULL AND (typeof({source.watermark}) != 'text' OR {source.watermark} NOT GLOB ?) LIMIT 3",
                       (pattern,))
        odd = cursor.fetchall()
    finally:
        connection.close()
    if odd:
        examples = ", ".join(f"row {row_id}: {value!r}" for row_id, value in odd)
        raise SqlSourceError(
            f"SQL source {source.name!r} ({source.label}): watermark column {source.watermark!r} holds text in more "
            f"than one layout, which SQLite cannot order (expected the layout of {sample!r}); e.g. {examples}")


def _scalar(database: Database, source: SqlSource, query: str) -> Any:
    connection = connect(database)
    try:
        cursor = connection.cursor()
        try:
            cursor.execute(query)
        except Exception as error:
            raise SqlSourceError(
                f"SQL source {source.name!r} ({source.label}): {str(error).splitlines()[0]}") from None
        (value,) = cursor.fetchone()
        return value
    finally:
        connection.close()


def null_watermark_query(database: Database, source: SqlSource, columns: list[str], since: int | None) -> tuple[str, tuple]:
    """Rows with a null watermark and a row id in (since, upper]: each is quarantined once."""
    mark = database.placeholder
    condition = f"{source.row_id} <= {mark}" if since is None else f"{source.row_id} > {mark} AND {source.row_id} <= {mark}"
    query, _ = incremental_query(database, source, columns, None)
    head = query.split(" WHERE ")[0]
    return f"{head} WHERE {source.watermark} IS NULL AND {condition} ORDER BY {source.row_id}", \
        () if since is None else (since,)


def incremental_query(database: Database, source: SqlSource, columns: list[str], since: Any) -> tuple[str, tuple]:
    """SQL selecting rows with watermark in (since, upper], in watermark then row order; `?`/`%s` params."""
    # SQLite lets any value sit in any column (an INTEGER column may hold 'yes'), which would fail the read
    # as a whole; as text, such a value is one quarantined row. PostgreSQL's columns are typed: read as they are.
    features = [f"CAST({c} AS TEXT) AS {c}" if database.dialect == "sqlite" else c
                for c in dict.fromkeys(columns) if c not in (source.row_id, source.watermark)]
    selected = ", ".join([*features, source.row_id, source.watermark])
    mark = database.placeholder
    condition = f"{source.watermark} <= {mark}" if since is None else \
        f"{source.watermark} > {mark} AND {source.watermark} <= {mark}"
    return (f"SELECT {selected} FROM {source.table} WHERE {condition} "
            f"ORDER BY {source.watermark}, {source.row_id}"), () if since is None else (since,)


def utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


# -- writing (the synthetic data generators fill the example databases) --------------------------------
_COLUMN_TYPES = {
    "id": ("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY"),
    "text": ("TEXT", "TEXT"),
    "date": ("TEXT", "DATE"),
    "timestamp": ("TEXT", "TIMESTAMPTZ"),
    "real": ("REAL", "DOUBLE PRECISION"),
    "bool": ("INTEGER", "BOOLEAN"),
}


def _sql_value(value: Any, kind: str, dialect: str) -> Any:
    """SQLite keeps dates and times as ISO text in one fixed format, so text order is time order."""
    if value is None or dialect != "sqlite":
        return value
    if kind == "timestamp":
        return utc(value).strftime("%Y-%m-%dT%H:%M:%S.%f+00:00")
    if kind == "date":
        return value.isoformat()
    if kind == "bool":
        return int(value)
    return value


def open_for_writing(database: Database):
    if database.dialect == "sqlite":
        from pathlib import Path

        path = Path(_sqlite_path(database.url))
        path.parent.mkdir(parents=True, exist_ok=True)
        return sqlite3.connect(path)
    return database.connection_factory()()


def ensure_table(connection, database: Database, table: str, columns: Mapping[str, str]) -> None:
    position = 0 if database.dialect == "sqlite" else 1
    declared = ", ".join(f"{name} {_COLUMN_TYPES[kind][position]}" for name, kind in columns.items())
    connection.cursor().execute(f"CREATE TABLE IF NOT EXISTS {table} ({declared})")


@contextlib.contextmanager
def writing_table(database: Database, table: str, columns: Mapping[str, str]):
    """A connection to write `table` (created if missing); committed and closed on leaving the block."""
    connection = open_for_writing(database)
    try:
        ensure_table(connection, database, table, columns)
        yield connection
        connection.commit()
    finally:
        connection.close()


def count_rows(connection, table: str) -> int:
    cursor = connection.cursor()
    cursor.execute(f"SELECT COUNT(*) FROM {table}")
    return int(cursor.fetchone()[0])


def insert_rows(connection, database: Database, table: str, columns: Mapping[str, str], rows: list[dict]) -> None:
    """Insert rows (dicts by column name; the "id" column is left to the database)."""
    names = [name for name, kind in columns.items() if kind != "id"]
    marks = ", ".join([database.placeholder] * len(names))
    values = [tuple(_sql_value(row.get(n), columns[n], database.dialect) for n in names) for row in rows]
    connection.cursor().executemany(f"INSERT INTO {table} ({', '.join(names)}) VALUES ({marks})", values)


def update_rows(connection, database: Database, table: str, columns: Mapping[str, str], key: str,
                rows: list[dict]) -> None:
    """Update rows found by `key` with the other values each dict holds."""
    mark = database.placeholder
    for row in rows:
        names = [n for n in row if n != key]
        assignments = ", ".join(f"{n} = {mark}" for n in names)
        connection.cursor().execute(
            f"UPDATE {table} SET {assignments} WHERE {key} = {mark}",
            tuple(_sql_value(row[n], columns[n], database.dialect) for n in names) + (row[key],))
