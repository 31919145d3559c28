"""Benchmark: a point-in-time training-set join on Orchard (Ray), DuckDB (ASOF LEFT JOIN) and pandas (merge_asof).

Label rows (user, label time) get the latest values of three feature groups
(user, event time) at or before the label time; one group has a 30-day TTL. All
three methods read the same Parquet files and write the joined rows to Parquet,
in the same process: one warm-up run each, then `--repeats` timed runs,
interleaved; the table reports medians. After every round the three outputs,
sorted by label id, must be equal, or the benchmark fails.

    python -m bench.bench_pit_join --labels 1000000 --rows 1000000 --keys 100000 --repeats 3
"""

from __future__ import annotations

import datetime as dt
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
import pyarrow.parquet as pq
import typer

from bench import common

log = logging.getLogger("bench.pit_join")

LABEL_TIME = "label_at"
YEAR_START = np.datetime64("2024-01-01T00:00:00", "us").astype(np.int64)
YEAR_MICROSECONDS = 366 * 86_400 * 1_000_000
TIME = pa.timestamp("us", tz="UTC")


@dataclass(frozen=True)
class FeatureGroup:
    """One feature source of the benchmark: its files' folder name, event time column, features and TTL."""

    name: str
    event_time: str
    features: tuple[str, ...]
    ttl: dt.timedelta | None = None


GROUPS = (
    FeatureGroup("activity", "activity_at", ("clicks_7d", "sessions_7d")),
    FeatureGroup("spend", "spend_at", ("spend_30d_eur", "orders_30d"), ttl=dt.timedelta(days=30)),
    FeatureGroup("profile", "profile_at", ("loyalty_tier", "profile_at")),
)


@dataclass(frozen=True)
class BenchConfig:
    labels: int
    rows: int
    keys: int
    repeats: int
    seed: int
    rows_per_file: int
    ray_datasource_v2: bool
    """Keep Ray Data's default Parquet reader (DataContext.use_datasource_v2, on in Ray 2.60)."""
    out: Path | None
    """Where the data cache, outputs and result JSON go; None: the system temp dir, result on stdout only."""

    @property
    def work_dir(self) -> Path:
        return (self.out or Path(tempfile.gettempdir())) / "orchard-bench"


@dataclass(frozen=True)
class BenchData:
    labels: list[Path]
    groups: dict[str, list[Path]]

    def bytes(self) -> int:
        return sum(f.stat().st_size for f in [*self.labels, *(f for files in self.groups.values() for f in files)])


# ---------------------------------------------------------------- data


def unique_times(rng: np.random.Generator, users: np.ndarray) -> np.ndarray:
    """Event times over 2024 in microseconds, distinct per user (so the ASOF joins agree without a tie-break)."""
    times = YEAR_START + rng.integers(0, YEAR_MICROSECONDS, len(users))
    while True:
        repeated = pd.DataFrame({"u": users, "t": times}).duplicated().to_numpy()
        if not repeated.any():
            return times
        times[repeated] = YEAR_START + rng.integers(0, YEAR_MICROSECONDS, int(repeated.sum()))


def generate_labels(rows: int, keys: int, rng: np.random.Generator) -> pa.Table:
    users = rng.integers(0, keys, rows)
    return pa.table({
        "label_id": np.arange(rows, dtype=np.int64),
        "user_id": users,
        LABEL_TIME: pa.array(YEAR_START + rng.integers(0, YEAR_MICROSECONDS, rows), TIME),
        "booked": rng.random(rows) < 0.2,
    })


def generate_group(group: FeatureGroup, rows: int, keys: int, rng: np.random.Generator) -> pa.Table:
    users = rng.integers(0, keys, rows)
    columns = {"user_id": users, group.event_time: pa.array(unique_times(rng, users), TIME)}
    if group.name == "activity":
        columns.update(clicks_7d=rng.poisson(12, rows), sessions_7d=rng.poisson(3, rows))
    elif group.name == "spend":
        columns.update(spend_30d_eur=np.round(rng.lognormal(4, 1, rows), 2), orders_30d=rng.poisson(1.5, rows))
    else:
        columns["loyalty_tier"] = pa.array(["bronze", "silver", "gold", "platinum"]).take(
            pa.array(rng.choice(4, rows, p=[0.6, 0.25, 0.1, 0.05])))
    return pa.table(columns)


