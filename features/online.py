"""The online store: each online feature group's latest row per primary key, for predictions by entity key.

Two implementations behind one interface:

- `SqliteOnlineStore`, the embedded default: one SQLite file under a local
  storage root (`online/features.sqlite`), no server. WAL mode, so Serve
  replicas read while a materialization writes.
- `RedisOnlineStore` for clusters: one Redis hash per group version, a field per
  key, under a namespace derived from the storage root. Chosen by `ORCHARD_ONLINE_STORE=redis://host:port/db` (the URL may carry
  a password: it is never logged or shown).

Both keep, per key, the row with the latest event time (ties: the larger
`order`, the offline table version it came from), and a write never replaces a
newer row with an older one. So writes are idempotent and need no order among
themselves: materialization (`features.materialize`) writes blocks from many
tasks at once, a run that dies is simply run again, and late data stays late.
Reading one entity's vector is one query per group, whatever its number of
features or keys.

A key is stored as the text of its columns, each cast to text by Arrow from
the group's key type, so `"2026-03-02"` asked for a `date32` key finds the row
the table wrote. Values are stored as JSON, numbers and text as they are,
timestamps as microseconds since the epoch and dates as days, and come back as
the group's Arrow types.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import sqlite3
import threading
from dataclasses import dataclass
from datetime import date, datetime, timedelta, timezone
from typing import Any, Iterable, Sequence
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.compute as pc

from features.definitions import FeatureGroup
from orchard.errors import ConfigError, OrchardError, UsageError
from orchard.storage import Storage

ONLINE_ENV = "ORCHARD_ONLINE_STORE"
SQLITE_LOCATION = "online/features.sqlite"
_KEY_SEPARATOR = "\x1f"
_MICROSECONDS = pa.timestamp("us", tz="UTC")
_WRITE_BATCH = 2000


class OnlineStoreError(OrchardError):
    """The online store cannot be reached or answered with an error (the service answers 503)."""

    http_status = 503


class EntityError(UsageError):
    """An entity of a request is malformed (422) or names a key that has no row (404)."""

    http_status = 422

    def __init__(self, message: str, *, unknown: bool = False):
        super().__init__(message)
        if unknown:
            self.http_status = 404


@dataclass(frozen=True)
class OnlineRows:
    """What a read found for each asked key, in the order asked: the group's value columns as Arrow columns,
    with a null row where a key has no row (`found` False)."""

    found: list[bool]
    event_times: pa.Array
    """timestamp[us, UTC], null where not found."""
    values: pa.Table


def value_columns(group: FeatureGroup) -> list[str]:
    """The columns an online row holds besides its key: every feature, event time included."""
    return [f.name for f in group.features if f.name not in group.primary_key]


def _as_text(column: pa.Array | pa.ChunkedArray, kind: pa.DataType) -> pa.Array:
    column = column.cast(kind)
    if pa.types.is_timestamp(kind):  # text of the instant, whatever the zone or unit
        column = pc.cast(pc.cast(column, _MICROSECONDS), pa.int64())
    return pc.cast(column, pa.string())


def encode_keys(group: FeatureGroup, columns: Sequence[pa.Array | pa.ChunkedArray]) -> pa.Array:
    """Each row's key as one text (null where any key column is null), the same for the same key in any batch."""
    kinds = [group.schema.field(name).type for name in group.primary_key]
    texts = [_as_text(column, kind) for column, kind in zip(columns, kinds)]
    if len(texts) == 1:
        return texts[0].combine_chunks() if isinstance(texts[0], pa.ChunkedArray) else texts[0]
    joined = pc.binary_join_element_wise(*texts, _KEY_SEPARATOR, null_handling="emit_null")
    return joined.combine_chunks() if isinstance(joined, pa.ChunkedArray) else joined


def request_keys(group: FeatureGroup, keys: Sequence[Sequence[Any]]) -> pa.Array:
    """Keys as a caller gives them (JSON values, one tuple per entity) encoded like the stored ones.

    A value that cannot be read as the key column's type is an error that names the column and the value."""
    columns = []
    for position, name in enumerate(group.primary_key):
        kind = group.schema.field(name).type
        values = [key[position] for key in keys]
        try:
            if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
                column = pc.cast(pa.array([None if v is None else str(v) for v in values], pa.string()), kind) \
                    if not pa.types.is_timestamp(kind) else _timestamps(values)
            else:
                column = pa.array(values).cast(kind)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, TypeError, ValueError) as error:
            raise EntityError(f"key column {name!r} of {group.ref} is {kind}; cannot read {values!r} as that "
                                   f"({str(error).splitlines()[0]})") from None
        columns.append(column)
    return encode_keys(group, columns)


_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
_EPOCH_DAY = date(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)


