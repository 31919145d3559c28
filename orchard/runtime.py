"""Starting and stopping Ray for Orchard commands.

`ray_session` connects to the configured cluster, or starts a local single-node
Ray when none is configured, and shuts down on exit exactly what it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from typing import Iterator

from orchard.config import LEGACY_KERAS_ENV, VERBOSE_ENV, OrchardConfig

log = logging.getLogger(__name__)


# How Orchard runs Ray Serve, read by every Serve process (controller, proxy, replicas) when it starts, so it must
# be in the environment of the process that starts Ray: `ray_session` sets it before it starts a local Ray, and
# cluster.yaml sets it for `ray start`. Measured on bench/bench_serve.py (README there), 16 connections, 2 cores:
# - Direct ingress: each replica of the ingress deployment also serves HTTP on a port of its own (30000-31000;
#   `serve.app.replica_urls` lists them) besides the proxy on the head node. Through the proxy every request costs
#   an actor call to the replica plus the replica's calls back to the proxy for the body: ~8 ms of CPU per request
#   in the two processes; 317 requests/s against 1,295 straight to the replica (plain uvicorn: 1,968).
# - User code on the replica's own event loop instead of a second thread: 1.5-2x the requests per second
#   straight to the replica (Orchard's handlers are async and hand model loading to a thread).
# - Draining: a stopping replica keeps serving this long so that a load balancer in front of the replica ports can
#   take it out first; 30 s by default, 1 s for a local Ray with nothing in front of it.
# A value already set in the environment wins (`RAY_SERVE_ENABLE_DIRECT_INGRESS=0` keeps the proxy only).
SERVE_ENV = {
    "RAY_SERVE_ENABLE_DIRECT_INGRESS": "1",
    "RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD": "0",
}
LOCAL_SERVE_ENV = {**SERVE_ENV, "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "1"}


_NOISY_LOGGERS = ("ray", "ray.data", "ray.serve", "ray.train", "ray.tune", "ray._private", "tensorflow", "absl")
_stderr_lock = threading.Lock()
_local_ray_started = threading.Event()


def prepare_driver_environment(verbose: bool | None = None) -> None:
    """Set what must be set in this process before TensorFlow is first imported; with `verbose` given, whether
    this process shows the libraries' own logs (`quiet_native_stderr`)."""
    for name, value in LEGACY_KERAS_ENV.items():
        os.environ.setdefault(name, value)
    if verbose is not None:
        os.environ[VERBOSE_ENV] = "1" if verbose else "0"


@contextlib.contextmanager
def quiet_native_stderr() -> Iterator[None]:
    """Send what native code writes to stderr to /dev/null for the body, unless this process runs verbose.

    TensorFlow's C++ side logs through absl before its logging is set up, so no environment variable silences it
    (TF_CPP_MIN_LOG_LEVEL no longer does in 2.21): importing it on a machine without a GPU prints "Could not find
    cuda drivers", "failed call to cuInit", oneDNN and CPU-instruction notices. Orchard wraps its TensorFlow
    import and device start-up in this; a Python exception raised inside still reaches stderr once it is restored.
    """
    if os.environ.get(VERBOSE_ENV) == "1" or not _stderr_lock.acquire(blocking=False):
        yield
        return
    try:
        sys.stderr.flush()
        saved = os.dup(2)
        try:
            with open(os.devnull, "wb") as devnull:
                os.dup2(devnull.fileno(), 2)
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
    finally:
        _stderr_lock.release()


def prepare_local_cluster_environment() -> None:
    """Set, before a local Ray starts, what its processes must inherit (they start with this process's environment)."""
    for name, value in LOCAL_SERVE_ENV.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def ray_session(config: OrchardConfig, *, quiet: bool = False) -> Iterator[None]:
    """Run the body inside a Ray connection built from `config`.

    If Ray is already initialised in this process (a test session, a Ray job
    driver), it is reused and left running. `quiet`: the command prints one
    JSON document, so no progress bars. Unless `config.verbose`, Ray's and the
    libraries' own logs stay out of the output: only errors reach it.
    """
    import ray

    prepare_driver_environment(config.verbose)
    if ray.is_initialized():
        yield
        return
    kwargs: dict = {"runtime_env": config.runtime_env(), "include_dashboard": False}
    if not config.verbose:
        kwargs.update(logging_level=logging.ERROR, log_to_driver=False)
        quiet_library_loggers()
    if config.ray_address:
        kwargs["address"] = config.ray_address
        kwargs.pop("include_dashboard")
    elif os.environ.get("RAY_ADDRESS"):
        # Inside `ray job submit` the job's driver must join the cluster it was sent to.
        kwargs.pop("include_dashboard")
    else:
        prepare_local_cluster_environment()
        # A new Ray of our own, as the docstring says: with no address Ray would join the last `ray start`
        # cluster on this machine, which started without these settings (and refuses `num_cpus`).
        kwargs["address"] = "local"
        if config.num_cpus is not None:
            kwargs["num_cpus"] = config.num_cpus
    ray.init(**kwargs)
    if kwargs.get("address") == "local":
        _local_ray_started.set()
    configure_ray_data(progress_bars=config.verbose or (not quiet and sys.stderr.isatty()))
    if not config.verbose:
        quiet_library_loggers()  # again: importing Ray Data sets its own loggers' levels
    try:
        yield
    finally:
        ray.shutdown()
        _local_ray_started.clear()


def owns_local_ray() -> bool:
    """Whether this process started the Ray it is connected to (`ray_session` with no cluster address): its
    shutdown then stops every Ray process, Serve's included."""
    return _local_ray_started.is_set()


def quiet_library_loggers() -> None:
    """Only errors from Ray's Python loggers (its notices about CPUs in use, progress bars, token set-up)."""
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


def configure_ray_data(*, progress_bars: bool) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    # Ray 2.60's default (V2) Parquet datasource starts a pool of footer-reading actors for every read and waits
    # about a second for it, whatever the input's size; the V1 reader measured 3x faster on bench/bench_pit_join.py
    # (four Parquet inputs: 1.1 s of reading instead of 4.6 s on 2 CPUs).
    context.use_datasource_v2 = False
    # Ray 2.60's default shuffle (SHUFFLE_V2) starts aggregator actors, new worker processes, for every groupby:
    # 12-16 s for a groupby of 1,200 rows on 2 CPUs, against 0.6-0.8 s with the task-based sort shuffle, which runs
    # in the worker processes Ray already has. Monitoring's joins of predictions with outcomes are the groupbys.
    context.shuffle_strategy = ray.data.context.ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    context.enable_progress_bars = progress_bars
