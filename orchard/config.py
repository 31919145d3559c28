"""One typed configuration object, built from flags and the environment.

Precedence: explicit flag > environment variable > default. Nothing here touches
the file system or Ray; `runtime_env()` is the single place that turns the
configuration into what Ray workers see.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from urllib.parse import urlparse

from orchard.errors import ConfigError  # noqa: F401 - raised here, and imported from here by callers
from orchard.projects import PROJECTS_ENV, ProjectRef, configured, shipped_folder

DEFAULT_STORAGE = "orchard-data"

# TensorFlow must see this before it is first imported, in the driver and in
# every Ray worker: Keras 3 fails inside MultiWorkerMirroredStrategy, tf-keras works.
LEGACY_KERAS_ENV = {"TF_USE_LEGACY_KERAS": "1"}
# Whether the libraries' own logs are shown (--verbose), for every process of a job (see orchard.runtime).
VERBOSE_ENV = "ORCHARD_VERBOSE"
# How often Ray Train's controller polls its workers (Ray's default: every 2 s). A worker's `report` waits while
# its previous one is unread (a queue of one), so epochs shorter than the interval ran one per poll, and each run
# ended up to a poll after its last epoch: a 5-epoch network of the demo spent ~8 s of 30 waiting. Polling a
# handful of workers four times as often costs next to nothing. A value in the environment (the shell's, or a
# job's `--runtime-env-json`) wins and reaches the controller without Orchard's runtime env repeating it (Ray
# refuses to merge two runtime envs that set one variable).
TRAIN_POLL_ENV = "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S"
TRAIN_POLL_S = "0.5"


def normalize_storage_uri(value: str, cwd: Path | None = None) -> str:
    """Return an absolute storage URI.

    A bare path becomes an absolute local path (Ray workers run in other working
    directories, so a relative path would point somewhere else for them).
    """
    value = value.strip()
    if not value:
        raise ConfigError("storage root must not be empty")
    parsed = urlparse(value)
    if parsed.scheme in ("", "file"):
        path = Path(parsed.path if parsed.scheme == "file" else value).expanduser()
        if not path.is_absolute():
            path = (cwd or Path.cwd()) / path
        return str(path.resolve())
    if parsed.scheme in ("s3", "gs", "gcs", "abfs", "hdfs"):
        if not parsed.netloc:
            raise ConfigError(f"storage root {value!r} names no bucket or host")
        if parsed.scheme == "s3" and ("@" in parsed.netloc or parsed.query):
            # Every library that touches the store (pyarrow, deltalake, boto3) must see the same endpoint and
            # credentials, and a URI is printed in messages: both belong in the AWS_* variables.
            raise ConfigError(f"storage root s3://{parsed.hostname or ''}/…: give credentials, endpoint and region in "
                              "the AWS_* environment variables (AWS_ACCESS_KEY_ID, AWS_ENDPOINT_URL, AWS_REGION), "
                              "not in the URI")
        return value.rstrip("/")
    raise ConfigError(
        f"storage root {value!r} has unsupported scheme {parsed.scheme!r}; "
        "expected a local path, file://, s3://, gs://, abfs:// or hdfs://"
    )


def _int_from(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"environment variable {name} must be an integer, got {raw!r}") from None


SQL_ENV_PREFIX = "ORCHARD_SQL_"


def databases_from(env: Mapping[str, str]) -> dict[str, str]:
    """SQL connection URLs named by ORCHARD_SQL_<NAME> variables, keyed by the lower-case name."""
    return {name[len(SQL_ENV_PREFIX):].lower(): url for name, url in env.items()
            if name.startswith(SQL_ENV_PREFIX) and len(name) > len(SQL_ENV_PREFIX) and url}


@dataclass(frozen=True)
class OrchardConfig:
    """Everything a command needs to know about where it runs."""

    storage: str
    """Absolute storage root: a local path or an object-store URI."""
    ray_address: str | None = None
    """Address of an existing Ray cluster; None starts a local single-node Ray."""
    num_cpus: int | None = None
    """CPUs for a local Ray started by Orchard (None lets Ray count them)."""
    serve_host: str = "127.0.0.1"
    serve_port: int = 8000
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """Further environment variables for every Ray worker."""
    databases: Mapping[str, str] = field(default_factory=dict, repr=False)
    """SQL connection URLs by database name, from ORCHARD_SQL_<NAME> (kept out of repr: they may hold passwords)."""
    projects: tuple[ProjectRef, ...] = ()
    """The user's projects to load (`orchard.projects`): --project, else ORCHARD_PROJECTS, else pyproject.toml."""
    online_store: str | None = field(default=None, repr=False)
    """ORCHARD_ONLINE_STORE: a redis:// URL (it may hold a password: kept out of repr), or None for the embedded
    SQLite file under the storage root (`features.online`)."""
    verbose: bool = False
    """Show Ray's and the libraries' own logs (--verbose); otherwise a healthy run prints only Orchard's output."""

    @classmethod
    def from_sources(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        storage: str | None = None,
        ray_address: str | None = None,
        num_cpus: int | None = None,
        serve_host: str | None = None,
        serve_port: int | None = None,
        projects: list[str] | tuple[str, ...] | None = None,
        cwd: Path | None = None,
        verbose: bool = False,
    ) -> "OrchardConfig":
        """Build the configuration: flags win over ORCHARD_* variables, which win over defaults."""
        env = os.environ if env is None else env
        port = serve_port if serve_port is not None else _int_from(env, "ORCHARD_SERVE_PORT")
        cpus = num_cpus if num_cpus is not None else _int_from(env, "ORCHARD_NUM_CPUS")
        if cpus is not None and cpus < 1:
            raise ConfigError(f"num_cpus must be at least 1, got {cpus}")
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"serve port must be between 1 and 65535, got {port}")
        return cls(
            storage=normalize_storage_uri(storage or env.get("ORCHARD_STORAGE") or DEFAULT_STORAGE),
            ray_address=ray_address or env.get("ORCHARD_RAY_ADDRESS") or None,
            num_cpus=cpus,
            serve_host=serve_host or env.get("ORCHARD_SERVE_HOST") or "127.0.0.1",
            serve_port=port if port is not None else 8000,
            databases=databases_from(env),
            projects=configured(projects, env, cwd or Path.cwd()),
            online_store=env.get("ORCHARD_ONLINE_STORE") or None,
            verbose=verbose or env.get(VERBOSE_ENV) == "1",
        )

    def with_overrides(self, **changes) -> "OrchardConfig":
        if "storage" in changes and changes["storage"] is not None:
            changes["storage"] = normalize_storage_uri(changes["storage"])
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def runtime_env(self) -> dict:
        """The Ray runtime env every Orchard job and worker runs with."""
        env_vars = {**LEGACY_KERAS_ENV, "ORCHARD_STORAGE": self.storage, **self.extra_env}
        if TRAIN_POLL_ENV not in os.environ:
            env_vars[TRAIN_POLL_ENV] = TRAIN_POLL_S
        env_vars[VERBOSE_ENV] = "1" if self.verbose else "0"
        runtime_env: dict = {"env_vars": env_vars}
        if self.projects:
            # Workers import the projects by module name; folders that are not installed travel with the job.
            env_vars[PROJECTS_ENV] = ":".join(ref.module for ref in self.projects)
            folders = [folder for folder in map(shipped_folder, self.projects) if folder]
            if folders:
                runtime_env["py_modules"] = folders
        return runtime_env

    def serve_url(self) -> str:
        host = "127.0.0.1" if self.serve_host in ("0.0.0.0", "::") else self.serve_host
        return f"http://{host}:{self.serve_port}"
