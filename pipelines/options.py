"""Command-line options that the `orchard` command and the `python -m pipelines.<job>` jobs share, declared once."""

from __future__ import annotations

import logging
import sys
from typing import List, Optional

import typer

from orchard.config import OrchardConfig
from orchard.errors import ConfigError, ProjectError

STORAGE = typer.Option(
    None, "--storage", help="Storage root URI: a folder or s3://bucket/prefix. Default: $ORCHARD_STORAGE or ./orchard-data.")
RAY_ADDRESS = typer.Option(
    None, "--ray-address", help="Address of a running Ray cluster. Default: $ORCHARD_RAY_ADDRESS, else start a local Ray.")
PROJECT = typer.Option(
    None, "--project", "-p",
    help="A project to load: a package folder or an importable module name; repeat for several. "
         "Default: $ORCHARD_PROJECTS (':'-separated), else [tool.orchard] projects in ./pyproject.toml.")
JSON = typer.Option(False, "--json", help="Print the result as one JSON document on stdout.")
VERBOSE = typer.Option(False, "--verbose", "-v", help="Show progress logs and the libraries' own logs on stderr.")


def collect_definitions() -> None:
    """Collect every kind of definition once, so that two with one name stop any command before it starts."""
    from features.catalog import all_groups, all_views, generators
    from training.catalog import model_specs

    all_groups(), all_views(), generators(), model_specs()


def load_config(*, storage: Optional[str] = None, ray_address: Optional[str] = None,
                projects: Optional[List[str]] = None, num_cpus: Optional[int] = None,
                verbose: bool = False) -> OrchardConfig:
    """The configuration from flags and the environment, with its projects loaded (a usage error if one fails).

    Unless `verbose`, the libraries' own logs stay off the output (`orchard.runtime`); Orchard's progress shows.
    """
    from orchard.projects import activate
    from orchard.runtime import prepare_driver_environment, quiet_library_loggers

    try:
        config = OrchardConfig.from_sources(storage=storage, ray_address=ray_address, num_cpus=num_cpus,
                                            projects=projects, verbose=verbose)
    except ConfigError as error:
        raise typer.BadParameter(str(error)) from None
    logging.basicConfig(level=logging.INFO if config.verbose else logging.WARNING, stream=sys.stderr)
    prepare_driver_environment(config.verbose)
    if not config.verbose:
        quiet_library_loggers()
    try:
        activate(config.projects)
        collect_definitions()
    except ProjectError as error:  # a project that does not import, or two definitions with one name
        print(f"error: {error}", file=sys.stderr)
        raise typer.Exit(code=error.exit_code) from None
    return config
