"""Images: training images per second on Ray Train against plain tf-keras `fit`, batch inference over a folder of
photos against a plain loop, and the latency of one photo over HTTP.

    python -m bench.bench_images [--photos 2000] [--epochs 30] [--epochs-2-workers 8] [--requests 300] [--json]

Sections (`--only train,batch,http` runs some), on generated apple photos (`examples/apple_images`) run through
the feature pipeline and a training dataset, with the project's own network (`apple_defect_cnn`):

- train: the training split through (a) plain tf-keras `model.fit` in a process of its own on NumPy arrays, the
  same network, batch size and learning-rate schedule: on one oneDNN thread (`OMP_NUM_THREADS=1`, what Ray gives a
  worker of 1 CPU) for `--epochs`, and with every core for `--epochs-2-workers`; (b) Orchard's `train_network`
  (Ray Train, Ray Data shards, a checkpoint every epoch) with 1 worker (Ray with 2 CPUs) for `--epochs` and (c)
  with 2 workers (Ray with 3 logical CPUs on the 2 cores, so that Ray Data keeps one to stream the data to two
  workers) for `--epochs-2-workers`. Images per second in `fit` itself (per epoch, epochs 2 to N: the first holds
  TensorFlow's graph tracing), the whole run (the plain script from its launch to its exit, Ray Train from the
  call to its return), and the time from the start to the end of the first epoch at `--target-accuracy`
  validation accuracy. Ray Train's overhead is (b)'s whole run against the one-thread plain script's.
- batch: `serve.batch.run_batch_inference` over a folder of photos (an actor pool of each size in `--actors`; a
  run includes starting its actors, which import TensorFlow and load the network) against one Python process, the
  network already loaded, reading each file, decoding it with the same `decode_image` and predicting 256
  photos at a time. The network served is trained for `--serving-epochs` (3: its weights do not change the
  work a prediction does).
- http: one photo per request (multipart upload) to `/v1/models/apple_defect_cnn:predict`, one connection,
  straight to the replica; p50 and p99 in milliseconds.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import SectionResults

log = logging.getLogger("bench.images")

MODEL = "apple_defect_cnn"
PHOTOS = [2000]


def _prepare(storage, photos: int) -> None:
    if storage.exists("datasets"):
        return
    from apple_images.generate import write_apple_images
    from apple_images.groups import APPLE_PHOTOS

    from features.catalog import get_view
    from features.datasets import RandomSplit, create_training_dataset
    from features.pipeline import run_feature_pipeline

    write_apple_images(storage, rows=photos, seed=0)
    run_feature_pipeline(storage, APPLE_PHOTOS)
    create_training_dataset(storage, get_view("apple_defects"), RandomSplit(seed=0))


def _save_plain_arrays(storage, work: Path) -> int:
    """The training and validation splits as NumPy arrays, with the network's inputs, for `_plain_fit`'s processes;
    returns the number of training rows."""
    import ray

    from training.catalog import get_spec
    from training.flavors.keras import _image_layout
    from training.model_data import FEATURES_COLUMN, TARGET_COLUMN, prepare_splits

    spec = get_spec(MODEL)
    data = prepare_splits(storage, spec)

    def stacked(split: str):
        batches = ray.get(data.splits[split].to_numpy_refs())
        return (np.concatenate([b[FEATURES_COLUMN] for b in batches]), np.concatenate([b[TARGET_COLUMN] for b in batches]))

    (x, y), (vx, vy) = stacked("train"), stacked("validation")
    summary = data.summaries["train"]
    inputs = {"n_features": data.inputs.n_features, "feature_columns": list(data.inputs.feature_columns),
              "task": spec.task, "target": data.inputs.target, "classes": list(data.inputs.classes),
              "feature_mean": summary["mean"], "feature_variance": summary["variance"],
              "learning_rate": spec.flavor.learning_rate, "images": [list(i) for i in _image_layout(data.inputs)]}
    np.savez(work / "plain_fit.npz", x=x, y=y, vx=vx, vy=vy)
    (work / "plain_fit.json").write_text(json.dumps({"inputs": inputs}))
    return len(y)


def _plain_fit(runs: dict[str, tuple[str | None, int]], work: Path, target: float, images: int) -> dict:
    """The same network, data, batch size and learning-rate schedule, trained by `model.fit` on the arrays
    `_save_plain_arrays` wrote, in a process of its own, once per entry of `runs` (label -> (OMP_NUM_THREADS or
    None for every core, epochs)). Each process is timed from its launch to its exit: the interpreter,
    TensorFlow's import and reading the arrays are inside, as they are for a user's own training script."""
    import subprocess
    import sys

    results = {}
    for label, (threads, epochs) in runs.items():
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        if threads:
            env["OMP_NUM_THREADS"] = threads
        launched = time.time()
        run = subprocess.run([sys.executable, "-m", "bench.bench_images", "--plain-fit", str(work),
                              "--epochs", str(epochs)], env=env, capture_output=True, text=True, check=False)
        total = time.time() - launched
        if run.returncode != 0:
            raise RuntimeError(f"plain fit failed: {run.stderr[-2000:]}")
        epochs_run = json.loads(run.stdout.strip().splitlines()[-1])
        results[label] = _throughput(images, epochs_run["fit_seconds"],
                                     [t - launched for t in epochs_run["ended_at"]], total,
                                     epochs_run["val_accuracy"], target)
        results[label]["threads"] = threads or "all"
    return results


def _plain_fit_process(work: Path, epochs: int) -> None:
    """The child of `_plain_fit`: fit on the saved arrays epoch by epoch with the flavor's learning-rate schedule,
    print each epoch's time in fit, its end (wall clock) and its validation accuracy as one JSON line."""
    from training.catalog import get_spec
    from training.flavors.keras import NetworkInputs, _set_learning_rate, import_tensorflow

    _, tf_keras = import_tensorflow()
    arrays = np.load(work / "plain_fit.npz")
    raw = json.loads((work / "plain_fit.json").read_text())["inputs"]
    inputs = NetworkInputs(**{**raw, "feature_columns": tuple(raw["feature_columns"]), "classes": tuple(raw["classes"]),
                              "feature_mean": tuple(raw["feature_mean"]),
                              "feature_variance": tuple(raw["feature_variance"]),
                              "images": tuple((c, o, tuple(shape)) for c, o, shape in raw["images"])})
    spec = get_spec(MODEL)
    tf_keras.utils.set_random_seed(spec.seed)
    model = spec.flavor.builder()(inputs, **spec.flavor.params)
    schedule = {"name": MODEL, "learning_rate_schedule": spec.flavor.learning_rate_schedule, "epochs": epochs,
                "inputs": {"learning_rate": spec.flavor.learning_rate}}
    fit_seconds, ended_at, accuracy = [], [], []
    for epoch in range(epochs):
        began = time.perf_counter()
        _set_learning_rate(model, schedule, epoch + 1)
        fitted = model.fit(arrays["x"], arrays["y"], validation_data=(arrays["vx"], arrays["vy"]),
                           batch_size=spec.flavor.batch_size, epochs=epoch + 1, initial_epoch=epoch, verbose=0,
                           shuffle=True)
        fit_seconds.append(time.perf_counter() - began)
        ended_at.append(time.time())
        accuracy.append(float(fitted.history["val_accuracy"][-1]))
    print(json.dumps({"fit_seconds": fit_seconds, "ended_at": ended_at, "val_accuracy": accuracy}))


