"""Batch inference job: a model version over entities and times (or raw rows), into a Delta table of predictions.

    python -m pipelines.batch_inference MODEL[:VERSION|@ALIAS] --input GROUP|PATH [--time-column C] [--at T]
                                        [--workers N] [--json]

Also `orchard predict`. Runs unchanged under `ray job submit`.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import List, Optional

import typer

from orchard.config import OrchardConfig
from orchard.errors import UsageError
from orchard.output import emit, stdout_reserved_for_json
from orchard.runtime import ray_session
from orchard.storage import Storage
from pipelines import options

INPUT_HELP = ("A feature group (its rows' keys and event times), or a Parquet or CSV file or folder (a path under "
              "the storage root, or absolute) of entity columns and a time, or of raw rows with the model's inputs.")


def parse_time(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise UsageError(f"--at {text!r} is not an ISO time (2026-01-05T12:00:00Z)") from None
    return value if value.tzinfo else value.replace(tzinfo=timezone.utc)


def run(config: OrchardConfig, model: str, source: str, *, time_column: str | None = None, at: str | None = None,
        workers: int = 1, quiet: bool = False) -> dict:
    from serve.batch import run_batch_inference

    when = parse_time(at)
    with ray_session(config, quiet=quiet):
        return run_batch_inference(Storage(config.storage), model, source, time_column=time_column, at=when,
                                   workers=workers).to_dict()


def describe(report: dict) -> str:
    if report["already_done"]:
        return (f"{report['model']}:{report['version']} on {report['input']}: already done by an earlier run "
                f"({report['run_key']}); nothing added to {report['table']}")
    return (f"{report['model']}:{report['version']} on {report['input']} ({report['mode']}): {report['predicted']} "
            f"of {report['rows']} rows predicted, {report['missing']} without features; table {report['table']} "
            f"version {report['table_version']} ({report['seconds']:.1f} s)")


def main(
    model: str = typer.Argument(..., help="Model as name, name:version or name@alias (default: production)."),
    source: str = typer.Option(..., "--input", help=INPUT_HELP),
    time_column: Optional[str] = typer.Option(None, "--time-column", help="The input's time column (default: the "
                                              "view's label time column, or the group's event time)."),
    at: Optional[str] = typer.Option(None, "--at", help="One time for every row (ISO, UTC unless it says)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Most actors predicting at once (each loads the model)."),
    storage: Optional[str] = options.STORAGE,
    ray_address: Optional[str] = options.RAY_ADDRESS,
    projects: Optional[List[str]] = options.PROJECT,
    verbose: bool = options.VERBOSE,
    as_json: bool = options.JSON,
) -> None:
    """Predict a table of entities (features joined point-in-time) or raw rows with a model version."""
    config = options.load_config(storage=storage, ray_address=ray_address, projects=projects, verbose=verbose)
    with stdout_reserved_for_json(as_json):
        report = run(config, model, source, time_column=time_column, at=at, workers=workers, quiet=as_json)
    emit(report, as_json=as_json, human=describe)


if __name__ == "__main__":
    typer.run(main)