def _key_text(value: Any, kind: pa.DataType, column: str, group: FeatureGroup) -> str:
    """One key value as the text `encode_keys` gives the stored value of the same key (Python, no Arrow: a lookup
    of one key spent most of its time building and casting one-element arrays)."""
    def refuse() -> EntityError:
        return EntityError(f"key column {column!r} of {group.ref} is {kind}; cannot read {value!r} as that")

    if isinstance(value, bool):
        raise refuse()
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        if isinstance(value, (str, int)):
            return str(value)
        raise refuse()
    if pa.types.is_integer(kind):
        if isinstance(value, int):
            return str(value)
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            return str(int(value))
        raise refuse()
    try:
        if pa.types.is_date(kind):
            if isinstance(value, datetime):
                raise refuse()
            return (value if isinstance(value, date) else date.fromisoformat(str(value))).isoformat()
        if pa.types.is_timestamp(kind):
            moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            moment = moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)
            return str((moment - _EPOCH) // _MICROSECOND)
    except ValueError:
        raise refuse() from None
    raise refuse()


def key_texts(group: FeatureGroup, keys: Sequence[Sequence[Any]]) -> list[str | None]:
    """Keys as a caller gives them, encoded like the stored ones; None where a key value is None."""
    kinds = [group.schema.field(name).type for name in group.primary_key]
    simple = all(pa.types.is_string(k) or pa.types.is_large_string(k) or pa.types.is_integer(k) or
                 pa.types.is_date(k) or pa.types.is_timestamp(k) for k in kinds)
    if not simple:
        return request_keys(group, keys).to_pylist()
    texts = []
    for key in keys:
        if any(part is None for part in key):
            texts.append(None)
            continue
        parts = [_key_text(part, kind, name, group) for part, kind, name in zip(key, kinds, group.primary_key)]
        texts.append(parts[0] if len(parts) == 1 else _KEY_SEPARATOR.join(parts))
    return texts


def _python_decoder(kind: pa.DataType):
    """How one stored JSON value becomes the Python value of its Arrow type."""
    if pa.types.is_timestamp(kind):
        return lambda v: None if v is None else _EPOCH + v * _MICROSECOND
    if pa.types.is_date(kind):
        return lambda v: None if v is None else _EPOCH_DAY + timedelta(days=v)
    if pa.types.is_floating(kind):
        return lambda v: float(v) if isinstance(v, str) else v
    return None


def _timestamps(values: list) -> pa.Array:
    from features.conform import to_utc_timestamps

    return to_utc_timestamps(pa.array([None if v is None else str(v) for v in values], pa.string()))


# ------------------------------------------------------------------ encoding of values


def _json_ready(column: pa.Array, kind: pa.DataType) -> list:
    if pa.types.is_timestamp(kind):
        return pc.cast(pc.cast(column, _MICROSECONDS), pa.int64()).to_pylist()
    if pa.types.is_date(kind):
        return pc.cast(column.cast(pa.date32()), pa.int32()).to_pylist()
    if pa.types.is_floating(kind):  # JSON has no NaN or infinity: store them as text
        return [v if v is None or math.isfinite(v) else repr(v) for v in column.to_pylist()]
    return column.to_pylist()


def _from_json(values: list, kind: pa.DataType) -> pa.Array:
    if pa.types.is_timestamp(kind):
        return pa.array(values, pa.int64()).cast(_MICROSECONDS).cast(kind)
    if pa.types.is_date(kind):
        return pa.array(values, pa.int32()).cast(pa.date32()).cast(kind)
    if pa.types.is_floating(kind):
        return pa.array([float(v) if isinstance(v, str) else v for v in values], kind)
    return pa.array(values, kind)


def encode_rows(group: FeatureGroup, table: pa.Table, order: int) -> list[tuple[str, int, int, str]]:
    """(key text, event time in µs, order, payload) of each row with a full key and an event time; the order is
    the row's own where the group has an order column (aggregations: its ingestion), else `order`."""
    keys = encode_keys(group, [table.column(name) for name in group.primary_key])
    orders = table.column(group.order_column).to_pylist() if group.order_column in table.column_names else None
    events = pc.cast(pc.cast(table.column(group.event_time), _MICROSECONDS), pa.int64()).combine_chunks()
    names = value_columns(group)
    columns = [_json_ready(table.column(n).combine_chunks(), group.schema.field(n).type) for n in names]
    rows = []
    for i, (key, event) in enumerate(zip(keys.to_pylist(), events.to_pylist())):
        if key is None or event is None:
            continue
        rows.append((key, event, orders[i] if orders is not None else order,
                     json.dumps([column[i] for column in columns], separators=(",", ":"))))
    return rows


def decode_rows(group: FeatureGroup, found: list[tuple[int, str] | None]) -> OnlineRows:
    """OnlineRows from (event µs, payload) per asked key, None where absent."""
    names = value_columns(group)
    decoded = [json.loads(item[1]) if item is not None else None for item in found]
    columns = {name: _from_json([row[i] if row is not None else None for row in decoded], group.schema.field(name).type)
               for i, name in enumerate(names)}
    events = pa.array([item[0] if item is not None else None for item in found], pa.int64()).cast(_MICROSECONDS)
    return OnlineRows(found=[item is not None for item in found], event_times=events, values=pa.table(columns))


# ------------------------------------------------------------------ the stores


class OnlineStore:
    """Latest row per key of online feature groups; see the module's docstring."""

    description: str

    def __init__(self):
        self._decoders: dict = {}

    def write(self, group: FeatureGroup, table: pa.Table, order: int) -> int:
        """Upsert the rows of `table` (the group's columns) where newer than the stored ones; returns rows given."""
        rows = encode_rows(group, table, order)
        for start in range(0, len(rows), _WRITE_BATCH):
            self._write(group, rows[start:start + _WRITE_BATCH])
        return len(rows)

    def read(self, group: FeatureGroup, keys: Sequence[Sequence[Any]]) -> OnlineRows:
        """The stored rows of the given keys (tuples of key values in primary-key order), in one query, as Arrow."""
        encoded = key_texts(group, keys)
        present = {key: found for key, found in zip(encoded, self._read(group, [k for k in encoded if k is not None]))}
        return decode_rows(group, [present.get(key) if key is not None else None for key in encoded])

    def read_rows(self, group: FeatureGroup, keys: Sequence[Sequence[Any]]) -> list[tuple[int, dict] | None]:
        """The same in plain Python: per key, (event time in µs, {value column: value}) or None; what serving
        uses, since building Arrow arrays costs more than the query for a few keys."""
        encoded = key_texts(group, keys)
        present = dict(zip(encoded, self._read(group, [k for k in encoded if k is not None])))
        decoders = self._decoders.get(group.ref)
        if decoders is None:
            names = value_columns(group)
            decoders = self._decoders[group.ref] = (names, [_python_decoder(group.schema.field(n).type)
                                                            for n in names])
        names, convert = decoders
        rows: list[tuple[int, dict] | None] = []
        for key in encoded:
            found = present.get(key) if key is not None else None
            if found is None:
                rows.append(None)
                continue
            values = json.loads(found[1])
            rows.append((found[0], {name: (f(v) if f is not None else v)
                                    for name, f, v in zip(names, convert, values)}))
        return rows

    def materialized_version(self, group: FeatureGroup) -> int | None:
        """The offline table version the store holds everything of, None before the first materialization."""
        raise NotImplementedError

    def set_materialized_version(self, group: FeatureGroup, version: int) -> None:
        raise NotImplementedError

    def count(self, group: FeatureGroup) -> int:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def _write(self, group: FeatureGroup, rows: list[tuple[str, int, int, str]]) -> None:
        raise NotImplementedError

    def _read(self, group: FeatureGroup, keys: list[str]) -> list[tuple[int, str] | None]:
        raise NotImplementedError


class SqliteOnlineStore(OnlineStore):
    """One SQLite file; a connection per thread (Serve answers requests from worker threads too)."""

    def __init__(self, path: str):
        super().__init__()
        self.path = path
        self.description = f"SQLite file {path}"
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self._local = threading.local()
        with self._connection() as connection:
            connection.executescript(
                "CREATE TABLE IF NOT EXISTS online_rows (grp TEXT NOT NULL, key TEXT NOT NULL, event_us INTEGER NOT NULL,"
                " ord INTEGER NOT NULL, payload TEXT NOT NULL, PRIMARY KEY (grp, key)) WITHOUT ROWID;"
                "CREATE TABLE IF NOT EXISTS online_state (grp TEXT PRIMARY KEY, materialized_version INTEGER NOT NULL);")

    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=NORMAL")
            self._local.connection = connection
        return connection

    def _write(self, group, rows):
        grp = group.ref
        connection = self._connection()
        connection.execute("BEGIN IMMEDIATE")
        try:
            connection.executemany(
                "INSERT INTO online_rows (grp, key, event_us, ord, payload) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (grp, key) DO UPDATE SET event_us = excluded.event_us, ord = excluded.ord, "
                "payload = excluded.payload WHERE excluded.event_us > online_rows.event_us "
                "OR (excluded.event_us = online_rows.event_us AND excluded.ord >= online_rows.ord)",
                [(grp, *row) for row in rows])
        except BaseException:
            connection.execute("ROLLBACK")
            raise
        connection.execute("COMMIT")

    def _read(self, group, keys):
        if not keys:
            return []
        unique = list(dict.fromkeys(keys))
        found: dict[str, tuple[int, str]] = {}
        for start in range(0, len(unique), 500):  # SQLite's limit on bound parameters
            part = unique[start:start + 500]
            query = (f"SELECT key, event_us, payload FROM online_rows WHERE grp = ? AND key IN "
                     f"({','.join('?' * len(part))})")
            for key, event, payload in self._connection().execute(query, (group.ref, *part)):
                found[key] = (event, payload)
        return [found.get(key) for key in keys]

    def materialized_version(self, group):
        row = self._connection().execute("SELECT materialized_version FROM online_state WHERE grp = ?",
                                         (group.ref,)).fetchone()
        return None if row is None else int(row[0])

    def set_materialized_version(self, group, version):
        self._connection().execute(
            "INSERT INTO online_state (grp, materialized_version) VALUES (?, ?) ON CONFLICT (grp) DO UPDATE SET "
            "materialized_version = excluded.materialized_version", (group.ref, int(version)))

    def count(self, group):
        return self._connection().execute("SELECT count(*) FROM online_rows WHERE grp = ?", (group.ref,)).fetchone()[0]

    def close(self):
        connection = getattr(self._local, "connection", None)
        if connection is not None:
            connection.close()
            self._local.connection = None


# Upserts a batch of (field, event µs, order, payload) where newer than the stored value "event|order|payload".
# Lua numbers are doubles: event times in µs stay exact until the year 2255.
_REDIS_UPSERT = """
local written = 0
for i = 1, #ARGV, 4 do
  local current = redis.call('HGET', KEYS[1], ARGV[i])
  local newer = true
  if current then
    local event, order = string.match(current, '^(%-?%d+)|(%-?%d+)|')
    event, order = tonumber(event), tonumber(order)
    local mine, my_order = tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
    newer = mine > event or (mine == event and my_order >= order)
  end
  if newer then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1] .. '|' .. ARGV[i + 2] .. '|' .. ARGV[i + 3])
    written = written + 1
  end
end
return written
"""


class RedisOnlineStore(OnlineStore):
    """One hash per group version (`orchard:<namespace>:<group>:v<version>`), one field per key.

    The namespace tells storage roots apart, so that several Orchard deployments (or test runs) can share one
    Redis without reading each other's rows."""

    def __init__(self, url: str, namespace: str = "default"):
        import redis

        super().__init__()
        parsed = urlparse(url)
        self.description = f"Redis at {parsed.hostname}:{parsed.port or 6379}"  # never the password
        self.namespace = namespace
        self.STATE = f"orchard:{namespace}:_materialized"
        self._client = redis.Redis.from_url(url, socket_timeout=30, socket_connect_timeout=10)
        self._upsert = self._client.register_script(_REDIS_UPSERT)

    def _hash(self, group: FeatureGroup) -> str:
        return f"orchard:{self.namespace}:{group.name}:v{group.version}"

    def _call(self, what: str, function, *args):
        import redis

        try:
            return function(*args)
        except redis.RedisError as error:
            raise OnlineStoreError(f"online store ({self.description}): {what} failed: {error}") from None

    def _write(self, group, rows):
        arguments = [part for row in rows for part in row]
        self._call("write", self._upsert, [self._hash(group)], arguments)

    def _read(self, group, keys):
        if not keys:
            return []
        values = self._call("read", self._client.hmget, self._hash(group), keys)
        found = []
        for value in values:
            if value is None:
                found.append(None)
                continue
            event, _, rest = value.decode().partition("|")
            found.append((int(event), rest.partition("|")[2]))
        return found

    def materialized_version(self, group):
        value = self._call("read", self._client.hget, self.STATE, group.ref)
        return None if value is None else int(value)

    def set_materialized_version(self, group, version):
        self._call("write", self._client.hset, self.STATE, group.ref, int(version))

    def count(self, group):
        return int(self._call("read", self._client.hlen, self._hash(group)))

    def close(self):
        self._client.close()


def open_online_store(url: str | None, storage: Storage) -> OnlineStore:
    """The store `url` names (`redis://...`, `rediss://...`, `sqlite:///path`), or the embedded default: a SQLite
    file under the (local) storage root."""
    if url:
        scheme = urlparse(url).scheme
        if scheme in ("redis", "rediss", "unix"):
            return RedisOnlineStore(url, namespace=hashlib.sha256(storage.root_uri.encode()).hexdigest()[:16])
        if scheme == "sqlite":
            return SqliteOnlineStore(urlparse(url).path)
        raise ConfigError(f"{ONLINE_ENV} must be a redis://, rediss:// or sqlite:/// URL; got one with scheme "
                          f"{scheme!r}")
    if not storage.is_local:
        raise ConfigError(f"the embedded online store needs a local storage root; with {storage.root_uri} set "
                          f"{ONLINE_ENV} to a redis:// URL")
    return SqliteOnlineStore(storage.path(SQLITE_LOCATION))


def online_groups(groups: Iterable[FeatureGroup]) -> list[FeatureGroup]:
    return [group for group in groups if group.online]
