"""The `orchard` command line. Every command has --help; reporting commands take --json."""

from __future__ import annotations

import logging
import signal
import sys
import threading

import typer

from orchard.config import ConfigError, OrchardConfig
from orchard.output import emit, stdout_reserved_for_json

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals may hold credentials
    help="Feature, training and inference pipelines on Ray.")
features_app = typer.Typer(no_args_is_help=True, help="Feature groups and feature pipelines.")
models_app = typer.Typer(no_args_is_help=True, help="The model registry.")
datasets_app = typer.Typer(no_args_is_help=True, help="Feature views and their versioned training datasets.")
app.add_typer(features_app, name="features")
app.add_typer(datasets_app, name="datasets")
app.add_typer(models_app, name="models")

JSON_OPTION = typer.Option(False, "--json", help="Print the result as one JSON document on stdout.")


@app.callback()
def configure(
    context: typer.Context,
    storage: str = typer.Option(
        None, "--storage", help="Storage root URI: a folder or s3://bucket/prefix. Default: $ORCHARD_STORAGE or ./orchard-data."
    ),
    ray_address: str = typer.Option(
        None, "--ray-address", help="Address of a running Ray cluster. Default: $ORCHARD_RAY_ADDRESS, else start a local Ray."
    ),
    num_cpus: int = typer.Option(None, "--num-cpus", help="CPUs for a local Ray (default: all). Env: ORCHARD_NUM_CPUS."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress to stderr."),
) -> None:
    """Orchard: from never-ending raw data to versioned prediction services, on Ray."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, stream=sys.stderr)
    try:
        context.obj = OrchardConfig.from_sources(storage=storage, ray_address=ray_address, num_cpus=num_cpus)
    except ConfigError as error:
        raise typer.BadParameter(str(error)) from None


@app.command()
def demo(
    context: typer.Context,
    rows: int = typer.Option(2000, "--rows", min=50, help="Fruit to generate for this run."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the generated data."),
    port: int = typer.Option(None, "--port", help="HTTP port for Ray Serve (default 8000, env ORCHARD_SERVE_PORT)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the whole path once: generate fruit, build features, train, register, serve, query, shut down."""
    from orchard.demo import run_demo

    config = context.obj.with_overrides(serve_port=port)
    with stdout_reserved_for_json(as_json):
        result = run_demo(config, rows=rows, seed=seed)
    if as_json:
        emit(result, as_json=True)


@app.command()
def generate(
    context: typer.Context,
    domain: str = typer.Argument(..., help="Example domain: fruit, surf or hotel."),
    rows: int = typer.Option(2000, "--rows", min=1, help="Records to generate."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out: str = typer.Option(None, "--out", help="Landing folder relative to the storage root (default: the domain's)."),
    bad_fraction: float = typer.Option(0.0, "--bad-fraction", min=0.0, max=1.0,
                                       help="Share of records to damage, plus one corrupt file when above 0."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a new day of synthetic raw data into a domain's landing area."""
    from features.synthetic import generators
    from orchard.storage import Storage

    known = generators()
    if domain not in known:
        raise typer.BadParameter(f"unknown domain {domain!r}; choose from {', '.join(known)}", param_hint="DOMAIN")
    kwargs = {"location": out} if out else {}
    generated = known[domain](Storage(context.obj.storage), rows=rows, seed=seed, bad_fraction=bad_fraction,
                              databases=context.obj.databases, **kwargs)
    emit({"domain": domain, "location": generated.location, "files": list(generated.files), "rows": generated.rows,
          "bad_records": generated.bad_records}, as_json=as_json)


@features_app.command("list")
def features_list(as_json: bool = JSON_OPTION) -> None:
    """List the defined feature groups."""
    from features.catalog import all_groups

    groups = [{"group": g.ref, "description": g.description, "features": len(g.features)} for g in all_groups()]
    emit(groups, as_json=as_json, human=lambda rows: "\n".join(f"{r['group']:32} {r['description']}" for r in rows))


@features_app.command("show")
def features_show(
    context: typer.Context,
    group: str = typer.Argument(..., help="Feature group as name[:version]."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a feature group: schema, table version, row counts and the last run's report."""
    from features.catalog import get_group
    from features.store import OfflineStore
    from orchard.storage import Storage

    definition = get_group(group)
    storage = Storage(context.obj.storage)
    store = OfflineStore(storage)
    last_run = f"runs/{definition.name}/v{definition.version}/last.json"
    result = {
        "group": definition.ref,
        "description": definition.description,
        "primary_key": list(definition.primary_key),
        "event_time": definition.event_time,
        "features": [{"name": f.name, "type": str(f.dtype), "description": f.description, "sensitive": f.sensitive}
                     for f in definition.features],
        "sources": [{"name": s.name, "format": s.format,
                     "from": s.label if s.format == "sql" else f"{s.location}/{s.pattern}"} for s in definition.sources],
        "aggregates": definition.aggregation.upstream.ref if definition.aggregation else None,
        "partition_by": list(definition.partition_columns),
        "sensitive_uses": _sensitive_uses(definition),
        "table": store.table_uri(definition),
        "table_version": store.table_version(definition),
        "rows": store.read_table(definition).num_rows if store.exists(definition) else 0,
        "quarantined_rows": store.read_quarantine(definition).num_rows,
        "last_run": storage.read_json(last_run) if storage.exists(last_run) else None,
    }
    emit(result, as_json=as_json)


def _sensitive_uses(group) -> list[dict]:
    """Feature views allowed to use this group's sensitive features, with their written justification."""
    from features.catalog import all_views

    return [{"view": v.ref, "feature": qualified.split(".", 1)[1], "justification": v.sensitive_allowed[qualified]}
            for v in all_views() for qualified in v.sensitive_features() if qualified.startswith(f"{group.name}.")]


@features_app.command("run")
def features_run(
    context: typer.Context,
    group: str = typer.Argument(..., help="Feature group as name[:version]."),
    follow: bool = typer.Option(False, "--follow", help="Keep running, picking up new data, until Ctrl-C or SIGTERM."),
    interval: float = typer.Option(10.0, "--interval", min=0, help="Seconds between runs with --follow."),
    as_json: bool = typer.Option(False, "--json", help="Print the run report as JSON (one line per run with --follow)."),
) -> None:
    """Run a feature group's pipeline into the offline store (once, or with --follow until stopped)."""
    from pipelines.features import run_command

    run_command(context.obj, group, follow_=follow, interval=interval, as_json=as_json)


@datasets_app.command("create")
def datasets_create(
    context: typer.Context,
    view: str = typer.Argument(..., help="Feature view as name[:version]."),
    split: str = typer.Option(None, "--split", help="'random:0.7,0.15,0.15' (default) or 'time:VALIDATION_FROM,TEST_FROM'."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random split."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Join a feature view point-in-time, split it, fit its transformations, store it as a new version."""
    from features.datasets import DatasetError
    from pipelines.datasets import run

    try:
        with stdout_reserved_for_json(as_json):
            metadata = run(context.obj, view, split, seed, quiet=as_json)
    except (DatasetError, KeyError, ValueError) as error:
        raise typer.BadParameter(str(error).strip('"'), param_hint="VIEW or --split") from None
    emit(metadata, as_json=as_json, human=lambda m: (
        f"{m['view']} training dataset version {m['version']}: "
        + ", ".join(f"{n} {c} rows" for n, c in m["rows"].items())
        + (f"; label rows with no match: {m['unmatched']}" if any(m["unmatched"].values()) else "")))


@datasets_app.command("list")
def datasets_list(context: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List feature views and the versions of their training datasets."""
    from features.catalog import all_views
    from features.datasets import dataset_versions
    from orchard.storage import Storage

    storage = Storage(context.obj.storage)
    rows = [{"view": v.ref, "description": v.description, "datasets": dataset_versions(storage, v)} for v in all_views()]
    emit(rows, as_json=as_json, human=lambda rs: "\n".join(f"{r['view']:28} datasets {r['datasets']}" for r in rs))


@datasets_app.command("show")
def datasets_show(
    context: typer.Context,
    view: str = typer.Argument(..., help="Feature view as name[:version]."),
    version: int = typer.Option(None, "--version", help="Dataset version (default: the newest)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show a training dataset's metadata: table versions read, split, row counts, justifications."""
    from features.catalog import get_view
    from features.datasets import DatasetError, TrainingDataset
    from orchard.storage import Storage

    try:
        dataset = TrainingDataset.open(Storage(context.obj.storage), get_view(view), version)
    except (DatasetError, KeyError) as error:
        raise typer.BadParameter(str(error).strip('"'), param_hint="VIEW") from None
    emit(dataset.metadata, as_json=as_json)


@app.command()
def train(
    context: typer.Context,
    model: str = typer.Argument(..., help="Model to train, e.g. fruit_classifier."),
    alias: str = typer.Option(None, "--alias", help="Point this alias (e.g. production) at the new version."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train a model on its feature table and register it as a new version."""
    from pipelines.train import run

    with stdout_reserved_for_json(as_json):
        result = run(context.obj, model, alias=alias, quiet=as_json)
    emit(result, as_json=as_json)


@models_app.command("list")
def models_list(context: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """List registered models with their versions and aliases."""
    from orchard.registry import ModelRegistry
    from orchard.storage import Storage

    registry = ModelRegistry(Storage(context.obj.storage))
    rows = [{"name": n, "versions": registry.versions(n), "aliases": registry.aliases(n)} for n in registry.models()]
    emit(rows, as_json=as_json, human=lambda rs: "\n".join(
        f"{r['name']:28} versions {r['versions']} aliases {r['aliases']}" for r in rs) or "no models registered")


@models_app.command("show")
def models_show(
    context: typer.Context,
    model: str = typer.Argument(..., help="name[:version or alias]; the production version if omitted."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Show one model version's card: signature, metrics, lineage."""
    from orchard.registry import ModelRegistry, RegistryError
    from orchard.storage import Storage

    name, _, reference = model.partition(":")
    try:
        card = ModelRegistry(Storage(context.obj.storage)).get(name, reference or None).card
    except RegistryError as error:
        raise typer.BadParameter(str(error), param_hint="MODEL") from None
    emit(card, as_json=True if as_json else False)


@app.command("serve")
def serve_command(
    context: typer.Context,
    port: int = typer.Option(None, "--port", help="HTTP port (default 8000, env ORCHARD_SERVE_PORT)."),
    host: str = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
) -> None:
    """Serve every registered model over HTTP until interrupted (Ctrl-C)."""
    from ray import serve

    from orchard.runtime import ray_session
    from serve.app import deploy

    config = context.obj.with_overrides(serve_port=port, serve_host=host)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    with ray_session(config, quiet=True):
        url = deploy(config)
        print(f"serving models from {config.storage} at {url} (docs at {url}/docs); Ctrl-C stops", flush=True)
        try:
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            serve.shutdown()


def main() -> None:
    from orchard.runtime import prepare_driver_environment

    prepare_driver_environment()
    app()


if __name__ == "__main__":
    main()
