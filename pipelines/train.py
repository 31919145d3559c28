"""Training job: fit a model on its feature table and register it as a new version.

    python -m pipelines.train fruit_classifier [--storage URI] [--alias production] [--json]
"""

from __future__ import annotations

import typer

from orchard.config import OrchardConfig
from orchard.output import emit, stdout_reserved_for_json
from orchard.registry import ModelRegistry
from orchard.runtime import ray_session
from orchard.storage import Storage
from orchard.training import get_spec, train_and_register


def run(config: OrchardConfig, model: str, *, alias: str | None = None, quiet: bool = False) -> dict:
    spec = get_spec(model)
    storage = Storage(config.storage)
    with ray_session(config, quiet=quiet):
        version, summary = train_and_register(storage, spec)
    if alias:
        ModelRegistry(storage).set_alias(spec.name, alias, version.version)
    return {"model": spec.name, "version": version.version, "alias": alias, **summary}


def main(
    model: str = typer.Argument(..., help="Model to train, e.g. fruit_classifier."),
    storage: str = typer.Option(None, "--storage", help="Storage root URI (default: $ORCHARD_STORAGE or ./orchard-data)."),
    alias: str = typer.Option(None, "--alias", help="Point this alias (e.g. production) at the new version."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON document."),
) -> None:
    """Train one model and register it."""
    config = OrchardConfig.from_sources(storage=storage)
    with stdout_reserved_for_json(as_json):
        result = run(config, model, alias=alias, quiet=as_json)
    emit(result, as_json=as_json)


if __name__ == "__main__":
    typer.run(main)
