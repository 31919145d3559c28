"""Serving throughput: Orchard's Ray Serve app against plain uvicorn + FastAPI, same model, same run.

    python -m bench.bench_serve [--connections 16] [--seconds 10] [--json]

All servers answer `POST /v1/models/fruit_classifier:predict` with one fruit per
request from the same registered decision tree, through the same predictor
(validation, stored transforms, the model). Orchard's app is measured both ways
a client reaches it: through Serve's HTTP proxy (`serve-proxy`) and straight to
the replica's own port (`serve-direct`, Serve's direct ingress, as Orchard runs
Ray: `orchard.runtime.SERVE_ENV`). A load generator in this process (aiohttp,
one keep-alive connection per concurrent client) keeps `connections` requests
in flight for `seconds` after a warm-up, once with one connection and once with
`connections`, and reports requests per second and latency percentiles. The
goal (issue 6): Serve at least 0.5x the plain server's throughput at 16
connections, with p99 at most 50 ms.

The servers and the load generator share the machine's cores, so absolute
numbers depend on it; the ratio is the figure to compare.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

INSTANCE = {"red": 0.82, "green": 0.26, "blue": 0.22, "weight_g": 190.0, "diameter_mm": 77.0, "smoothness": 0.9}
PATH = "/v1/models/fruit_classifier:predict"


async def _load(url: str, connections: int, seconds: float, warmup: float) -> dict:
    latencies: list[float] = []
    failures = 0
    body = json.dumps({"instances": [INSTANCE]}).encode()
    headers = {"content-type": "application/json"}
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        started = time.perf_counter()
        measure_from, stop_at = started + warmup, started + warmup + seconds

        async def client() -> None:
            nonlocal failures
            while (now := time.perf_counter()) < stop_at:
                async with session.post(url + PATH, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                done = time.perf_counter()
                if now >= measure_from:
                    if ok:
                        latencies.append(done - now)
                    else:
                        failures += 1

        await asyncio.gather(*(client() for _ in range(connections)))
    latencies.sort()

    def percentile(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1)

    return {"requests_per_second": round(len(latencies) / seconds, 1), "p50_ms": percentile(0.5),
            "p99_ms": percentile(0.99), "mean_ms": round(1000 * statistics.mean(latencies), 1),
            "requests": len(latencies), "failures": failures}


def measure(url: str, connections: int, seconds: float, warmup: float = 2.0) -> dict:
    return asyncio.run(_load(url, connections, seconds, warmup))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(url + PATH, json={"instances": [INSTANCE]}, timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no answer from {url} within {timeout} s")


def prepare(storage_root: str) -> None:
    """Fruit data, its feature table and training dataset, and one registered decision tree."""
    from fruit.generate import write_fruit

    from features.catalog import get_view
    from features.datasets import RandomSplit, create_training_dataset
    from features.pipeline import run_feature_pipeline
    from orchard.storage import Storage
    from training.trainer import train_model

    storage = Storage(storage_root)
    write_fruit(storage, rows=2000, seed=1)
    run_feature_pipeline(storage, get_view("fruit_classification").label.group)
    create_training_dataset(storage, get_view("fruit_classification"), RandomSplit(seed=0))
    train_model(storage, "fruit_classifier", alias="production")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()

    from orchard.config import OrchardConfig
    from orchard.output import stdout_reserved_for_json
    from orchard.runtime import ray_session

    results: dict = {}
    # Ray prints some of its own lines on stdout; with --json, stdout carries the result only.
    with stdout_reserved_for_json(args.json), tempfile.TemporaryDirectory(prefix="orchard-bench-serve-") as root:
        config = OrchardConfig.from_sources(storage=root, num_cpus=2, serve_port=free_port())
        plain_port = free_port()
        with ray_session(config, quiet=True):
            prepare(config.storage)
            env = {**os.environ, "ORCHARD_BENCH_STORAGE": config.storage}
            plain = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.plain_server:app", "--port",
                                      str(plain_port), "--log-level", "warning"], env=env,
                                     cwd=Path(__file__).resolve().parent.parent)
            try:
                servers = {"plain": f"http://127.0.0.1:{plain_port}"}
                _wait_for(servers["plain"])
                from ray import serve

                from serve.app import deploy, replica_urls

                # The port picked now, not before the training above: Ray's servers take free ports meanwhile.
                config = config.with_overrides(serve_port=free_port())
                servers["serve-proxy"] = deploy(config, log_predictions=True)
                _wait_for(servers["serve-proxy"])
                direct = replica_urls(wait_s=30)
                if direct:
                    servers["serve-direct"] = direct[0]
                    _wait_for(direct[0])
                for connections in (1, args.connections):
                    for name, url in servers.items():
                        results[f"{name}@{connections}"] = measure(url, connections, args.seconds)
                serve.shutdown()
            finally:
                plain.terminate()
                plain.wait(30)
    top = args.connections
    plain_rps = results[f"plain@{top}"]["requests_per_second"]
    ratios = {name: round(results[f"{name}@{top}"]["requests_per_second"] / plain_rps, 2)
              for name in servers if name != "plain"}
    best = "serve-direct" if "serve-direct" in ratios else "serve-proxy"
    goal_met = (ratios[best] >= 0.5 and results[f"{best}@{top}"]["p99_ms"] <= 50
                and not any(numbers["failures"] for numbers in results.values()))
    summary = {"results": results, f"vs_plain_throughput_at_{top}": ratios, "goal_judged_on": best,
               "goal": "serve >= 0.5x plain at 16 connections, p99 <= 50 ms, no failed request", "goal_met": goal_met}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'server@connections':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failures':>10}")
    for key, numbers in results.items():
        print(f"{key:<22}{numbers['requests_per_second']:>9}{numbers['p50_ms']:>9}{numbers['p99_ms']:>9}"
              f"{numbers['failures']:>10}")
    for name, ratio in ratios.items():
        print(f"{name} / plain throughput at {top} connections: {ratio:.2f}x")
    print(f"goal met ({best}): {summary['goal_met']}")


if __name__ == "__main__":
    main()
