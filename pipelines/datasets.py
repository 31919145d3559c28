"""Training-dataset job: a feature view joined point-in-time, split, fitted and versioned.

    python -m pipelines.datasets fruit_classification[:version] [--split random:0.7,0.15,0.15 | --split time:T1,T2]
"""

from __future__ import annotations

from typing import List, Optional

import typer

from features.catalog import get_view
from features.datasets import create_training_dataset, parse_split
from orchard.config import OrchardConfig
from orchard.output import emit, stdout_reserved_for_json
from orchard.runtime import ray_session
from orchard.storage import Storage
from pipelines import options

SPLIT_HELP = ("'random:TRAIN,VALIDATION,TEST' fractions (default random:0.7,0.15,0.15) or "
              "'time:VALIDATION_FROM,TEST_FROM' as ISO times in UTC.")


def run(config: OrchardConfig, view_ref: str, split: str | None = None, seed: int = 0, *, quiet: bool = False) -> dict:
    view = get_view(view_ref)
    rule = parse_split(split, seed=seed)
    with ray_session(config, quiet=quiet):
        return create_training_dataset(Storage(config.storage), view, rule)


def main(
    view: str = typer.Argument(..., help="Feature view as name[:version]; the newest version if omitted."),
    split: str = typer.Option(None, "--split", help=SPLIT_HELP),
    seed: int = typer.Option(0, "--seed", help="Seed of the random split."),
    storage: Optional[str] = options.STORAGE,
    ray_address: Optional[str] = options.RAY_ADDRESS,
    projects: Optional[List[str]] = options.PROJECT,
    verbose: bool = options.VERBOSE,
    as_json: bool = typer.Option(False, "--json", help="Print the dataset's metadata as one JSON document."),
) -> None:
    """Create a new version of a feature view's training dataset."""
    config = options.load_config(storage=storage, ray_address=ray_address, projects=projects, verbose=verbose)
    with stdout_reserved_for_json(as_json):
        metadata = run(config, view, split, seed, quiet=as_json)
    emit(metadata, as_json=as_json)


if __name__ == "__main__":
    typer.run(main)