def write_files(table: pa.Table, folder: Path, rows_per_file: int) -> None:
    folder.mkdir(parents=True)
    for part, offset in enumerate(range(0, table.num_rows, rows_per_file)):
        pq.write_table(table.slice(offset, rows_per_file), folder / f"part-{part:04d}.parquet")


def bench_data(config: BenchConfig) -> BenchData:
    """The Parquet files of these sizes and seed, generated on first use and reused afterwards."""
    name = (f"pit-labels{config.labels}-rows{config.rows}-keys{config.keys}-seed{config.seed}"
            f"-per{config.rows_per_file}")
    root = config.work_dir / name
    if not (root / "_COMPLETE").exists():
        started = time.perf_counter()
        shutil.rmtree(root, ignore_errors=True)
        rng = np.random.default_rng(config.seed)
        write_files(generate_labels(config.labels, config.keys, rng), root / "labels", config.rows_per_file)
        for group in GROUPS:
            write_files(generate_group(group, config.rows, config.keys, rng), root / group.name, config.rows_per_file)
        (root / "_COMPLETE").touch()
        log.info("generated the benchmark's Parquet files in %s (%.1f s)", root, time.perf_counter() - started)
    return BenchData(labels=sorted((root / "labels").glob("*.parquet")),
                     groups={g.name: sorted((root / g.name).glob("*.parquet")) for g in GROUPS})


# ---------------------------------------------------------------- the three methods


def _as_of_sources(datasets: dict) -> list:
    """The join's sources over each group's dataset (name -> Ray Dataset)."""
    from features.pit_join import AsOfSource

    return [AsOfSource(name=g.name, dataset=datasets[g.name], keys=("user_id",), label_keys=("user_id",),
                       event_time=g.event_time, features=g.features, ttl=g.ttl) for g in GROUPS]


def run_orchard(data: BenchData, output: Path) -> None:
    import ray.data

    from features.pit_join import point_in_time_join

    labels = ray.data.read_parquet([str(f) for f in data.labels])
    sources = _as_of_sources({g.name: ray.data.read_parquet([str(f) for f in data.groups[g.name]]) for g in GROUPS})
    joined, stats = point_in_time_join(labels, LABEL_TIME, sources)
    joined.write_parquet(str(output))
    log.info("orchard: %s", stats)


def profile_orchard(data: BenchData, output: Path, repeats: int) -> dict[str, list[float]]:
    """Orchard's run timed apart (the profile the report shows beside the medians): the four inputs read and
    materialized (only the join's columns, pushed into the read as `point_in_time_join` does), the join on those,
    and the write."""
    import ray.data

    from features.pit_join import point_in_time_join

    phases: dict[str, list[float]] = {"read the 4 inputs": [], "join": [], "write": []}
    for _ in range(repeats):
        common.remove(output)
        began = time.perf_counter()
        labels = ray.data.read_parquet([str(f) for f in data.labels]).materialize()
        read = {g.name: ray.data.read_parquet([str(f) for f in data.groups[g.name]]).select_columns(
            list(dict.fromkeys(["user_id", g.event_time, *g.features]))).materialize() for g in GROUPS}
        joining = time.perf_counter()
        joined, _ = point_in_time_join(labels, LABEL_TIME, _as_of_sources(read))
        writing = time.perf_counter()
        joined.write_parquet(str(output))
        ended = time.perf_counter()
        for phase, seconds in zip(phases, (joining - began, writing - joining, ended - writing)):
            phases[phase].append(round(seconds, 3))
    return phases


def _paths(files: list[Path]) -> str:
    return "[" + ", ".join(f"'{f}'" for f in files) + "]"


