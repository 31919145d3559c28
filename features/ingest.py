"""Reading one raw source file into rows of a feature group, never dropping a record.

Every record of a file comes out as one row: either converted to the group's
types and passing its expectations, or carrying the reason it was rejected, the
file and line it came from, and its raw text. A file that cannot be read at all
(wrong encoding, not the format it claims) comes out as one file-level
rejection, and the run goes on.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from features.definitions import EVENT_TIME_TYPE, FeatureGroup, FileSource, KafkaSource, SqlSource
from features.images import ImageError, ImageSource, decode_image
from features.validation import check_expectations

# Bookkeeping columns every parsed row carries next to the group's own columns.
SOURCE_COLUMN, LINE_COLUMN, ORDER_COLUMN, REASON_COLUMN, RAW_COLUMN = "_source", "_line", "_order", "_reason", "_raw"

_NUMBER = r"^\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$"
_INTEGER = r"^\s*[-+]?\d+\s*$"
_DATE = r"^\d{4}-\d{2}-\d{2}$"
_TIMESTAMP = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?)?\s*(Z|z|[+-]\d{2}:?\d{2})?$"


@dataclass(frozen=True)
class SourceFile:
    """One landing file, identified by path, size and modification time."""

    source: str
    path: str
    size: int
    mtime_ns: int
    ordinal: int
    """Position of the file in this run; rows are ordered by (ordinal << 40) + line."""

    @property
    def identity(self) -> str:
        return f"{self.path}|{self.size}|{self.mtime_ns}"


def bookkeeping_schema(group: FeatureGroup) -> pa.Schema:
    return pa.schema(
        [pa.field(f.name, f.type) for f in group.schema]
        + [
            pa.field(SOURCE_COLUMN, pa.string()),
            pa.field(LINE_COLUMN, pa.int64()),
            pa.field(ORDER_COLUMN, pa.int64()),
            pa.field(REASON_COLUMN, pa.string()),
            pa.field(RAW_COLUMN, pa.string()),
        ]
    )


class FileUnreadable(ValueError):
    """The whole file cannot be parsed as the format its source declares."""


def parse_file(data: bytes, file: SourceFile, source: FileSource, group: FeatureGroup) -> pa.Table:
    """All records of one file as rows of `bookkeeping_schema(group)`."""
    try:
        raw, lines, rejected = _read_strings(data, source, group)
    except FileUnreadable as error:
        return _rejections(file, group, [(None, None, f"file could not be read as {source.format}: {error}")])
    rows, reasons = convert(raw, source, group)
    rows = rows.append_column(SOURCE_COLUMN, pa.array([file.path] * rows.num_rows, pa.string()))
    rows = rows.append_column(LINE_COLUMN, pa.array(lines, pa.int64()))
    rows = rows.append_column(ORDER_COLUMN, pc.add(pa.array(lines, pa.int64()), file.ordinal << 40))
    rows = rows.append_column(REASON_COLUMN, reasons)
    rows = rows.append_column(RAW_COLUMN, raw.column(RAW_COLUMN))
    if rejected:
        rows = pa.concat_tables([rows, _rejections(
            file, group, [(line, text, f"line could not be parsed: {reason}") for line, text, reason in rejected])])
    return rows.select(bookkeeping_schema(group).names).cast(bookkeeping_schema(group))


def _decode(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileUnreadable(f"not valid UTF-8 at byte {error.start}") from None


def _read_strings(data: bytes, source: FileSource, group: FeatureGroup):
    """(table of raw strings per feature + _reason + _raw, line numbers, [(line, text, reason)])."""
    wanted = [source.source_column(f.name) for f in group.read_features]
    if source.format == "csv":
        return _read_csv(data, wanted)
    if source.format == "jsonl":
        return _read_jsonl(data, wanted)
    if source.format == "parquet":
        return _read_parquet(data, wanted)
    raise FileUnreadable(f"unknown format {source.format!r}")


def _read_csv(data: bytes, wanted: list[str]):
    text = _decode(data)
    if not text.strip():  # an empty file holds no records (as an empty JSON Lines file), not a missing header
        empty = pa.table({name: pa.array([], pa.string()) for name in [*wanted, REASON_COLUMN, RAW_COLUMN]})
        return empty, [], []
    invalid: list[tuple[str, str]] = []

    def on_invalid(row) -> str:
        invalid.append((row.text, f"expected {row.expected_columns} fields, got {row.actual_columns}"))
        return "skip"

    try:
        table = pacsv.read_csv(
            io.BytesIO(data),
            parse_options=pacsv.ParseOptions(invalid_row_handler=on_invalid),
            convert_options=pacsv.ConvertOptions(
                column_types={name: pa.string() for name in wanted}, strings_can_be_null=True,
                null_values=[""],  # "nan" or "NULL" are values to check, not silent gaps
            ),
        )
    except pa.ArrowInvalid as error:
        raise FileUnreadable(str(error).splitlines()[0]) from None
    missing = [name for name in wanted if name not in table.column_names]
    if missing:
        raise FileUnreadable(f"header lacks column(s) {', '.join(missing)}")
    # Line numbers: every non-empty line after the header is one record, valid or not.
    raw_bytes = np.frombuffer(data, dtype=np.uint8)
    ends = np.flatnonzero(raw_bytes == 10)
    ends = np.append(ends, len(raw_bytes)) if len(raw_bytes) and raw_bytes[-1] != 10 else ends
    starts = np.concatenate([[0], ends[:-1] + 1])
    record_lines = np.flatnonzero((ends - starts) > 0)[1:] + 1  # 1-based, header excluded
    rejected = []
    if invalid:
        all_lines = text.split("\n")
        position, taken = 0, set()
        for row_text, reason in invalid:
            while record_lines[position] - 1 < len(all_lines) and all_lines[record_lines[position] - 1].rstrip("\r") != row_text:
                position += 1
            taken.add(int(record_lines[position]))
            rejected.append((int(record_lines[position]), row_text, reason))
            position += 1
        record_lines = np.array([n for n in record_lines if n not in taken], dtype=np.int64)
    table = table.select(wanted)
    raw_text = _rows_as_text(table)
    table = table.append_column(REASON_COLUMN, pa.nulls(table.num_rows, pa.string()))
    table = table.append_column(RAW_COLUMN, raw_text)
    return table, record_lines[: table.num_rows].tolist(), rejected


def _rows_as_text(table: pa.Table) -> pa.Array:
    """Each row's raw values joined by commas, kept for the quarantine table."""
    if table.num_columns == 0:
        return pa.array([""] * table.num_rows)
    columns = [pc.fill_null(c, "") for c in table.columns]
    return pc.binary_join_element_wise(*columns, ",")


