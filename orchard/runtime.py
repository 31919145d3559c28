"""Starting and stopping Ray for Orchard commands.

`ray_session` connects to the configured cluster, or starts a local single-node
Ray when none is configured, and shuts down on exit exactly what it started.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Iterator

from orchard.config import LEGACY_KERAS_ENV, OrchardConfig

log = logging.getLogger(__name__)


def prepare_driver_environment() -> None:
    """Set what must be set in this process before TensorFlow is first imported."""
    for name, value in LEGACY_KERAS_ENV.items():
        os.environ.setdefault(name, value)


@contextlib.contextmanager
def ray_session(config: OrchardConfig, *, quiet: bool = False) -> Iterator[None]:
    """Run the body inside a Ray connection built from `config`.

    If Ray is already initialised in this process (a test session, a Ray job
    driver), it is reused and left running.
    """
    import ray

    prepare_driver_environment()
    if ray.is_initialized():
        yield
        return
    kwargs: dict = {"runtime_env": config.runtime_env(), "include_dashboard": False}
    if quiet:
        kwargs.update(logging_level=logging.WARNING, log_to_driver=False)
    if config.ray_address:
        kwargs["address"] = config.ray_address
        kwargs.pop("include_dashboard")
    elif os.environ.get("RAY_ADDRESS"):
        # Inside `ray job submit` the job's driver must join the cluster it was sent to.
        kwargs.pop("include_dashboard")
    elif config.num_cpus is not None:
        kwargs["num_cpus"] = config.num_cpus
    ray.init(**kwargs)
    configure_ray_data(quiet=quiet)
    try:
        yield
    finally:
        ray.shutdown()


def configure_ray_data(*, quiet: bool) -> None:
    import ray.data

    context = ray.data.DataContext.get_current()
    # Ray 2.60's default (V2) Parquet datasource starts a pool of footer-reading actors for every read and waits
    # about a second for it, whatever the input's size; the V1 reader measured 3x faster on bench/bench_pit_join.py
    # (four Parquet inputs: 1.1 s of reading instead of 4.6 s on 2 CPUs).
    context.use_datasource_v2 = False
    if quiet:
        context.enable_progress_bars = False
        for name in ("ray.data", "ray.serve"):
            logging.getLogger(name).setLevel(logging.WARNING)