def run_duckdb(data: BenchData, output: Path) -> None:
    import duckdb

    selected, joins = [], []
    for g in GROUPS:
        joins.append(f"ASOF LEFT JOIN read_parquet({_paths(data.groups[g.name])}) AS {g.name} "
                     f"ON l.user_id = {g.name}.user_id AND l.{LABEL_TIME} >= {g.name}.{g.event_time}")
        for feature in g.features:
            value = f"{g.name}.{feature}"
            if g.ttl is not None:
                value = (f"CASE WHEN {g.name}.{g.event_time} >= l.{LABEL_TIME} - INTERVAL "
                         f"{int(g.ttl.total_seconds())} SECOND THEN {value} END")
            selected.append(f"{value} AS {feature}")
    query = f"""
        COPY (
            SELECT l.*, {', '.join(selected)}
            FROM read_parquet({_paths(data.labels)}) AS l
            {' '.join(joins)}
        ) TO '{output}' (FORMAT parquet)
    """
    with duckdb.connect() as connection:
        connection.execute(query)


def run_pandas(data: BenchData, output: Path) -> None:
    """merge_asof per group, as a careful single-process pandas user would chain them."""
    joined = pd.concat([pd.read_parquet(f) for f in data.labels], ignore_index=True)
    joined = joined.sort_values(LABEL_TIME, kind="stable", ignore_index=True)
    for g in GROUPS:
        rows = pd.concat([pd.read_parquet(f) for f in data.groups[g.name]], ignore_index=True)
        rows = rows[["user_id", g.event_time, *(f for f in g.features if f != g.event_time)]]
        rows = rows.sort_values(g.event_time, kind="stable", ignore_index=True)
        joined = pd.merge_asof(joined, rows, left_on=LABEL_TIME, right_on=g.event_time, by="user_id",
                               direction="backward", tolerance=g.ttl)
        if g.event_time not in g.features:
            joined = joined.drop(columns=[g.event_time])
    joined.to_parquet(output, index=False)


RUNNERS: dict[str, Callable[[BenchData, Path], None]] = {
    "orchard": run_orchard, "duckdb": run_duckdb, "pandas": run_pandas,
}


# ---------------------------------------------------------------- checking and reporting


def output_schema(labels: Path) -> pa.Schema:
    schema = pq.read_schema(labels)
    fields = [*schema]
    group_schemas = {}
    for g in GROUPS:
        group_schemas[g.name] = {
            "clicks_7d": pa.int64(), "sessions_7d": pa.int64(), "spend_30d_eur": pa.float64(),
            "orders_30d": pa.int64(), "loyalty_tier": pa.string(), g.event_time: TIME,
        }
        fields += [pa.field(f, group_schemas[g.name][f]) for f in g.features]
    return pa.schema(fields).remove_metadata()


def read_output(path: Path, schema: pa.Schema) -> pa.Table:
    table = pq.read_table(path).select(schema.names).cast(schema)
    return table.sort_by("label_id")


def check_outputs_agree(outputs: dict[str, Path], schema: pa.Schema) -> dict[str, int]:
    """Raise if any two outputs differ in any value; returns the rows and, per group, the unmatched label rows."""
    tables = {method: read_output(path, schema) for method, path in outputs.items()}
    reference_method, reference = next(iter(tables.items()))
    for method, table in tables.items():
        if table.num_rows != reference.num_rows:
            raise AssertionError(f"{method} wrote {table.num_rows} rows, {reference_method} {reference.num_rows}")
        for name in schema.names:
            if not table[name].equals(reference[name]):
                different = pc.fill_null(pc.not_equal(table[name], reference[name]), True)
                different = pc.or_(different, pc.not_equal(table[name].is_null(), reference[name].is_null()))
                row = int(pc.index(different.combine_chunks(), True).as_py())
                raise AssertionError(
                    f"{method} and {reference_method} differ in {name!r} at row {row}: "
                    f"{table.slice(row, 1).to_pylist()} vs {reference.slice(row, 1).to_pylist()}")
    counts = {"rows": reference.num_rows}
    for g in GROUPS:
        counts[f"unmatched_{g.name}"] = reference[g.features[0]].null_count
    return counts


