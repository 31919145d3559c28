"""Benchmark: CSV bookings -> weekly vacancy -> Parquet, on Orchard (Ray Data), pandas and DuckDB.

All three run the same job on the same files in the same process: one
warm-up run each, then `--repeats` timed runs, interleaved; the table reports
medians. A fourth, `orchard_unreserved`, runs Orchard's job with Ray Data's
per-operator reservation off: a profile of what the reservation costs, not a
method users get. The outputs must agree to the row and number after every
round, or the benchmark fails.

    python -m bench.bench_weekly_vacancy --rows 4000000 --repeats 3
"""

from __future__ import annotations

import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import typer
from hotel.vacancy import BOOKING_COLUMNS, KEY_COLUMNS, VACANCY_SCHEMA

from bench import common

log = logging.getLogger("bench.weekly_vacancy")

BOOKING_TYPES = {
    "booking_id": pa.string(),
    "hotel_id": pa.string(),
    "user_id": pa.string(),
    "booked_at": pa.timestamp("us", tz="UTC"),
    "check_in": pa.date32(),
    "nights": pa.int64(),
    "rooms": pa.int64(),
    "hotel_rooms": pa.int64(),
    "status": pa.string(),
    "price_eur": pa.float64(),
}
DUCKDB_TYPES = {
    "booking_id": "VARCHAR", "hotel_id": "VARCHAR", "user_id": "VARCHAR", "booked_at": "TIMESTAMPTZ",
    "check_in": "DATE", "nights": "BIGINT", "rooms": "BIGINT", "hotel_rooms": "BIGINT", "status": "VARCHAR",
    "price_eur": "DOUBLE",
}


@dataclass(frozen=True)
class BenchConfig:
    rows: int
    repeats: int
    seed: int
    hotels: int
    rows_per_file: int
    ray_reservation: bool
    """Keep Ray Data's per-operator resource reservation (its default)."""
    out: Path | None
    """Where the data cache, outputs and result JSON go; None: the system temp dir, result on stdout only."""

    @property
    def work_dir(self) -> Path:
        return (self.out or Path(tempfile.gettempdir())) / "orchard-bench"


# ---------------------------------------------------------------- data


