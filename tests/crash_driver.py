"""Writers for the crash-safety tests to kill.

`python -m tests.crash_driver job RAY_ADDRESS STORAGE ORCHARD_ARGS...` joins the Ray cluster as `orchard` would
(`ray_session` reuses a connection it finds), prints "ready", waits for a line on stdin, then runs
`orchard ORCHARD_ARGS...`. The test starts the next trial's driver while the current one runs, so the kills fall
in the command's own work rather than in Python's imports and Ray's connection.

`python -m tests.crash_driver register STORAGE MODEL SEED`:

`register` prints "ready" once it has imported and opened the registry (and registered one version of another
model, MODEL-warm-up, so that making its clients is not part of the first kill's span), then
registers versions of MODEL one after another until it is killed, printing each version's number (flushed) as soon
as `register` returns it: a number printed is a version the registry promised to keep. Each version has a 256 KiB
file whose bytes depend on the seed and the count, so any two versions differ.
"""

from __future__ import annotations

import hashlib
import os
import sys

from orchard.registry import ModelRegistry
from orchard.storage import Storage

FILE_BYTES = 1 << 18


def version_files(seed: int, count: int) -> dict[str, bytes]:
    block = hashlib.sha256(f"{seed}:{count}".encode()).digest()
    return {"weights.bin": block * (FILE_BYTES // len(block)), "params.json": b'{"seed": %d, "count": %d}' % (seed,
                                                                                                            count)}


def register_forever(storage_uri: str, model: str, seed: int) -> None:
    registry = ModelRegistry(Storage(storage_uri))
    # One whole registration of a model of its own first: the storage's clients (two boto3 clients on S3, ~0.35 s
    # to make) are made before "ready", so that the kills fall in registrations like every later one.
    registry.register(f"{model}-warm-up", version_files(seed, 0), {"task": "regression"})
    count = 0
    print("ready", flush=True)
    while True:
        count += 1
        version = registry.register(model, version_files(seed, count), {"task": "regression", "seed": seed,
                                                                         "count": count})
        print(version.version, flush=True)


def job(address: str, storage: str, arguments: list[str]) -> None:
    import logging

    import ray

    from orchard.config import OrchardConfig
    from orchard.runtime import configure_ray_data, prepare_driver_environment, quiet_library_loggers
    from pipelines import cli

    prepare_driver_environment()
    config = OrchardConfig.from_sources(storage=storage, ray_address=address)
    runtime_env = config.runtime_env()
    # The job's workers reach an object store as the driver does (a cloud cluster's nodes have these from their image)
    runtime_env["env_vars"].update({name: value for name, value in os.environ.items() if name.startswith("AWS_")})
    ray.init(address=address, runtime_env=runtime_env, logging_level=logging.ERROR, log_to_driver=False)
    configure_ray_data(progress_bars=False)
    quiet_library_loggers()
    print("ready", flush=True)
    sys.stdin.readline()
    sys.argv = ["orchard", "--storage", storage, "--ray-address", address, *arguments]
    cli.main()


if __name__ == "__main__":
    command, *arguments = sys.argv[1:]
    if command == "register":
        register_forever(arguments[0], arguments[1], int(arguments[2]))
    elif command == "job":
        job(arguments[0], arguments[1], arguments[2:])
    else:
        raise SystemExit(f"unknown command {command!r}; expected: register STORAGE MODEL SEED, or job ADDRESS "
                         "STORAGE ARGS...")