def _read_jsonl(data: bytes, wanted: list[str]):
    text = _decode(data)
    numbered = [(number, line) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not numbered and text.strip():
        raise FileUnreadable("no JSON records")
    table = json_records([line for _, line in numbered], wanted, [None] * len(numbered), "line")
    return table, [number for number, _ in numbered], []


def json_records(texts: list[str], wanted: list[str], reasons: list[str | None], what: str) -> pa.Table:
    """Each text as one JSON object's `wanted` values as strings, with _reason (kept where given, else why the text
    is not a JSON object) and _raw (the text). `what` names a record in reasons: "line", "message"."""
    values: dict[str, list] = {name: [] for name in wanted}
    reasons = list(reasons)
    for index, text in enumerate(texts):
        record: Any = {}
        if reasons[index] is None:
            try:
                record = json.loads(text)
                if not isinstance(record, dict):
                    reasons[index], record = f"{what} is not a JSON object", {}
            except json.JSONDecodeError as error:
                reasons[index] = f"not valid JSON: {error.msg} at column {error.colno}"
        for name in wanted:
            value = record.get(name)
            values[name].append(None if value is None else value if isinstance(value, str) else json.dumps(value))
    return pa.table({**{n: pa.array(v, pa.string()) for n, v in values.items()},
                     REASON_COLUMN: pa.array(reasons, pa.string()), RAW_COLUMN: pa.array(texts, pa.string())})


def _read_parquet(data: bytes, wanted: list[str]):
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowInvalid, OSError) as error:
        raise FileUnreadable(str(error).splitlines()[0]) from None
    missing = [name for name in wanted if name not in table.column_names]
    if missing:
        raise FileUnreadable(f"lacks column(s) {', '.join(missing)}")
    return _as_strings(table, wanted), list(range(1, table.num_rows + 1)), []