def _throughput(images: int, fit_seconds: list[float], ended_after: list[float], total: float,
                accuracy: list[float], target: float) -> dict:
    """Images per second in fit (epochs 2 to N: the first traces TensorFlow's graph; every epoch's figure kept)
    and over the whole run; the time from the start to the end of the first epoch whose validation accuracy
    reached `target`."""
    steady = fit_seconds[1:] or fit_seconds
    reached = next((i for i, value in enumerate(accuracy) if value >= target), None)
    return {"train_images": images, "epochs": len(fit_seconds),
            "fit_images_per_s": round(images * len(steady) / sum(steady), 1),
            "fit_images_per_s_per_epoch": [round(images / s, 1) for s in steady],
            "run_images_per_s": round(images * len(fit_seconds) / total, 1), "run_seconds": round(total, 2),
            "first_epoch_ended_s": round(ended_after[0], 2), "first_epoch_fit_s": round(fit_seconds[0], 2),
            "validation_accuracy": round(max(accuracy), 3), "val_accuracy_per_epoch": [round(a, 3) for a in accuracy],
            "target_accuracy": target,
            "epochs_to_target": None if reached is None else reached + 1,
            "seconds_to_target": None if reached is None else round(ended_after[reached], 2)}


def bench_train(config, epochs: int, epochs_2_workers: int, target: float, keep, work: Path,
                min_run_seconds: float = 60.0) -> dict:
    """Plain fits and one worker on a Ray of 2 CPUs (a laptop's local Ray); two workers on one of 3 logical CPUs,
    as two workers of one CPU each leave none for Ray Data on 2 (measured: one worker trains ~25% slower on 3).
    One thread against one worker for `epochs` (the overhead's run, a minute or more), every core against two
    workers for `epochs_2_workers` (throughput only: two workers on two cores are slower than one). Where the
    one-thread plain script ends within `min_run_seconds`, it runs again with enough more epochs to pass it, and the
    worker trains for as many."""
    from orchard.runtime import ray_session
    from orchard.storage import Storage

    storage = Storage(config.storage)
    with ray_session(config.with_overrides(num_cpus=2), quiet=True):
        _prepare(storage, PHOTOS[0])
        images = _save_plain_arrays(storage, work)
        results = _plain_fit({"plain_fit_1_thread": ("1", epochs), "plain_fit": (None, epochs_2_workers)}, work,
                             target, images)
        plain = results["plain_fit_1_thread"]
        if plain["run_seconds"] < min_run_seconds and epochs > 1:  # a fast hour: more epochs, for a long run
            per_epoch = (plain["run_seconds"] - plain["first_epoch_ended_s"]) / (epochs - 1)
            epochs += math.ceil((min_run_seconds * 1.1 - plain["run_seconds"]) / per_epoch)
            log.info("the plain script's %.0f s is under %.0f s: %d epochs instead", plain["run_seconds"],
                     min_run_seconds, epochs)
            results.update(_plain_fit({"plain_fit_1_thread": ("1", epochs)}, work, target, images))
        keep("train", results)
        _train_run(storage, 1, epochs, target, results, keep, work)
    with ray_session(config.with_overrides(num_cpus=3), quiet=True):
        _train_run(storage, 2, epochs_2_workers, target, results, keep, work)
    for workers, baseline in ((1, "plain_fit_1_thread"), (2, "plain_fit")):
        mine = results[f"ray_train_{workers}_worker"]
        for measure in ("fit", "run"):
            mine[f"{measure}_vs_{baseline}"] = round(
                mine[f"{measure}_images_per_s"] / results[baseline][f"{measure}_images_per_s"], 2)
    one, plain = results["ray_train_1_worker"], results["plain_fit_1_thread"]
    results["overhead_1_worker"] = round(one["run_seconds"] / plain["run_seconds"] - 1, 3)
    return results