def result_document(config: BenchConfig, data: BenchData, results: dict[str, common.MethodResult], counts: dict) -> dict:
    return {
        "benchmark": "pit_join",
        "labels": config.labels,
        "rows_per_group": config.rows,
        "groups": len(GROUPS),
        "keys": config.keys,
        "parquet_bytes": data.bytes(),
        "rows_per_file": config.rows_per_file,
        "repeats": config.repeats,
        "seed": config.seed,
        "output": counts,
        "cpus": os.cpu_count(),
        "ray_datasource_v2": config.ray_datasource_v2,
        "python": platform.python_version(),
        "methods": common.summarize(results, ("duckdb", "pandas")),
    }


def format_table(document: dict) -> str:
    title = (f"point-in-time join: {document['labels']:,} labels x {document['groups']} groups of "
             f"{document['rows_per_group']:,} rows, {document['keys']:,} keys, median of {document['repeats']}, "
             f"{document['cpus']} CPUs" + ("" if document["ray_datasource_v2"] else ", Ray Data's V1 Parquet reader"))
    return common.format_table(title, document["methods"], ("duckdb", "pandas"))


# ---------------------------------------------------------------- running


def run_benchmark(config: BenchConfig) -> dict:
    import ray
    import ray.data

    from orchard.runtime import configure_ray_data

    data = bench_data(config)
    schema = output_schema(data.labels[0])
    outputs_dir = config.work_dir / "pit-outputs"
    common.init_local_ray()
    try:
        configure_ray_data(progress_bars=False)
        # Orchard's drivers use the V1 Parquet reader (see configure_ray_data); --ray-datasource-v2 measures
        # Ray 2.60's default, which starts a pool of footer-reading actors for every read (~1 s each here).
        ray.data.DataContext.get_current().use_datasource_v2 = config.ray_datasource_v2
        results, counts = common.time_methods(RUNNERS, data, outputs_dir, config.repeats,
                                             lambda outputs: check_outputs_agree(outputs, schema))
        phases = profile_orchard(data, outputs_dir / "orchard-profiled", max(1, min(config.repeats, 3)))
    finally:
        ray.shutdown()
    return {**result_document(config, data, results, counts), "orchard_phases": phases}


def main(
    labels: int = typer.Option(1_000_000, "--labels", min=1, help="Label rows to generate."),
    rows: int = typer.Option(1_000_000, "--rows", min=1, help="Rows per feature group (three groups)."),
    keys: int = typer.Option(100_000, "--keys", min=1, help="Distinct users across labels and feature rows."),
    repeats: int = typer.Option(3, "--repeats", min=1, help="Timed runs per method; the table shows the median."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the generated data (cached per sizes + seed)."),
    rows_per_file: int = typer.Option(250_000, "--rows-per-file", min=1, help="Rows per Parquet file."),
    ray_datasource_v2: bool = typer.Option(
        False, "--ray-datasource-v2/--no-ray-datasource-v2",
        help="Use Ray Data's V2 Parquet reader (Ray's default; Orchard turns it off: each read starts a pool of "
             "footer-reading actors)."),
    out: Path = typer.Option(
        None, "--out", help="Folder for data, outputs and result.json (default: the system temp dir)."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON document on stdout."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
) -> None:
    """Time a point-in-time join on Orchard, DuckDB and pandas, and check they agree."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    config = BenchConfig(labels=labels, rows=rows, keys=keys, repeats=repeats, seed=seed,
                         rows_per_file=rows_per_file, ray_datasource_v2=ray_datasource_v2, out=out)
    document = run_benchmark(config)
    common.publish(document, format_table(document), out, as_json)


if __name__ == "__main__":
    typer.run(main)