def _as_strings(table: pa.Table, wanted: list[str]) -> pa.Table:
    """Typed columns as text, so typed sources pass the same conversion and checks as text files."""
    strings = pa.table({name: pc.cast(table.column(name), pa.string()) for name in dict.fromkeys(wanted)})
    raw_text = _rows_as_text(strings)
    strings = strings.append_column(REASON_COLUMN, pa.nulls(table.num_rows, pa.string()))
    return strings.append_column(RAW_COLUMN, raw_text)


def parse_sql_rows(rows: pa.Table, source: SqlSource, group: FeatureGroup, ordinal: int,
                   reject: str | None = None) -> pa.Table:
    """One block of rows read from a SQL source as rows of `bookkeeping_schema(group)`.

    The row id takes the place of a line number; ordering is by source, then row id.
    With `reject`, every row is rejected for that reason.
    """
    wanted = [source.source_column(f.name) for f in group.read_features]
    raw = _as_strings(rows, wanted)
    typed, reasons = convert(raw, source, group)
    if reject is not None:
        reasons = pa.array([reject] * rows.num_rows, pa.string())
    try:
        row_ids = pc.cast(rows.column(source.row_id), pa.int64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise ValueError(f"SQL source {source.name!r}: row id column {source.row_id!r} must hold integers") from None
    smallest, largest = pc.min_max(row_ids).values()
    if row_ids.null_count or (smallest.as_py() is not None and not 0 <= smallest.as_py() <= largest.as_py() < 1 << 40):
        raise ValueError(f"SQL source {source.name!r} ({source.label}): row id column {source.row_id!r} must hold "
                         f"integers from 0 to 2**40 and never null; it identifies rows in the quarantine table")
    typed = typed.append_column(SOURCE_COLUMN, pa.array([source.label] * rows.num_rows, pa.string()))
    typed = typed.append_column(LINE_COLUMN, row_ids)
    typed = typed.append_column(ORDER_COLUMN, pc.add(row_ids, pa.scalar(ordinal << 40, pa.int64())))
    typed = typed.append_column(REASON_COLUMN, reasons)
    typed = typed.append_column(RAW_COLUMN, raw.column(RAW_COLUMN))
    return typed.select(bookkeeping_schema(group).names).cast(bookkeeping_schema(group))


def _first_reason(current: pa.Array, failed: pa.Array, message: pa.Array | str) -> pa.Array:
    """Keep the earlier reason where there is one; else this check's message where it failed."""
    return pc.if_else(pc.and_(pc.is_null(current), pc.fill_null(failed, False)), message, current)


def _quoted(prefix: str, values: pa.Array) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.fill_null(values, ""), "'", "")


def convert(raw: pa.Table, source: FileSource | SqlSource | KafkaSource,
            group: FeatureGroup) -> tuple[pa.Table, pa.Array]:
    """Raw strings -> (the group's columns in its types and units, each row's rejection reason or null)."""
    reason = raw.column(REASON_COLUMN).combine_chunks()
    converted = []
    read = [f for f in group.read_features if f.image is None]  # images are decoded by their source, not here
    for feature in read:
        strings = pc.utf8_trim_whitespace(raw.column(source.source_column(feature.name)).combine_chunks())
        strings = pc.if_else(pc.equal(strings, ""), pa.scalar(None, pa.string()), strings)
        kind, pattern = _kind(feature.dtype)
        message = _quoted(f"feature '{feature.name}' must be {kind}, got '", strings)
        if pattern is not None:
            bad = pc.and_(pc.is_valid(strings), pc.invert(pc.match_substring_regex(strings, pattern)))
            reason = _first_reason(reason, bad, message)
            strings = pc.if_else(bad, pa.scalar(None, pa.string()), strings)
        values, failed = _cast_each(strings, feature.dtype)
        if failed is not None:  # matched the pattern but still did not convert (say, month 13)
            reason = _first_reason(reason, failed, message)
        if feature.name in source.scale:
            values = pc.multiply(values, pa.scalar(source.scale[feature.name], feature.dtype))
        converted.append(values)
    table = pa.Table.from_arrays(converted, names=[f.name for f in read])
    reason = check_expectations(table, group, reason, features=read)
    if group.compute is not None:
        computed = group.compute(table)
        if REASON_COLUMN in computed.column_names:
            rejected = computed.column(REASON_COLUMN).combine_chunks()
            reason = _first_reason(reason, pc.is_valid(rejected), rejected)
        for feature in group.features:
            if feature.computed:
                table = table.append_column(feature.name, computed.column(feature.name).cast(feature.dtype))
        reason = check_expectations(table, group, reason, features=[f for f in group.features if f.computed])
    return table.select([name for name in group.schema.names if name in table.column_names]), reason


