"""SQL source plumbing: database resolution, watermarks, the incremental query. No Ray, no server."""

from __future__ import annotations

import sqlite3
from datetime import date, datetime, timezone

import pytest

from features.definitions import DefinitionError, SqlSource
from features.sql import (
    SqlSourceError,
    decode_watermark,
    encode_watermark,
    incremental_query,
    newest_watermark,
    resolve_database,
)
from orchard.config import OrchardConfig
from orchard.storage import Storage

USERS = SqlSource(name="accounts", database="hotel", table="users", watermark="updated_at", row_id="row_id")


@pytest.mark.parametrize("value", [41, 2.5, "2026-01-02T03:04:05.000006+00:00", date(2026, 1, 2),
                                   datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=timezone.utc)])
def test_a_watermark_comes_back_as_the_type_it_was(value):
    restored = decode_watermark(encode_watermark(value))
    assert restored == value and type(restored) is type(value)


def test_a_watermark_must_be_orderable():
    with pytest.raises(SqlSourceError, match="not orderable"):
        encode_watermark(None)


def test_the_first_read_takes_everything_up_to_the_newest_watermark(tmp_path):
    database = resolve_database("hotel", {}, Storage(str(tmp_path)))
    query, params = incremental_query(database, USERS, ["user_ref", "country"], since=None)
    assert query == ("SELECT CAST(user_ref AS TEXT) AS user_ref, CAST(country AS TEXT) AS country, row_id, updated_at "
                     "FROM users WHERE updated_at <= ? ORDER BY updated_at, row_id")
    assert params == ()


def test_later_reads_take_the_rows_between_the_two_watermarks(tmp_path):
    database = resolve_database("hotel", {"hotel": "postgresql://u@host/db"}, Storage(str(tmp_path)))
    query, params = incremental_query(database, USERS, ["user_ref"], since=7)
    assert "WHERE updated_at > %s AND updated_at <= %s" in query and params == (7,)


def test_the_default_database_is_an_sqlite_file_under_the_storage_root(tmp_path):
    database = resolve_database("hotel", {}, Storage(str(tmp_path)))
    assert database.dialect == "sqlite" and database.url == f"sqlite:///{tmp_path}/landing/hotel.sqlite"


def test_an_object_store_root_needs_an_explicit_database_url():
    with pytest.raises(SqlSourceError, match="set ORCHARD_SQL_HOTEL"):
        resolve_database("hotel", {}, Storage("s3://bucket/orchard?endpoint_override=127.0.0.1:1"))


def test_unsupported_database_schemes_are_named(tmp_path):
    with pytest.raises(SqlSourceError, match="unsupported URL scheme 'mysql'"):
        resolve_database("hotel", {"hotel": "mysql://u@h/db"}, Storage(str(tmp_path)))


def test_relative_sqlite_paths_are_refused(tmp_path):
    database = resolve_database("hotel", {"hotel": "sqlite:///hotel.sqlite"}, Storage(str(tmp_path)))
    with pytest.raises(SqlSourceError, match="absolute file path"):
        database.connection_factory()


def test_newest_watermark_reads_the_largest_value(tmp_path):
    path = tmp_path / "hotel.sqlite"
    with sqlite3.connect(path) as connection:
        connection.execute("CREATE TABLE users (row_id INTEGER PRIMARY KEY, updated_at TEXT)")
        connection.executemany("INSERT INTO users (updated_at) VALUES (?)", [("2026-01-02",), ("2026-01-03",)])
    database = resolve_database("hotel", {"hotel": f"sqlite:///{path}"}, Storage(str(tmp_path)))
    assert newest_watermark(database, USERS) == "2026-01-03"


def test_a_missing_database_file_is_named_not_created(tmp_path):
    database = resolve_database("hotel", {}, Storage(str(tmp_path)))
    with pytest.raises(SqlSourceError, match="SQLite file does not exist"):
        newest_watermark(database, USERS)
    assert not (tmp_path / "landing" / "hotel.sqlite").exists()


def test_sql_identifiers_in_definitions_cannot_carry_sql():
    with pytest.raises(DefinitionError, match="table 'users; DROP TABLE users' is not a plain SQL identifier"):
        SqlSource(name="x", database="hotel", table="users; DROP TABLE users", watermark="id", row_id="id")


def test_database_urls_come_from_orchard_sql_variables_and_stay_out_of_repr():
    config = OrchardConfig.from_sources(env={"ORCHARD_SQL_HOTEL": "postgresql://u:pw@h/db", "ORCHARD_SQL_": "x"},
                                        storage="/tmp/x")
    assert config.databases == {"hotel": "postgresql://u:pw@h/db"}
    assert "pw" not in repr(config)


def test_a_driver_error_inside_a_ray_task_error_is_found_and_described_without_the_url():
    import psycopg

    from features.sql import database_failure, describe_failure

    lost = psycopg.OperationalError('connection to server at "db.internal" (10.0.0.7) failed: FATAL: password '
                                    'authentication failed for user "reader"')
    wrapper = RuntimeError("a Ray task failed")
    wrapper.__cause__ = lost
    assert database_failure(wrapper) is lost
    assert describe_failure(lost) == "OperationalError: the connection was lost or refused"
    assert database_failure(RuntimeError("nothing of a database")) is None
    missing = sqlite3.OperationalError("no such table: users")
    assert describe_failure(missing) == "OperationalError: no such table: users"
