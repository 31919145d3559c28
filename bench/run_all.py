"""`make bench`: every benchmark, one after another in processes of their own, then BENCHMARKS.md.

    python -m bench.run_all [--only vacancy,pit,...] [--quick] [--work DIR] [--out BENCHMARKS.md]

Each benchmark prints one JSON document (`--json`); an adapter here turns it into the report's workloads
(`bench.report`). The documents are kept in `<work>/results.json`, written after each benchmark, so a later
failure loses none; `--render-only` writes BENCHMARKS.md again from that file. `--quick` runs every benchmark on
small data (a check that the whole chain works, a few minutes; its figures mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from bench import report

REPOSITORY = Path(__file__).resolve().parent.parent


def _figure(method: str, role: str, values: list[float], note: str = "") -> dict:
    return {"method": method, "role": role, "values": values, "note": note}


def vacancy(document: dict) -> list[dict]:
    methods = document["methods"]
    return [{
        "id": "1", "title": f"Feature pipeline: {document['rows']:,} bookings in {document['files']} CSV files → "
                            "weekly vacancy → Parquet",
        "unit": "s", "better": "lower",
        "figures": [_figure("orchard", "orchard", methods["orchard"]["seconds"], "Ray Data, one local Ray"),
                    _figure("duckdb", "baseline", methods["duckdb"]["seconds"], "one SQL query, COPY to Parquet"),
                    _figure("pandas", "baseline", methods["pandas"]["seconds"], "one process")],
        "ratios": [{"orchard": "orchard", "baseline": "duckdb"}, {"orchard": "orchard", "baseline": "pandas"}],
        "target": {"text": "no slower than DuckDB",
                   "met": methods["orchard"]["median_seconds"] <= methods["duckdb"]["median_seconds"]},
    }]


def pit_join(document: dict) -> list[dict]:
    methods = document["methods"]
    ratio = methods["orchard"]["median_seconds"] / methods["duckdb"]["median_seconds"]
    return [{
        "id": "2", "title": f"Point-in-time training dataset: {document['labels']:,} labels × {document['groups']} "
                            f"groups of {document['rows_per_group']:,} rows",
        "unit": "s", "better": "lower",
        "figures": [_figure("orchard", "orchard", methods["orchard"]["seconds"], "Ray Data, V1 Parquet reader"),
                    _figure("duckdb", "baseline", methods["duckdb"]["seconds"], "three ASOF LEFT JOINs"),
                    _figure("pandas", "baseline", methods["pandas"]["seconds"], "three merge_asof")],
        "ratios": [{"orchard": "orchard", "baseline": "duckdb"}, {"orchard": "orchard", "baseline": "pandas"}],
        "target": {"text": "within 1.5× of DuckDB's time", "met": ratio <= 1.5},
    }]


SERVING_JUDGED_AT = 16  # connections


def serving(document: dict) -> list[dict]:
    """One workload per model: each server's requests per second at 16 connections (the windows' figures), every
    point in a table, the targets judged at 16 connections."""
    workloads = []
    for index, (model, results) in enumerate(document["models"].items()):
        figures, rows = [], []
        for key, numbers in results.items():
            server, connections = key.rsplit("@", 1)
            rows.append([server, int(connections), numbers["requests_per_second"], numbers["p50_ms"],
                         numbers["p99_ms"], numbers["failures"]])
            if int(connections) == SERVING_JUDGED_AT:
                figures.append(_figure(server, "baseline" if server == "plain" else "orchard", numbers["windows"],
                                       f"p50 {numbers['p50_ms']} ms, p99 {numbers['p99_ms']} ms"))
        at = {server: results.get(f"{server}@{SERVING_JUDGED_AT}") for server in ("plain", "serve-direct",
                                                                                  "serve-proxy")}
        met = None
        if all(at.values()):
            plain = at["plain"]["requests_per_second"]
            met = (at["serve-direct"]["requests_per_second"] >= 0.8 * plain and at["serve-direct"]["p99_ms"] <= 25
                   and at["serve-proxy"]["requests_per_second"] >= 0.3 * plain
                   and not any(numbers["failures"] for numbers in results.values()))
        workloads.append({
            "id": f"3{'abcdefgh'[index]}", "title": f"Serving {model}, one row per request: Ray Serve app against "
                                                  "plain uvicorn + FastAPI",
            "unit": "req/s", "better": "higher", "figures": figures,
            "ratios": [{"orchard": name, "baseline": "plain"} for name in ("serve-direct", "serve-proxy")
                       if at[name]],
            "tables": [{"title": f"Every point ({document['windows']} windows of {document['seconds_per_window']} s "
                                 "each; req/s is their median, latencies over all)",
                        "columns": ["server", "connections", "req/s", "p50 ms", "p99 ms", "failures"], "rows": rows}],
            "target": {"text": f"at {SERVING_JUDGED_AT} connections, straight to the replica ≥ 0.8× plain with p99 ≤ "
                               "25 ms, through the proxy ≥ 0.3×, no failed request", "met": met},
        })
    return workloads


def online(document: dict) -> list[dict]:
    workloads = []
    lookup = document.get("lookup")
    if lookup:
        rows = []
        for size in sorted({int(s) for s in lookup["orchard_sqlite"]}):
            row = [size]
            for name in ("orchard_sqlite", "orchard_redis", "feast_sqlite"):
                numbers = (lookup.get(name) or {}).get(str(size)) or (lookup.get(name) or {}).get(size)
                row += [numbers["p50_ms"], numbers["p99_ms"]] if numbers else ["—", "—"]
            rows.append(row)
        feast = lookup.get("feast_sqlite")
        one = (feast or {}).get("1") or (feast or {}).get(1)
        mine = lookup["orchard_sqlite"].get("1") or lookup["orchard_sqlite"].get(1)
        workloads.append({
            "id": "4", "title": "Online lookup: one entity's features, in process, against Feast's SQLite online store",
            "unit": "ms", "better": "lower",
            "tables": [{"title": "p50 / p99 per number of keys looked up at once, ms",
                        "columns": ["keys", "Orchard SQLite p50", "p99", "Orchard Redis p50", "p99",
                                    " ".join(["Feast", lookup.get("feast_version", ""), "SQLite p50"]).replace(
                                        "  ", " "), "p99"], "rows": rows}],
            "target": {"text": "no slower than Feast's SQLite online store (p50, one key)",
                       "met": None if not one else mine["p50_ms"] <= one["p50_ms"]},
        })
    http = document.get("http")
    if http:
        workloads.append({
            "id": "4b", "title": "Entity-key prediction over HTTP against the same prediction from raw features",
            "tables": [{"title": f"{http['requests']} requests each, one connection, straight to the replica",
                        "columns": ["request", "p50 ms", "p99 ms"],
                        "rows": [[name, http[name]["p50_ms"], http[name]["p99_ms"]]
                                 for name in ("raw_features", "entity_key")]}],
        })
    return workloads


def images(document: dict) -> list[dict]:
    workloads = []
    train = document.get("train")
    if train and "ray_train_1_worker" in train:
        rows = [[name, numbers["fit_images_per_s"], numbers["run_images_per_s"], numbers["run_seconds"],
                 numbers.get("validation_accuracy")] for name, numbers in train.items() if isinstance(numbers, dict)]
        one = train["ray_train_1_worker"]
        overhead = 1 - one["run_images_per_s"] / train["plain_fit_1_thread"]["run_images_per_s"]
        workloads.append({
            "id": "5", "title": "Training a network: Ray Train at 1 and 2 workers against plain tf-keras fit",
            "tables": [{"title": "Photos per second inside fit and over the whole call",
                        "columns": ["method", "in fit /s", "whole call /s", "whole call s", "validation accuracy"],
                        "rows": rows}],
            "target": {"text": "Ray Train's overhead at one worker under 10% of the whole call (against plain fit "
                               "on one thread, what a worker of one CPU gets), on a run of a minute or more",
                       "met": overhead < 0.10 and one["run_seconds"] >= 60},
            "notes": [f"Overhead over the whole call: {100 * overhead:.0f}%."],
        })
    batch = document.get("batch")
    if batch:
        workloads.append({
            "id": "6", "title": f"Images: batch inference over {batch['photos']:,} photos",
            "unit": "s", "better": "lower",
            "figures": [_figure(name, "baseline" if name == "plain_loop" else "orchard", batch[name]["seconds"])
                        for name in ("orchard_1_actor", "orchard_2_actors", "plain_loop")],
            "ratios": [{"orchard": name, "baseline": "plain_loop"} for name in ("orchard_1_actor",
                                                                                "orchard_2_actors")],
        })
    return workloads


def growth(document: dict) -> list[dict]:
    rows, judged = [], document.get("judged", {})
    for name, points in document["workloads"].items():
        for size, numbers in points.items():
            mine, millions = numbers["orchard"], int(size) / 1e6
            rows.append([name, f"{int(size):,}", mine["median_seconds"], f"{mine['median_seconds'] / millions:.3f}",
                         mine["peak_memory_mb_over_start"], numbers["duckdb"]["median_seconds"]])
    met = all(j["time_linear"] and j["memory_bounded"] for j in judged.values()) if judged else None
    return [{
        "id": "7", "title": "Growth: time and peak memory against data size (workloads 1 and 2)",
        "tables": [{"title": f"Orchard's median of {document['repeats']} runs per size; memory: the peak resident "
                             "memory of the driver and Ray's workers over what they held before the run; DuckDB's "
                             "one run beside it",
                    "columns": ["workload", "rows", "Orchard s", "s per million rows", "peak memory MB",
                                "DuckDB s"], "rows": rows}],
        "target": {"text": "time linear in rows (per-row time at the largest size within 1.5× of the middle "
                           "size's) and memory bounded (the largest size's peak under twice the middle one's)",
                   "met": met},
    }]


@dataclass(frozen=True)
class Benchmark:
    name: str
    module: str
    arguments: tuple[str, ...]
    quick: tuple[str, ...]
    adapter: Callable[[dict], list[dict]]


BENCHMARKS = (
    Benchmark("vacancy", "bench.bench_weekly_vacancy", ("--rows", "4000000", "--repeats", "5"),
              ("--rows", "200000", "--repeats", "1"), vacancy),
    Benchmark("pit", "bench.bench_pit_join", ("--repeats", "5"),
              ("--labels", "100000", "--rows", "100000", "--keys", "10000", "--repeats", "1"), pit_join),
    Benchmark("serve", "bench.bench_serve", ("--seconds", "2", "--windows", "5"),
              ("--connections", "1,16", "--models", "fruit_classifier", "--seconds", "0.5", "--windows", "2"), serving),
    Benchmark("online", "bench.bench_online", ("--only", "lookup,http"),
              ("--only", "lookup,http", "--no-feast", "--entities", "1000", "--lookups", "50", "--requests", "20"),
              online),
    Benchmark("growth", "bench.bench_growth", ("--sizes", "1000000,4000000,16000000", "--repeats", "3"),
              ("--sizes", "100000,200000", "--repeats", "1"), growth),
    Benchmark("images", "bench.bench_images", ("--only", "train,batch"),
              ("--only", "batch", "--photos", "200", "--batch-photos", "100", "--repeats", "1"), images),
)


def _machine() -> dict:
    import ray

    return {"cpus": os.cpu_count(), "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
                                                          / 2**30), "platform": platform.platform(terse=True),
            "python": platform.python_version(), "ray": ray.__version__}


def run(benchmark: Benchmark, quick: bool, log: Path) -> dict:
    arguments = [sys.executable, "-m", benchmark.module, *(benchmark.quick if quick else benchmark.arguments),
                 "--json"]
    with open(log, "w") as errors:
        result = subprocess.run(arguments, stdout=subprocess.PIPE, stderr=errors, text=True, cwd=REPOSITORY)
    if result.returncode != 0:
        raise RuntimeError(f"exit {result.returncode}; its log: {log}")
    return json.loads(result.stdout[result.stdout.index("{"):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(b.name for b in BENCHMARKS))
    parser.add_argument("--quick", action="store_true", help="small data: checks the chain, not the speed")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "orchard-bench" / "all")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "BENCHMARKS.md")
    parser.add_argument("--render-only", action="store_true", help="write --out from <work>/results.json")
    args = parser.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)
    kept = args.work / "results.json"
    chosen = [b for b in BENCHMARKS if b.name in args.only.split(",")]
    started = time.monotonic()
    results = json.loads(kept.read_text()) if args.render_only else {
        "documents": {}, "failed": {}, "seconds_per_benchmark": {}, "machine": _machine(),
        "command": "make bench" + (" (--quick)" if args.quick else "")}
    for benchmark in [] if args.render_only else chosen:
        began = time.monotonic()
        print(f"{benchmark.name}: {benchmark.module} ...", flush=True)
        try:
            results["documents"][benchmark.name] = run(benchmark, args.quick, args.work / f"{benchmark.name}.log")
        except (RuntimeError, ValueError) as error:
            results["failed"][benchmark.name] = str(error)
            print(f"{benchmark.name}: failed: {error}", flush=True)
        results["seconds_per_benchmark"][benchmark.name] = round(time.monotonic() - began, 1)
        print(f"{benchmark.name}: {results['seconds_per_benchmark'][benchmark.name]:.0f} s", flush=True)
        kept.write_text(json.dumps(results, indent=2))
    if not args.render_only:
        results["seconds"] = round(time.monotonic() - started, 1)
        results["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        kept.write_text(json.dumps(results, indent=2))
    by_name = {b.name: b for b in BENCHMARKS}
    quick = "--quick" in results["command"]
    results["workloads"] = []
    for name, document in results["documents"].items():
        benchmark = by_name[name]
        command = f".venv/bin/python -m {benchmark.module} " + " ".join(benchmark.quick if quick else
                                                                        benchmark.arguments)
        results["workloads"] += [{"command": command, **workload} for workload in benchmark.adapter(document)]
    args.out.write_text(report.render(results))
    print(f"wrote {args.out} ({len(results['workloads'])} workloads, {results['seconds'] / 60:.1f} min)")


if __name__ == "__main__":
    main()