def _train_run(storage, workers: int, epochs: int, target: float, results: dict, keep, work: Path) -> None:
    """`train_network` timed from the call to its return; each epoch's end is the wall-clock time the worker
    writes after that epoch's checkpoint is reported (the `after_epoch` hook)."""
    from training.catalog import get_spec
    from training.flavors.keras import train_network

    marks = work / f"epochs-{workers}w.txt"
    marks.unlink(missing_ok=True)
    path = str(marks)

    def mark(epoch: int) -> None:  # runs in the rank-0 worker and every other; the first line per epoch counts
        with open(path, "a") as handle:
            handle.write(f"{epoch} {time.time()}\n")

    launched = time.time()
    run = train_network(storage, get_spec(MODEL), workers=workers, epochs=epochs, run_name=f"bench-{workers}w",
                        after_epoch=mark)
    total = time.time() - launched
    ended: dict[int, float] = {}
    for line in marks.read_text().splitlines():
        epoch, when = line.split()
        ended.setdefault(int(epoch), float(when))
    history = run["history"]
    results[f"ray_train_{workers}_worker"] = _throughput(
        run["rows"]["train"], [m["fit_seconds"] for m in history],
        [ended[int(m["epoch"])] - launched for m in history], total, [m["val_accuracy"] for m in history], target)
    keep("train", results)


