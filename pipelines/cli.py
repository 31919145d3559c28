"""The `orchard` command line. Every command has --help; reporting commands take --json."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

import typer

from orchard.errors import OrchardError, UsageError
from orchard.output import emit, stdout_reserved_for_json
from pipelines import monitor as monitor_job
from pipelines import options
from pipelines import retrain as retrain_job
from pipelines import train as train_job

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

JSON_OPTION = options.JSON


@app.callback()
def configure(
    context: typer.Context,
    storage: Optional[str] = options.STORAGE,
    ray_address: Optional[str] = options.RAY_ADDRESS,
    projects: Optional[List[str]] = options.PROJECT,
    num_cpus: Optional[int] = typer.Option(None, "--num-cpus", help="CPUs for a local Ray (default: all). Env: ORCHARD_NUM_CPUS."),
    verbose: bool = options.VERBOSE,
) -> None:
    """Orchard: from never-ending raw data to versioned prediction services, on Ray."""
    if context.invoked_subcommand in ("init", "api-key"):
        context.obj = None  # they need no configuration, and loading the current one could fail
        return
    context.obj = options.load_config(storage=storage, ray_address=ray_address, projects=projects, num_cpus=num_cpus,
                                      verbose=verbose)


@app.command()
def demo(
    context: typer.Context,
    rows: Optional[int] = typer.Option(None, "--rows", min=50, help="Records per data generator (default: each one's own)."),
    seed: int = typer.Option(0, "--seed", help="Random seed of the generated data."),
    days: int = typer.Option(3, "--days", min=1, help="Days of data to generate, each followed by every feature "
                                                      "pipeline (aggregations then hold values known at earlier times)."),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1,
                                         help="Epochs of every network (default: each network's own)."),
    port: int = typer.Option(None, "--port", help="HTTP port for Ray Serve (default 8000, env ORCHARD_SERVE_PORT)."),
    models: Optional[List[str]] = typer.Option(None, "--model", help="Only this model (repeatable; default: every "
                                                                       "model of the loaded projects)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Run the whole path once for the loaded projects (the bundled examples if none): generate data, run every
    feature pipeline, build every view's training dataset, train and register every model, serve them over HTTP,
    query them, send the predictions' outcomes and monitor the models, shut down."""
    from pipelines.demo import run_demo

    config = context.obj.with_overrides(serve_port=port)
    with stdout_reserved_for_json(as_json):
        result = run_demo(config, rows=rows, seed=seed, epochs=epochs, days=days, models=models)
    if as_json:
        emit(result, as_json=True)


