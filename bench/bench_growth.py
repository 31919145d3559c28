"""Growth: Orchard's time and peak memory against data size, for the weekly vacancy (workload 1) and the
point-in-time join (workload 2), with DuckDB's time beside each as the reference.

    python -m bench.bench_growth [--sizes 1000000,4000000,16000000] [--repeats 3] [--json]

At each size: the vacancy over that many bookings (CSV files of 500,000 rows), and the join of that many labels
with three groups of that many rows each (keys = rows / 10). One untimed warm-up run at the smallest size starts
Ray's workers; then each size's Orchard run `--repeats` times (the median is quoted) with the resident memory of
this process and every Ray worker sampled every 0.2 s (`bench.common.PeakMemory`: the peak over the total before
the run), and DuckDB's once. The data is generated once per size and cached as the two benchmarks cache theirs.

Judged: time linear in rows (seconds per million rows at the largest size within 1.5x of that at the middle
one) and memory bounded (the peak at the largest size under twice that at the middle one: it grows slower
than the data).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from bench import bench_pit_join, bench_weekly_vacancy, common


def _time(run, inputs, output: Path, repeats: int, sample_memory: bool) -> dict:
    seconds, peaks = [], []
    for _ in range(repeats):
        common.remove(output)
        with common.PeakMemory() if sample_memory else _NoMemory() as memory:
            started = time.perf_counter()
            run(inputs, output)
            seconds.append(round(time.perf_counter() - started, 3))
        peaks.append(memory.peak - memory.before)
    common.remove(output)
    result = {"seconds": seconds, "median_seconds": statistics.median(seconds)}
    if sample_memory:
        result["peak_memory_mb_over_start"] = round(max(peaks) / 2**20)
    return result


class _NoMemory:
    peak = before = 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _workloads(work: Path, size: int) -> dict:
    vacancy = bench_weekly_vacancy.BenchConfig(rows=size, repeats=1, seed=0, hotels=500, rows_per_file=500_000,
                                               ray_reservation=True, out=work)
    pit = bench_pit_join.BenchConfig(labels=size, rows=size, keys=max(size // 10, 1), repeats=1, seed=0,
                                     rows_per_file=250_000, ray_datasource_v2=False, out=work)
    return {"vacancy": (bench_weekly_vacancy.RUNNERS, bench_weekly_vacancy.booking_files(vacancy)),
            "pit_join": (bench_pit_join.RUNNERS, bench_pit_join.bench_data(pit))}


def judge(points: dict, sizes: list[int]) -> dict:
    """Time linear: seconds per million rows at the largest size within 1.5x of the middle size's. Memory bounded:
    the largest size's peak under twice the middle size's."""
    middle, largest = str(sizes[-2]), str(sizes[-1])
    per_million = {size: points[size]["orchard"]["median_seconds"] / (int(size) / 1e6) for size in points}
    peaks = {size: points[size]["orchard"]["peak_memory_mb_over_start"] for size in (middle, largest)}
    return {"seconds_per_million_rows": {size: round(value, 3) for size, value in per_million.items()},
            "time_linear": per_million[largest] <= 1.5 * per_million[middle],
            "memory_bounded": peaks[largest] < 2 * peaks[middle]}


def run(sizes: list[int], repeats: int, work: Path) -> dict:
    import ray

    from orchard.runtime import configure_ray_data

    prepared = {size: _workloads(work, size) for size in sizes}  # before Ray starts: generation uses every core
    outputs = work / "growth-outputs"
    outputs.mkdir(parents=True, exist_ok=True)
    common.init_local_ray()
    results: dict = {"sizes": sizes, "repeats": repeats, "workloads": {}}
    try:
        configure_ray_data(progress_bars=False)
        for name, (runners, inputs) in prepared[sizes[0]].items():  # warm-up: Ray's workers start and import
            runners["orchard"](inputs, outputs / f"warm-up-{name}")
            common.remove(outputs / f"warm-up-{name}")
        for size in sizes:
            for name, (runners, inputs) in prepared[size].items():
                point = results["workloads"].setdefault(name, {})
                point[str(size)] = {
                    "orchard": _time(runners["orchard"], inputs, outputs / f"{name}-orchard", repeats, True),
                    "duckdb": _time(runners["duckdb"], inputs, outputs / f"{name}-duckdb.parquet", 1, False),
                }
    finally:
        ray.shutdown()
    if len(sizes) > 1:
        results["judged"] = {name: judge(points, sizes) for name, points in results["workloads"].items()}
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,4000000,16000000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    result = run([int(size) for size in args.sizes.split(",")], args.repeats, args.work)
    if args.json:
        print(json.dumps(result, indent=2))
        return
    for name, points in result["workloads"].items():
        for size, numbers in points.items():
            print(f"{name:<10}{int(size):>12,} rows  orchard {numbers['orchard']['median_seconds']:>7.2f} s "
                  f"(peak +{numbers['orchard']['peak_memory_mb_over_start']:,} MB)  duckdb "
                  f"{numbers['duckdb']['median_seconds']:>7.2f} s")
    print(json.dumps(result.get("judged", {}), indent=2))


if __name__ == "__main__":
    main()