def bench_batch(storage, photos: int, repeats: int, actors: list[int]) -> dict:
    from apple_images.generate import write_apple_images

    from features.images import decode_image
    from orchard.registry import ModelRegistry
    from serve.batch import run_batch_inference
    from training.predictor import Predictor, image_inputs

    folder = "incoming/bench"
    write_apple_images(storage, rows=photos, seed=5, location=folder)
    predictor = Predictor.load(ModelRegistry(storage), MODEL)
    (spec,) = image_inputs(predictor.signature).values()
    paths = sorted(e.path for e in storage.find_files(folder))

    def plain() -> None:
        for start in range(0, len(paths), 256):
            pixels = [decode_image(storage.read_bytes(p), spec) for p in paths[start:start + 256]]
            predictor.predict_pixels(pixels)

    pools = {f"orchard_{n}_actor{'s' if n > 1 else ''}": n for n in actors}
    timings: dict[str, list[float]] = {**{name: [] for name in pools}, "plain_loop": []}
    for attempt in range(repeats + 1):  # the first round warms up (Ray workers, TensorFlow imports)
        for method in timings:
            began = time.perf_counter()
            if method == "plain_loop":
                plain()
            else:
                if storage.exists(f"predictions/batch/{MODEL}"):  # else the same run again adds nothing
                    storage.delete_dir(f"predictions/batch/{MODEL}")
                run_batch_inference(storage, MODEL, folder, workers=pools[method])
            if attempt:
                timings[method].append(time.perf_counter() - began)
    medians = {m: statistics.median(s) for m, s in timings.items()}
    return {"photos": photos, **{m: {"median_seconds": round(medians[m], 3), "seconds": [round(s, 3) for s in timings[m]],
                                     "images_per_s": round(photos / medians[m], 1)} for m in timings},
            **{f"{m}_vs_plain": round(medians["plain_loop"] / medians[m], 2) for m in pools}}


def bench_http(config, storage, requests: int) -> dict:
    import httpx
    from ray import serve

    from serve.app import deploy, replica_urls

    deploy(config, replica_cpus=0)
    try:
        url = (replica_urls(wait_s=60) or [config.serve_url()])[0]
        photo = storage.read_bytes(next(e.path for e in storage.find_files("landing/apple_images")
                                        if e.path.endswith(".png")))
        latencies = []
        with httpx.Client(base_url=url, timeout=60) as client:
            for attempt in range(requests + 20):  # 20 warm-up requests
                began = time.perf_counter()
                response = client.post(f"/v1/models/{MODEL}:predict", files={"image": ("photo.png", photo)})
                response.raise_for_status()
                if attempt >= 20:
                    latencies.append((time.perf_counter() - began) * 1000)
    finally:
        serve.delete("orchard")
    latencies.sort()
    return {"requests": requests, "p50_ms": round(statistics.median(latencies), 2),
            "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))], 2), "photo_bytes": len(photo)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="train,batch,http")
    parser.add_argument("--photos", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=30, help="plain fit on one thread and one Ray Train worker")
    parser.add_argument("--min-run-seconds", type=float, default=60.0,
                        help="train: more epochs than --epochs where the one-thread plain script ends sooner")
    parser.add_argument("--epochs-2-workers", type=int, default=8, help="plain fit on every core and two workers")
    parser.add_argument("--target-accuracy", type=float, default=0.85, help="for the time to a target accuracy")
    parser.add_argument("--batch-photos", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--actors", default="1,2", help="batch: the actor pools' sizes, comma-separated")
    parser.add_argument("--serving-epochs", type=int, default=3, help="batch, http: epochs of the network served")
    parser.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "orchard-bench", "images"))
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument("--plain-fit", help=argparse.SUPPRESS)  # the plain tf-keras baseline's own process
    args = parser.parse_args()
    if args.plain_fit:
        return _plain_fit_process(Path(args.plain_fit), args.epochs)
    sections = set(args.only.split(","))

    from orchard.config import OrchardConfig
    from orchard.output import stdout_reserved_for_json
    from orchard.runtime import ray_session
    from orchard.storage import Storage
    from tests.helpers import free_port
    from training.trainer import train_model

    work = Path(args.work)
    sink = SectionResults(work)
    keep, results = sink.keep, sink.results

    with stdout_reserved_for_json(args.json), tempfile.TemporaryDirectory(prefix="orchard-bench-images-") as root:
        config = OrchardConfig.from_sources(storage=root, num_cpus=2, serve_port=free_port())
        storage = Storage(config.storage)
        PHOTOS[0] = args.photos
        if "train" in sections:
            keep("train", bench_train(config, args.epochs, args.epochs_2_workers, args.target_accuracy, keep, work,
                                      args.min_run_seconds))
        with ray_session(config, quiet=True):
            _prepare(storage, args.photos)
            if sections & {"batch", "http"}:
                train_model(storage, MODEL, alias="production", epochs=args.serving_epochs, force=True)
            if "batch" in sections:
                keep("batch", bench_batch(storage, args.batch_photos, args.repeats,
                                          [int(n) for n in args.actors.split(",")]))
            if "http" in sections:
                keep("http", bench_http(config, storage, args.requests))
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