def generate_bookings(rows: int, seed: int, hotels: int) -> pa.Table:
    """`rows` seeded bookings over two years of check-ins; popular hotels are the big ones, ~10% cancelled."""
    rng = np.random.default_rng(seed)
    capacity = np.round(np.exp(rng.uniform(np.log(5), np.log(800), hotels))).astype(np.int64)
    popularity = capacity * rng.lognormal(0.0, 0.5, hotels)
    hotel = rng.choice(hotels, size=rows, p=popularity / popularity.sum())
    hotel_names = pa.array([f"H{number:04d}" for number in range(hotels)])

    first_check_in = np.datetime64("2024-01-01", "D").astype(np.int64)
    check_in = first_check_in + rng.integers(0, 731, rows)
    nights = np.minimum(rng.geometric(0.3, rows), 14)
    rooms = np.minimum(rng.geometric(0.7, rows), 9)
    booked_at_seconds = check_in * 86_400 - rng.integers(3_600, 180 * 86_400, rows)
    booked_at = pa.array(booked_at_seconds, pa.timestamp("s", tz="UTC"))
    cancelled = rng.random(rows) < 0.10

    def labels(prefix: str, numbers: np.ndarray) -> pa.Array:
        return pc.binary_join_element_wise(prefix, pa.array(numbers).cast(pa.string()), "")

    return pa.table({
        "booking_id": labels("BK", np.arange(rows)),
        "hotel_id": hotel_names.take(pa.array(hotel)),
        "user_id": labels("U", rng.integers(0, max(rows // 4, 1), rows)),
        "booked_at": pc.strftime(booked_at, "%Y-%m-%dT%H:%M:%SZ"),
        "check_in": pa.array(check_in.astype(np.int32)).cast(pa.date32()),
        "nights": nights.astype(np.int64),
        "rooms": rooms.astype(np.int64),
        "hotel_rooms": capacity[hotel],
        "status": pa.array(np.where(cancelled, "cancelled", "confirmed")),
        "price_eur": np.round(rng.lognormal(4.6, 0.4, rows) * nights * rooms, 2),
    })


def booking_files(config: BenchConfig) -> list[Path]:
    """The CSV files of this row count and seed, generated on first use and reused afterwards."""
    name = f"bookings-{config.rows}-seed{config.seed}-hotels{config.hotels}-per{config.rows_per_file}"
    folder = config.work_dir / name
    complete = folder / "_COMPLETE"
    if not complete.exists():
        started = time.perf_counter()
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        bookings = generate_bookings(config.rows, config.seed, config.hotels)
        options = pacsv.WriteOptions(quoting_style="needed")
        for part, offset in enumerate(range(0, config.rows, config.rows_per_file)):
            pacsv.write_csv(bookings.slice(offset, config.rows_per_file), folder / f"bookings-{part:04d}.csv", options)
        complete.touch()
        log.info("generated %d bookings in %s (%.1f s)", config.rows, folder, time.perf_counter() - started)
    return sorted(folder.glob("bookings-*.csv"))


# ---------------------------------------------------------------- the three methods


def run_orchard(files: list[Path], output: Path) -> None:
    import ray.data
    from hotel.vacancy import weekly_vacancy

    bookings = ray.data.read_csv(
        [str(f) for f in files],
        convert_options=pacsv.ConvertOptions(column_types=BOOKING_TYPES, include_columns=list(BOOKING_COLUMNS)),
        # One read task per landing file: Ray Data would otherwise split each file's rows into
        # ~25 blocks (to reach 200), each of which shrinks far less to partials.
        override_num_blocks=len(files),
    )
    weekly_vacancy(bookings).write_parquet(str(output))


def run_pandas(files: list[Path], output: Path) -> None:
    """The same job as a careful single-process pandas user would write it (categorical hotel ids, integer keys)."""
    bookings = pd.concat([
        pd.read_csv(f, usecols=list(BOOKING_COLUMNS), parse_dates=["check_in"], date_format="%Y-%m-%d",
                    dtype={"hotel_id": "category", "status": "category"})
        for f in files
    ], ignore_index=True)
    confirmed = bookings[bookings["status"] == "confirmed"]
    hotel_ids = pd.Categorical(confirmed["hotel_id"])
    hotel, rooms, capacity = hotel_ids.codes, confirmed["rooms"].to_numpy(), confirmed["hotel_rooms"].to_numpy()
    day = confirmed["check_in"].to_numpy().astype("datetime64[D]").astype(np.int64)
    weekday = (day + 3) % 7  # 1970-01-01 was a Thursday
    nights = confirmed["nights"].to_numpy()
    nights_per_week = [
        np.minimum(nights, 7 - weekday),
        np.clip(nights - (7 - weekday), 0, 7),
        np.maximum(nights - (14 - weekday), 0),
    ]
    pieces = []
    for week, nights_in_week in enumerate(nights_per_week):
        touched = nights_in_week > 0
        pieces.append(pd.DataFrame({
            "hotel": hotel[touched],
            "week_start": day[touched] - weekday[touched] + 7 * week,
            "booked_room_nights": rooms[touched] * nights_in_week[touched],
            "hotel_rooms": capacity[touched],
        }))
    weekly = pd.concat(pieces, ignore_index=True).groupby(["hotel", "week_start"], sort=False).agg(
        booked_room_nights=("booked_room_nights", "sum"),
        bookings=("booked_room_nights", "size"),
        hotel_rooms=("hotel_rooms", "max"),
    ).reset_index()
    weekly.insert(0, "hotel_id", hotel_ids.categories.to_numpy()[weekly.pop("hotel")])
    weekly["vacancy"] = (1 - weekly["booked_room_nights"] / (weekly["hotel_rooms"] * 7)).clip(lower=0)
    weekly["week_start"] = weekly["week_start"].to_numpy().astype("datetime64[D]")
    weekly.to_parquet(output, schema=VACANCY_SCHEMA, index=False)


def run_duckdb(files: list[Path], output: Path) -> None:
    import duckdb

    columns = "{" + ", ".join(f"'{name}': '{kind}'" for name, kind in DUCKDB_TYPES.items()) + "}"
    paths = "[" + ", ".join(f"'{f}'" for f in files) + "]"
    query = f"""
        COPY (
            WITH confirmed AS (
                SELECT hotel_id, rooms, hotel_rooms, nights,
                       isodow(check_in) - 1 AS weekday,
                       check_in - (isodow(check_in) - 1)::INTEGER AS monday
                FROM read_csv({paths}, header = true, columns = {columns})
                WHERE status = 'confirmed'
            ),
            nightly AS (
                SELECT hotel_id, hotel_rooms,
                       monday + (7 * week)::INTEGER AS week_start,
                       rooms * (least(weekday + nights, 7 * (week + 1)) - greatest(weekday, 7 * week)) AS room_nights
                FROM confirmed, range(3) AS weeks(week)
                WHERE weekday + nights > 7 * week
            )
            SELECT hotel_id, week_start,
                   sum(room_nights)::BIGINT AS booked_room_nights,
                   count(*)::BIGINT AS bookings,
                   max(hotel_rooms)::BIGINT AS hotel_rooms,
                   greatest(0.0, 1.0 - sum(room_nights) / (max(hotel_rooms) * 7.0))::DOUBLE AS vacancy
            FROM nightly
            GROUP BY hotel_id, week_start
        ) TO '{output}' (FORMAT parquet)
    """
    with duckdb.connect() as connection:
        connection.execute(query)


def run_orchard_unreserved(files: list[Path], output: Path) -> None:
    """`run_orchard` with Ray Data's per-operator resource reservation off for this run only: not a method users
    get (Orchard keeps Ray's default), the measure of what the reservation costs on this machine."""
    import ray.data

    context = ray.data.DataContext.get_current()
    kept = context.op_resource_reservation_enabled
    context.op_resource_reservation_enabled = False
    try:
        run_orchard(files, output)
    finally:
        context.op_resource_reservation_enabled = kept


RUNNERS: dict[str, Callable[[list[Path], Path], None]] = {
    "orchard": run_orchard, "pandas": run_pandas, "duckdb": run_duckdb, "orchard_unreserved": run_orchard_unreserved,
}


# ---------------------------------------------------------------- checking and reporting


def read_output(path: Path) -> pa.Table:
    table = pq.read_table(path).select(VACANCY_SCHEMA.names).cast(VACANCY_SCHEMA)
    return table.sort_by([(name, "ascending") for name in KEY_COLUMNS])


def check_outputs_agree(outputs: dict[str, Path]) -> int:
    """Raise if any two outputs differ in keys, counts or vacancy; returns the number of rows."""
    tables = {method: read_output(path) for method, path in outputs.items()}
    reference_method, reference = next(iter(tables.items()))
    exact = [name for name in VACANCY_SCHEMA.names if name != "vacancy"]
    for method, table in tables.items():
        if table.num_rows != reference.num_rows:
            raise AssertionError(f"{method} wrote {table.num_rows} rows, {reference_method} {reference.num_rows}")
        for name in exact:
            if not table[name].equals(reference[name]):
                different = pc.not_equal(table[name], reference[name]).combine_chunks()
                row = int(pc.index(different, True).as_py())
                raise AssertionError(
                    f"{method} and {reference_method} differ in {name!r} at row {row}: "
                    f"{table.slice(row, 1).to_pylist()} vs {reference.slice(row, 1).to_pylist()}")
        gap = np.abs(table["vacancy"].to_numpy() - reference["vacancy"].to_numpy())
        if gap.size and gap.max() > 1e-12:
            row = int(gap.argmax())
            raise AssertionError(f"{method} and {reference_method} differ in 'vacancy' at row {row}: "
                                 f"{table.slice(row, 1).to_pylist()} vs {reference.slice(row, 1).to_pylist()}")
    return reference.num_rows


def result_document(config: BenchConfig, files: list[Path], results: dict[str, common.MethodResult], output_rows: int) -> dict:
    return {
        "benchmark": "weekly_vacancy",
        "rows": config.rows,
        "files": len(files),
        "csv_bytes": sum(f.stat().st_size for f in files),
        "repeats": config.repeats,
        "seed": config.seed,
        "output_rows": output_rows,
        "cpus": os.cpu_count(),
        "ray_op_resource_reservation": config.ray_reservation,
        "python": platform.python_version(),
        "methods": common.summarize(results, ("pandas", "duckdb")),
    }


def format_table(document: dict) -> str:
    title = (f"weekly vacancy: {document['rows']:,} bookings in {document['files']} CSV files, "
             f"median of {document['repeats']}, {document['cpus']} CPUs")
    return common.format_table(title, document["methods"], ("pandas", "duckdb"))


# ---------------------------------------------------------------- running


def run_benchmark(config: BenchConfig) -> dict:
    import ray
    import ray.data

    from orchard.runtime import configure_ray_data

    files = booking_files(config)
    outputs_dir = config.work_dir / "outputs"
    common.init_local_ray()
    try:
        configure_ray_data(progress_bars=False)
        # With reservation, Ray Data sets aside a share of the CPUs for every operator: on two
        # cores the write operator holds one for the whole run and read + partials get the other.
        ray.data.DataContext.get_current().op_resource_reservation_enabled = config.ray_reservation
        results, output_rows = common.time_methods(RUNNERS, files, outputs_dir, config.repeats,
                                             check_outputs_agree)
    finally:
        ray.shutdown()
    return result_document(config, files, results, output_rows)


def main(
    rows: int = typer.Option(4_000_000, "--rows", min=1, help="Bookings to generate (cached per rows + seed)."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed runs per method; the table shows the median."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the generated bookings."),
    hotels: int = typer.Option(500, "--hotels", min=1, help="Distinct hotels in the generated bookings."),
    rows_per_file: int = typer.Option(
        500_000, "--rows-per-file", min=1, help="Bookings per CSV file of the landing folder."),
    ray_reservation: bool = typer.Option(
        True, "--ray-reservation/--no-ray-reservation",
        help="Keep Ray Data's per-operator CPU reservation (Ray's default; halves read parallelism on 2 CPUs)."),
    out: Path = typer.Option(
        None, "--out", help="Folder for data, outputs and result.json (default: the system temp dir)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON document on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
) -> None:
    """Time CSV -> weekly vacancy -> Parquet on Orchard, pandas and DuckDB, and check they agree."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    config = BenchConfig(rows=rows, repeats=repeats, seed=seed, hotels=hotels, rows_per_file=rows_per_file,
                         ray_reservation=ray_reservation, out=out)
    document = run_benchmark(config)
    common.publish(document, format_table(document), out, as_json)


if __name__ == "__main__":
    typer.run(main)