def parse_image_files(files: list[tuple[SourceFile, bytes]], source: ImageSource, group: FeatureGroup) -> pa.Table:
    """One row per image file, as rows of `bookkeeping_schema(group)`: its pixels (`features.images.decode_image`)
    and the features its path gives, or the reason it was rejected. The raw text kept for quarantine names the file
    and its size, never its bytes."""
    spec = group.feature(source.image).image
    strings = {f.name: [] for f in group.read_features if f.image is None}
    pixels, reasons, raws = [], [], []
    prefix = source.location.rstrip("/") + "/"
    for file, data in files:
        relative = file.path[len(prefix):] if file.path.startswith(prefix) else file.path
        fields = source.match(relative)
        reason, image = None, None
        if fields is None:
            reason = f"the file's path {relative!r} does not match the source's path_fields {source.path_fields!r}"
            fields = {}
        else:
            try:
                image = decode_image(data, spec).tobytes()
            except ImageError as error:
                reason = f"image '{source.image}' could not be read: {error}"
        if group.event_time not in fields:
            fields[group.event_time] = datetime.fromtimestamp(file.mtime_ns / 1e9, timezone.utc).isoformat()
        for name, values in strings.items():
            values.append(fields.get(name))
        pixels.append(image)
        reasons.append(reason)
        raws.append(f"{relative} ({len(data)} bytes)")
    raw = pa.table({**{n: pa.array(v, pa.string()) for n, v in strings.items()},
                    REASON_COLUMN: pa.array(reasons, pa.string()), RAW_COLUMN: pa.array(raws, pa.string())})
    rows, reason = convert(raw, source, group)
    rows = rows.append_column(source.image, pa.array(pixels, pa.binary()))
    rows = rows.append_column(SOURCE_COLUMN, pa.array([file.path for file, _ in files], pa.string()))
    lines = pa.array([1] * len(files), pa.int64())  # one record per file
    rows = rows.append_column(LINE_COLUMN, lines)
    rows = rows.append_column(ORDER_COLUMN, pa.array([(file.ordinal << 40) + 1 for file, _ in files], pa.int64()))
    rows = rows.append_column(REASON_COLUMN, reason)
    rows = rows.append_column(RAW_COLUMN, raw.column(RAW_COLUMN))
    return rows.select(bookkeeping_schema(group).names).cast(bookkeeping_schema(group))


def _kind(dtype: pa.DataType) -> tuple[str, str | None]:
    if pa.types.is_floating(dtype):
        return "a number", _NUMBER
    if pa.types.is_integer(dtype):
        return "an integer", _INTEGER
    if pa.types.is_timestamp(dtype):
        return "a timestamp", _TIMESTAMP
    if pa.types.is_date(dtype):
        return "a date (YYYY-MM-DD)", _DATE
    if pa.types.is_boolean(dtype):
        return "true or false", r"(?i)^(true|false|1|0)$"
    return "text", None


def _cast_each(strings: pa.Array, dtype: pa.DataType) -> tuple[pa.Array, pa.Array | None]:
    """Cast all values at once; only if that fails, one by one, marking those that fail."""
    from features.conform import to_utc_timestamps

    def cast(values: pa.Array) -> pa.Array:
        if dtype == EVENT_TIME_TYPE:
            return to_utc_timestamps(values)
        return pc.cast(values, dtype)

    try:
        return cast(strings), None
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        pass
    results, failed = [], []
    for value in strings:
        try:
            results.append(cast(pa.array([value.as_py()], pa.string()))[0].as_py())
            failed.append(False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            results.append(None)
            failed.append(True)
    return pa.array(results, dtype), pa.array(failed)


def _rejections(file: SourceFile, group: FeatureGroup, rejected: list[tuple[int | None, str | None, str]]) -> pa.Table:
    """Rows for records (or, with line None, a whole file) that never reached typed values."""
    schema = bookkeeping_schema(group)
    rows = []
    for line, text, reason in rejected:
        row = dict.fromkeys(schema.names)
        row.update({SOURCE_COLUMN: file.path, LINE_COLUMN: line, ORDER_COLUMN: (file.ordinal << 40) + (line or 0),
                    REASON_COLUMN: reason, RAW_COLUMN: text})
        rows.append(row)
    return pa.Table.from_pylist(rows, schema=schema)
