"""Feature pipeline job: raw landing data -> validated offline feature table.

    python -m pipelines.features fruit_measurements[:version] [--storage URI] [--json]
"""

from __future__ import annotations

import typer

from features.catalog import get_group
from features.pipeline import RunReport, run_feature_pipeline
from orchard.config import OrchardConfig
from orchard.output import emit, stdout_reserved_for_json
from orchard.runtime import ray_session
from orchard.storage import Storage


def run(config: OrchardConfig, group_ref: str, *, quiet: bool = False) -> RunReport:
    group = get_group(group_ref)
    with ray_session(config, quiet=quiet):
        return run_feature_pipeline(Storage(config.storage), group)


def main(
    group: str = typer.Argument(..., help="Feature group as name[:version]; the newest version if omitted."),
    storage: str = typer.Option(None, "--storage", help="Storage root URI (default: $ORCHARD_STORAGE or ./orchard-data)."),
    ray_address: str = typer.Option(None, "--ray-address", help="Join this Ray cluster instead of starting a local one."),
    as_json: bool = typer.Option(False, "--json", help="Print the run report as one JSON document."),
) -> None:
    """Run the feature pipeline of one feature group."""
    config = OrchardConfig.from_sources(storage=storage, ray_address=ray_address)
    with stdout_reserved_for_json(as_json):
        report = run(config, group, quiet=as_json)
    emit(report.to_dict(), as_json=as_json)


if __name__ == "__main__":
    typer.run(main)
