"""Serving throughput: Orchard's Ray Serve app against plain uvicorn + FastAPI, same models, same run.

    python -m bench.bench_serve [--connections 1,16,64] [--models fruit_classifier,fruit_dnn_classifier]
                                [--seconds 2] [--windows 5] [--json]

Every server answers `POST /v1/models/NAME:predict` with one fruit per request
from the same registered model (a decision tree and a dense network), through
the same predictor (validation, stored transforms, the model). Orchard's app is
measured both ways a client reaches it: through Serve's HTTP proxy
(`serve-proxy`) and straight to the replica's own port (`serve-direct`, Serve's
direct ingress, as Orchard runs Ray: `orchard.runtime.SERVE_ENV`). A load
generator in this process (aiohttp, one keep-alive connection per concurrent
client) keeps `connections` requests in flight: a warm-up (`--warmup`, 2 s), then `windows`
windows of `seconds` each; requests per second is the median over the windows
(each window's figure is kept), latency percentiles are over all of them. The
targets (issue 18), at 16 connections: straight to the replica at least 0.8x
the plain server's throughput with p99 at most 25 ms, through the proxy at
least 0.3x.

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


async def _load(url: str, model: str, connections: int, seconds: float, windows: int, warmup: float) -> dict:
    """Requests answered per window (a request counts in the window it started in), latencies over all windows."""
    latencies: list[float] = []
    answered = [0] * windows
    failures = 0
    body = json.dumps({"instances": [INSTANCE]}).encode()
    headers = {"content-type": "application/json"}
    path = f"/v1/models/{model}:predict"
    connector = aiohttp.TCPConnector(limit=connections)
    async with aiohttp.ClientSession(connector=connector) as session:
        measure_from = time.perf_counter() + warmup
        stop_at = measure_from + seconds * windows

        async def client() -> None:
            nonlocal failures
            while (now := time.perf_counter()) < stop_at:
                async with session.post(url + path, data=body, headers=headers) as response:
                    await response.read()
                    ok = response.status == 200
                done = time.perf_counter()
                if now >= measure_from:
                    if ok:
                        latencies.append(done - now)
                        answered[min(windows - 1, int((now - measure_from) / seconds))] += 1
                    else:
                        failures += 1

        await asyncio.gather(*(client() for _ in range(connections)))
    latencies.sort()

    def percentile(p: float) -> float:
        return round(1000 * latencies[min(len(latencies) - 1, int(p * len(latencies)))], 1)

    per_window = [round(count / seconds, 1) for count in answered]
    return {"requests_per_second": statistics.median(per_window), "windows": per_window, "p50_ms": percentile(0.5),
            "p99_ms": percentile(0.99), "mean_ms": round(1000 * statistics.mean(latencies), 1),
            "requests": len(latencies), "failures": failures}


def measure(url: str, model: str, connections: int, seconds: float, windows: int = 5, warmup: float = 2.0) -> dict:
    return asyncio.run(_load(url, model, connections, seconds, windows, warmup))


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for(url: str, model: str, timeout: float = 60) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.post(f"{url}/v1/models/{model}:predict", json={"instances": [INSTANCE]},
                          timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"no answer from {url} within {timeout} s")


def prepare(storage_root: str, models: list[str]) -> None:
    """Fruit data, its feature table and training dataset, and the models registered (production)."""
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
    for model in models:
        train_model(storage, model, alias="production")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--connections", default="1,16,64", help="comma-separated numbers of requests in flight")
    parser.add_argument("--models", default="fruit_classifier,fruit_dnn_classifier")
    parser.add_argument("--seconds", type=float, default=2.0, help="length of one measured window")
    parser.add_argument("--windows", type=int, default=5, help="measured windows per point (the median is quoted)")
    parser.add_argument("--warmup", type=float, default=2.0, help="seconds of load before the first window")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args()
    connection_counts = [int(n) for n in args.connections.split(",")]
    models = args.models.split(",")

    from orchard.config import OrchardConfig
    from orchard.output import stdout_reserved_for_json
    from orchard.runtime import ray_session

    results: dict = {model: {} for model in models}
    # Ray prints some of its own lines on stdout; with --json, stdout carries the result only.
    with stdout_reserved_for_json(args.json), tempfile.TemporaryDirectory(prefix="orchard-bench-serve-") as root:
        config = OrchardConfig.from_sources(storage=root, num_cpus=2, serve_port=free_port())
        plain_port = free_port()
        with ray_session(config, quiet=True):
            prepare(config.storage, models)
            env = {**os.environ, "ORCHARD_BENCH_STORAGE": config.storage}
            plain = subprocess.Popen([sys.executable, "-m", "uvicorn", "bench.plain_server:app", "--port",
                                      str(plain_port), "--log-level", "warning"], env=env,
                                     cwd=Path(__file__).resolve().parent.parent)
            try:
                servers = {"plain": f"http://127.0.0.1:{plain_port}"}
                from ray import serve

                from serve.app import deploy, replica_urls

                # The port picked now, not before the training above: Ray's servers take free ports meanwhile.
                config = config.with_overrides(serve_port=free_port())
                servers["serve-proxy"] = deploy(config, log_predictions=True)
                direct = replica_urls(wait_s=30)
                if direct:
                    servers["serve-direct"] = direct[0]
                for model in models:
                    for url in servers.values():
                        _wait_for(url, model)
                    for connections in connection_counts:
                        for name, url in servers.items():
                            results[model][f"{name}@{connections}"] = measure(url, model, connections, args.seconds,
                                                                              args.windows, args.warmup)
                serve.shutdown()
            finally:
                plain.terminate()
                plain.wait(30)
    summary = {"connections": connection_counts, "seconds_per_window": args.seconds, "windows": args.windows,
               "models": results}
    if args.json:
        print(json.dumps(summary, indent=2))
        return
    print(f"{'model':<24}{'server@connections':<22}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'failures':>10}")
    for model, points in results.items():
        for key, numbers in points.items():
            print(f"{model:<24}{key:<22}{numbers['requests_per_second']:>9}{numbers['p50_ms']:>9}"
                  f"{numbers['p99_ms']:>9}{numbers['failures']:>10}")


if __name__ == "__main__":
    main()
