"""Feast's side of the online-lookup benchmark, run in a virtual environment of its own (Feast pins versions of
pandas, pyarrow and others that Ray's do not match), on the Parquet file the main benchmark wrote.

    <feast venv>/bin/python bench/feast_lookup.py DATA.parquet WORKDIR --keys 1,10,100 --lookups 2000 --seed 0

Applies one entity and one feature view (3 float features) with Feast's SQLite online store, writes the same
latest rows into it, times `get_online_features` in process for each batch size, checks the values it returns
against the file, and prints one JSON line: {"feast_version", "p50_ms": {keys: ...}, "p99_ms": {...}}.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from datetime import timedelta
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data")
    parser.add_argument("workdir")
    parser.add_argument("--keys", default="1,10,100")
    parser.add_argument("--lookups", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import feast
    import pandas as pd
    from feast import Entity, FeatureStore, FeatureView, Field, FileSource
    from feast.repo_config import RepoConfig
    from feast.types import Float64

    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    frame = pd.read_parquet(args.data)
    config = RepoConfig(project="bench", provider="local", registry=str(workdir / "registry.db"),
                        online_store={"type": "sqlite", "path": str(workdir / "online.db")},
                        offline_store={"type": "file"}, entity_key_serialization_version=3)
    store = FeatureStore(config=config)
    entity = Entity(name="entity", join_keys=["entity_id"])
    source = FileSource(path=str(Path(args.data).resolve()), timestamp_field="event_time")
    view = FeatureView(name="bench_features", entities=[entity], ttl=timedelta(days=3650),
                       schema=[Field(name=f"f{i}", dtype=Float64) for i in range(3)], source=source, online=True)
    store.apply([entity, view])
    store.write_to_online_store("bench_features", frame)

    ids = frame["entity_id"].tolist()
    expected = frame.set_index("entity_id")
    generator = random.Random(args.seed)
    p50, p99 = {}, {}
    for size in (int(k) for k in args.keys.split(",")):
        timings = []
        for lookup in range(args.lookups):
            keys = generator.sample(ids, size)
            started = time.perf_counter()
            found = store.get_online_features(features=[f"bench_features:f{i}" for i in range(3)],
                                              entity_rows=[{"entity_id": key} for key in keys]).to_dict()
            timings.append((time.perf_counter() - started) * 1000)
            if lookup == 0:  # the values are the file's
                assert found["f0"] == [float(expected.loc[key, "f0"]) for key in keys], "Feast returned other values"
        timings.sort()
        p50[size] = round(statistics.median(timings), 4)
        p99[size] = round(timings[int(0.99 * (len(timings) - 1))], 4)
    print(json.dumps({"feast_version": feast.__version__, "p50_ms": p50, "p99_ms": p99}))


if __name__ == "__main__":
    main()