@app.command()
def init(
    folder: str = typer.Argument(..., help="Folder for the new project (created if missing)."),
    package: Optional[str] = typer.Option(None, "--package", help="Python package name (default: from the folder name)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a small new project (a CSV feature group, a view, a model, a data generator) that runs end to end."""
    from pipelines.init import init_project, next_steps

    result = init_project(Path(folder), package)
    emit(result, as_json=as_json, human=next_steps)


@app.command()
def check(context: typer.Context, as_json: bool = JSON_OPTION) -> None:
    """Validate the loaded projects' definitions and say what a run of each would change; exit 2 on a problem."""
    from orchard.storage import Storage
    from pipelines.check import CheckFailed
    from pipelines.check import check as check_projects

    plan = check_projects(Storage(context.obj.storage))
    emit(plan.to_dict(), as_json=as_json, human=lambda _: plan.human())
    if plan.problems:
        raise typer.Exit(code=CheckFailed.exit_code)


@app.command()
def generate(
    context: typer.Context,
    domain: str = typer.Argument(..., help="A data generator of the loaded projects (the examples: fruit, surf, hotel)."),
    rows: Optional[int] = typer.Option(None, "--rows", "--count", min=1,
                                       help="Records (or files: images) to generate (default: the generator's)."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    out: str = typer.Option(None, "--out", help="Landing folder relative to the storage root (default: the domain's)."),
    bad_fraction: float = typer.Option(0.0, "--bad-fraction", min=0.0, max=1.0,
                                       help="Share of records to damage, plus one corrupt file when above 0."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Write a new day of synthetic raw data into a project's landing area (a project's data generator)."""
    from features.catalog import generators
    from orchard.storage import Storage

    known = generators()
    if domain not in known:
        raise typer.BadParameter(f"unknown data generator {domain!r}; the loaded projects have "
                                 f"{', '.join(known) or 'none'}", param_hint="DOMAIN")
    generator = known[domain]
    kwargs = {"location": out} if out else {}
    generated = generator.write(Storage(context.obj.storage), rows=rows or generator.default_rows, seed=seed,
                                bad_fraction=bad_fraction, databases=context.obj.databases, **kwargs)
    document = {"domain": domain, "location": generated.location, "files": list(generated.files),
                "rows": generated.rows, "bad_records": generated.bad_records}

    def human(doc: dict) -> str:  # a day of photos is hundreds of files: the JSON lists them, the summary counts
        files = doc["files"]
        shown = ", ".join(files[:3]) + (f", ... ({len(files)} files)" if len(files) > 3 else "")
        return (f"{doc['domain']}: {doc['rows']} records ({doc['bad_records']} bad) in {doc['location']}\n"
                f"files: {shown}")

    emit(document, as_json=as_json, human=human)


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
                     "from": s.label if s.format in ("sql", "kafka") else f"{s.location}/{s.pattern}"}
                    for s in definition.sources],
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


@features_app.command("materialize")
def features_materialize(
    context: typer.Context,
    groups: List[str] = typer.Argument(None, help="Online feature groups as name[:version] (default: every online "
                                                  "group)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Bring online groups' latest rows per key from the offline tables into the online store (only what changed
    since the last materialization). Env: ORCHARD_ONLINE_STORE (redis://...; default an SQLite file in storage)."""
    from features.catalog import all_groups, get_group
    from features.materialize import materialize
    from features.store import OfflineStore
    from orchard.runtime import ray_session
    from orchard.storage import Storage

    config = context.obj
    chosen = [get_group(ref) for ref in groups] if groups else [g for g in all_groups() if g.online]
    if not chosen:
        raise typer.BadParameter("no feature group is online; set online=True on the groups to serve by key",
                                 param_hint="GROUP")
    if not groups:  # every online group that has a table yet
        chosen = [g for g in chosen if OfflineStore(Storage(config.storage)).exists(g)]
        if not chosen:
            raise typer.BadParameter("no online feature group has an offline table yet; run their feature "
                                     "pipelines first", param_hint="GROUP")
    with stdout_reserved_for_json(as_json), ray_session(config, quiet=as_json):
        reports = [materialize(Storage(config.storage), group, config.online_store).to_dict() for group in chosen]
    emit(reports, as_json=as_json, human=lambda rows: "\n".join(
        f"{r['group']}: table version {r['table_version']} in {r['store']}: {r['files_read']} new files, "
        f"{r['rows_read']} rows read, {r['keys']} keys ({r['seconds']:.1f} s)" for r in rows))


@features_app.command("get")
def features_get(
    context: typer.Context,
    view: str = typer.Argument(..., help="Feature view as name[:version]."),
    keys: List[str] = typer.Argument(..., help="The entity's columns as column=value (say beach_id=b-01)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Look up one entity's feature vector in the online store, as the prediction service does."""
    from features.catalog import get_view
    from features.online import EntityError, open_online_store
    from features.vectors import online_vectors
    from orchard.storage import Storage

    entity = {}
    for item in keys:
        column, sep, value = item.partition("=")
        if not sep or not column:
            raise typer.BadParameter(f"{item!r} is not column=value", param_hint="KEYS")
        entity[column] = value
    config = context.obj
    definition = get_view(view)
    store = open_online_store(config.online_store, Storage(config.storage))
    try:
        vectors = online_vectors(definition, [entity], store)
    except EntityError as error:
        raise typer.BadParameter(str(error), param_hint="KEYS") from None
    finally:
        store.close()
    result = {"entity": entity, **vectors.document(definition)}
    emit(result, as_json=as_json, human=lambda r: "\n".join(
        [*(f"{name:28} {value}" for name, value in r["features"].items()),
         *(f"{ref:28} {used['status']} (event time {used['event_time']})" for ref, used in r["groups"].items())]))


@datasets_app.command("create")
def datasets_create(
    context: typer.Context,
    view: str = typer.Argument(..., help="Feature view as name[:version]."),
    split: str = typer.Option(None, "--split", help="'random:0.7,0.15,0.15' (default) or 'time:VALIDATION_FROM,TEST_FROM'."),
    seed: int = typer.Option(0, "--seed", help="Seed of the random split."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Join a feature view point-in-time, split it, fit its transformations, store it as a new version."""
    from pipelines.datasets import run

    try:
        with stdout_reserved_for_json(as_json):
            metadata = run(context.obj, view, split, seed, quiet=as_json)
    except (OrchardError, ValueError) as error:
        raise typer.BadParameter(str(error), param_hint="VIEW or --split") from None
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
    from features.datasets import TrainingDataset
    from orchard.storage import Storage

    try:
        dataset = TrainingDataset.open(Storage(context.obj.storage), get_view(view), version)
    except OrchardError as error:
        raise typer.BadParameter(str(error), param_hint="VIEW") from None
    emit(dataset.metadata, as_json=as_json)


@app.command()
def predict(
    context: typer.Context,
    model: str = typer.Argument(..., help="Model as name, name:version or name@alias (default: production)."),
    source: str = typer.Option(..., "--input", help="A feature group, or a Parquet or CSV path (entity columns and a "
                                                   "time, or raw rows with the model's inputs)."),
    time_column: Optional[str] = typer.Option(None, "--time-column", help="The input's time column."),
    at: Optional[str] = typer.Option(None, "--at", help="One time for every row (ISO, UTC unless it says)."),
    workers: int = typer.Option(1, "--workers", min=1, help="Most actors predicting at once."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Batch inference: predict a table with a model version, features joined point-in-time at each row's time;
    appends to the Delta table predictions/batch/MODEL (a re-run with the same arguments adds nothing)."""
    from pipelines.batch_inference import describe, run

    with stdout_reserved_for_json(as_json):
        report = run(context.obj, model, source, time_column=time_column, at=at, workers=workers, quiet=as_json)
    emit(report, as_json=as_json, human=describe)


@app.command()
def train(
    context: typer.Context,
    models: List[str] = typer.Argument(..., help="Model(s) of the loaded projects to train (`orchard check` lists them)."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="VIEW[:VERSION]: the training dataset (default: newest)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=train_job.WORKERS_HELP),
    gpu: bool = typer.Option(False, "--gpu", help=train_job.GPU_HELP),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs of a network (default: its spec's)."),
    force: bool = typer.Option(False, "--force", help="Register even a model that does not beat its baseline."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Point this alias (e.g. production) at the new version."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Train models on their views' training datasets, evaluate on the test split, register those beating baseline."""
    train_job.run_command(context.obj, models, as_json=as_json, dataset=dataset, workers=workers, gpu=gpu,
                          epochs=epochs, force=force, alias=alias)


@app.command()
def monitor(
    context: typer.Context,
    model: str = typer.Argument(..., help="The registered model to monitor."),
    window: str = typer.Option("1d", "--window", help=monitor_job.WINDOW_HELP),
    since: Optional[str] = typer.Option(None, "--since", help="Only predictions from this time (ISO)."),
    until: Optional[str] = typer.Option(None, "--until", help="Only predictions before this time (ISO)."),
    horizon: str = typer.Option("7d", "--horizon", help=monitor_job.HORIZON_HELP),
    threshold: Optional[List[str]] = typer.Option(None, "--threshold", help=monitor_job.THRESHOLD_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Monitor a model: its logged predictions joined with their outcomes (performance per window) and drift of
    every input and of the predictions against the version's training split; writes a JSON and HTML report with
    plots and Prometheus gauges under monitoring/MODEL/."""
    with stdout_reserved_for_json(as_json):
        report = monitor_job.run(context.obj, model, quiet=as_json, window=window, since=since, until=until,
                                 horizon=horizon, thresholds=threshold)
    emit(report, as_json=as_json, human=monitor_job.describe)


@app.command()
def retrain(
    context: typer.Context,
    model: str = typer.Argument(..., help="The model whose retraining loop to step."),
    force: bool = typer.Option(False, "--force", help=retrain_job.FORCE_HELP),
    challenger: Optional[int] = typer.Option(None, "--challenger", min=1, help=retrain_job.CHALLENGER_HELP),
    follow: bool = typer.Option(False, "--follow", help=retrain_job.FOLLOW_HELP),
    interval: str = typer.Option("5m", "--interval", help=retrain_job.INTERVAL_HELP),
    as_json: bool = JSON_OPTION,
) -> None:
    """Continuous training: judge a challenger's rollout (promote or roll back), or, when the model's retraining
    policy fires, train a challenger on a new training dataset and gate it against production."""
    retrain_job.command(context.obj, model, force=force, challenger=challenger, follow_=follow, interval=interval,
                        as_json=as_json)


@app.command()
def outcomes(
    context: typer.Context,
    model: str = typer.Argument(..., help="The registered model the outcomes belong to."),
    path: str = typer.Argument(..., help="A JSON Lines, JSON or CSV file of outcomes (request_id and index, or "
                                         "entity columns and time; and outcome)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Record what really happened for earlier predictions, checked against the model's classes or target."""
    from monitoring.outcomes import check_outcomes, read_outcome_file, store_outcomes
    from orchard.registry import ModelRegistry
    from orchard.storage import Storage

    storage = Storage(context.obj.storage)
    card = ModelRegistry(storage).get(model).card
    try:
        data = Path(path).read_bytes()
    except OSError as error:
        raise typer.BadParameter(f"cannot read {path}: {error.strerror}", param_hint="PATH") from None
    checked = check_outcomes(card["signature"], read_outcome_file(data, path))
    stored = store_outcomes(storage, model, checked)
    emit({"model": model, "outcomes": len(checked), "stored": stored}, as_json=as_json,
         human=lambda r: f"{r['outcomes']} outcome(s) of {r['model']} stored in {r['stored']}")


def _registry(context: typer.Context):
    from orchard.registry import ModelRegistry
    from orchard.storage import Storage

    return ModelRegistry(Storage(context.obj.storage))


def _registry_call(function, hint: str = "MODEL"):
    """Run a registry operation; its RegistryError becomes a usage error naming the problem."""
    from orchard.registry import RegistryError

    try:
        return function()
    except RegistryError as error:
        raise typer.BadParameter(str(error), param_hint=hint) from None


@models_app.command("list")
def models_list(
    context: typer.Context,
    model: Optional[str] = typer.Argument(None, help="Show this model's versions with their aliases and test metrics."),
    as_json: bool = JSON_OPTION,
) -> None:
    """List registered models with their versions and aliases, or one model's versions in detail."""
    registry = _registry(context)
    if model:
        rows = [vars(v) for v in _registry_call(lambda: registry.list_versions(model))]
        emit(rows, as_json=as_json, human=lambda rs: "\n".join(
            f"{model}:{r['version']:<4} {r['created_at'][:19]}  {','.join(r['aliases']) or '-':20} "
            + " ".join(f"{k}={v:.4g}" for k, v in sorted(r["test_metrics"].items())) for r in rs))
        return
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
    name, _, reference = model.partition(":")
    card = _registry_call(lambda: _registry(context).get(name, reference or None).card)
    emit(card, as_json=as_json)


@models_app.command("history")
def models_history(
    context: typer.Context,
    model: str = typer.Argument(..., help="The model's name."),
    as_json: bool = JSON_OPTION,
) -> None:
    """A model's alias changes and continuous-training steps, oldest first, each with its reason; and the
    challenger rollout in progress, if any."""
    registry = _registry(context)
    history = _registry_call(lambda: {"model": model, "aliases": registry.aliases(model),
                                      "alias_history": registry.alias_history(model),
                                      "retraining": registry.events(model), "rollout": registry.rollout(model)})
    if not registry.versions(model):
        raise typer.BadParameter(f"no model named {model!r} is registered", param_hint="MODEL")

    def human(h: dict) -> str:
        lines = [f"{h['model']}: aliases {h['aliases']}"]
        lines += [f"  {e['time'][:19]}  {e['alias']}: {e['from']} -> {e['to']}"
                  + (f"  ({e['reason']})" if e.get("reason") else "") for e in h["alias_history"]]
        lines += [f"  {e['time'][:19]}  {e['event']}: " + (e.get("reason") or "; ".join(e.get("reasons", [])) or
                                                             f"version {e.get('version')}") for e in h["retraining"]]
        if h["rollout"]:
            lines.append(f"  rollout in progress: {h['rollout']['mode']} of version {h['rollout']['challenger']}")
        return "\n".join(lines)

    emit(history, as_json=as_json, human=human)


@models_app.command("promote")
def models_promote(
    context: typer.Context,
    model: str = typer.Argument(..., help="Model name."),
    version: str = typer.Argument(..., help="Version number (or an alias whose version to take)."),
    alias: str = typer.Option("production", "--alias", help="Alias to point at the version (production, staging, ...)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Point an alias at a version; rolling back is promoting an older version."""
    registry = _registry(context)
    target = _registry_call(lambda: registry.resolve(model, version))
    previous = _registry_call(lambda: registry.promote(model, target, alias), "--alias")
    result = {"model": model, "alias": alias, "version": target, "previous": previous}
    emit(result, as_json=as_json, human=lambda r: f"{r['model']}@{r['alias']}: {r['previous']} -> {r['version']}")


@models_app.command("best")
def models_best(
    context: typer.Context,
    model: str = typer.Argument(..., help="Model name."),
    metric: str = typer.Option(..., "--metric", help="Test metric to rank by: accuracy, macro_f1, r2, mae, rmse, ..."),
    higher_is_better: Optional[bool] = typer.Option(
        None, "--higher-is-better/--lower-is-better", help="Direction, for a metric Orchard does not know."),
    alias: Optional[str] = typer.Option(None, "--promote", help="Also point this alias at the best version."),
    as_json: bool = JSON_OPTION,
) -> None:
    """The version with the best test metric (the newest of tied ones)."""
    registry = _registry(context)
    best = _registry_call(lambda: registry.best(model, metric, higher_is_better=higher_is_better), "--metric")
    result = {"model": model, "version": best.version, "metric": metric, "value": best.test_metrics[metric]}
    if alias:
        result["previous"] = _registry_call(lambda: registry.promote(model, best.version, alias), "--promote")
        result["alias"] = alias
    emit(result, as_json=as_json, human=lambda r: f"{r['model']}:{r['version']} has the best {r['metric']} "
         f"({r['value']:.4g})" + (f"; {r['alias']} now points at it" if alias else ""))


@app.command()
def clean(
    context: typer.Context,
    older_than: float = typer.Option(24.0, "--older-than", min=0.0,
                                     help="Hours with nothing written after which a staging folder is abandoned."),
    force: bool = typer.Option(False, "--force", help="Allow --older-than under 1 hour: only when no registration "
                                                      "or dataset creation is running (theirs would be removed)."),
    as_json: bool = JSON_OPTION,
) -> None:
    """Remove the staging folders that writers killed mid-way left behind (model registrations, training
    datasets). Published versions are never touched; each registration and dataset also tidies its own folder of
    ones older than a day."""
    from orchard.storage import STAGING_PREFIX, Storage

    if older_than < 1 and not force:
        raise typer.BadParameter(f"{older_than:g} h would also remove the folders of writers at work now; give "
                                 "--force if none is running", param_hint="--older-than")

    storage = Storage(context.obj.storage)
    folders = [f"models/{model}" for model in storage.list_dir("models")]
    folders += [f"datasets/{view}/{version}" for view in storage.list_dir("datasets")
                for version in storage.list_dir(f"datasets/{view}")]
    removed = [f"{folder}/{name}" for folder in folders
               for name in storage.remove_stale_folders(folder, STAGING_PREFIX, older_than * 3600)]
    emit({"removed": removed}, as_json=as_json,
         human=lambda r: "\n".join(f"removed {path}" for path in r["removed"]) or "no abandoned staging folder")


@app.command("api-key")
def api_key_command() -> None:
    """Print a new random API key (256 bits) for a keys file: `orchard api-key >> keys` (see `serve --api-keys-file`).
    Keep the file out of version control, readable by its owner only."""
    from serve.auth import new_key

    print(new_key())


@app.command("serve")
def serve_command(
    context: typer.Context,
    port: int = typer.Option(None, "--port", help="HTTP port (default 8000, env ORCHARD_SERVE_PORT)."),
    host: str = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    replicas: int = typer.Option(None, "--replicas", min=1, help="A fixed number of replicas (default 1)."),
    min_replicas: int = typer.Option(None, "--min-replicas", min=0,
                                     help="Autoscale from this many replicas (0: none while idle, the first request "
                                          "after waits for one to start)."),
    max_replicas: int = typer.Option(None, "--max-replicas", min=1, help="Autoscale up to this many replicas."),
    idle_s: float = typer.Option(None, "--scale-to-zero-after", min=1,
                                 help="Seconds without requests before the last replica goes (with --min-replicas 0; "
                                      "default 120)."),
    proxy_location: str = typer.Option(None, "--proxy-location",
                                       help="EveryNode (Serve's default) or HeadOnly: where Serve's HTTP proxy runs."),
    api_keys_file: Optional[Path] = typer.Option(None, "--api-keys-file",
                                       help="A file of API keys, one per line (env ORCHARD_API_KEYS_FILE): every "
                                            "request but the health probes then needs one (`orchard api-key`)."),
    require_api_key: bool = typer.Option(False, "--require-api-key",
                                         help="Refuse to serve without API keys (env ORCHARD_REQUIRE_API_KEY=1)."),
) -> None:
    """Serve every registered model over HTTP until interrupted (Ctrl-C)."""

    from orchard.runtime import ray_session
    from serve.app import deploy, replica_urls, stop_serving
    from serve.auth import ApiKeys

    config = context.obj.with_overrides(serve_port=port, serve_host=host)
    keys_file = str(api_keys_file.resolve()) if api_keys_file else None
    keys = ApiKeys.from_settings(keys_file, require_api_key or None)  # replicas check again; a mistake shows here
    access = {"api_keys_file": keys_file} if keys_file else {}
    if require_api_key:
        access["require_api_key"] = True
    stop = threading.Event()
    with ray_session(config, quiet=True):
        # After Ray starts: its core worker installs a handler of its own that dumps a stack trace and exits.
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            url = deploy(config, proxy_location=proxy_location,
                         **serving_scale(replicas, min_replicas, max_replicas, idle_s), **access)
            print(f"serving models from {config.storage} at {url} (docs at {url}/docs); Ctrl-C stops", flush=True)
            if keys.enabled:
                print("every request but the health probes needs an API key (Authorization: Bearer KEY)", flush=True)
            direct = replica_urls(wait_s=30)
            if direct:
                print(f"replicas answering directly (faster, no proxy hop): {', '.join(direct)}", flush=True)
            else:
                print("no replica answers on a port of its own (Ray runs without Serve's direct ingress); "
                      "the address above serves everything", flush=True)
            stop.wait()
        except KeyboardInterrupt:
            pass
        finally:
            stop_serving()


def serving_scale(replicas: int | None, min_replicas: int | None, max_replicas: int | None,
                  idle_s: float | None) -> dict:
    """build_app's arguments for `orchard serve`'s replica options: a fixed number, or an autoscaling range."""
    if replicas is not None and (min_replicas is not None or max_replicas is not None):
        raise UsageError("--replicas fixes the number of replicas; --min-replicas/--max-replicas autoscale: "
                         "give one or the other")
    if idle_s is not None and min_replicas != 0:
        raise UsageError("--scale-to-zero-after applies with --min-replicas 0")
    if min_replicas is None and max_replicas is None:
        return {} if replicas is None else {"num_replicas": replicas}
    low = 1 if min_replicas is None else min_replicas
    high = max_replicas if max_replicas is not None else max(8, low)
    if low > high:
        raise UsageError(f"--min-replicas {low} is above --max-replicas {high}")
    autoscaling = {"min_replicas": low, "max_replicas": high}
    if idle_s is not None:
        autoscaling["downscale_to_zero_delay_s"] = idle_s
    return {"autoscaling": autoscaling}


def main() -> None:
    from orchard.runtime import prepare_driver_environment

    prepare_driver_environment()
    try:
        app()
    except OrchardError as error:  # each error type carries its exit code (orchard.errors)
        print(f"error: {error}", file=sys.stderr)
        sys.exit(error.exit_code)


if __name__ == "__main__":
    main()
