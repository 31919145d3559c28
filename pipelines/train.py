"""Training job: train models on their feature views' training datasets, evaluate, register.

    python -m pipelines.train fruit_classifier [surf_dnn_regressor ...] [--dataset VIEW[:VERSION]]
        [--workers N] [--gpu] [--epochs E] [--force] [--alias production] [--json]

On a cluster: ``ray job submit --working-dir . -- python -m pipelines.train ...``
(the job's driver joins the cluster it was submitted to).
"""

from __future__ import annotations

import logging
import sys
from typing import List, Optional

import typer

from orchard.config import OrchardConfig
from orchard.errors import OrchardError
from orchard.output import emit, stdout_reserved_for_json
from orchard.runtime import ray_session
from pipelines import options

log = logging.getLogger(__name__)

WORKERS_HELP = ("Ray Train workers of a network (default 1); for a scikit-learn model, the most grid-search "
                "tasks run at once (default: all).")
GPU_HELP = "Give each Ray Train worker one GPU (networks only; the cluster must have GPU nodes)."


def run(config: OrchardConfig, models: list[str], *, dataset: str | None = None, workers: int | None = None,
        gpu: bool = False, epochs: int | None = None, force: bool = False, alias: str | None = None,
        quiet: bool = False) -> list[dict]:
    """Train each model in turn, one result per model.

    Bad names and options raise before Ray starts or any model trains. After that
    a model that fails, or does not beat its baseline, is reported in its result
    (`registered: false` and `error`) and the next model still trains.
    """
    # Imported here, not at the top: `orchard --help` imports this module and need not load pyarrow.
    from orchard.storage import Storage
    from training.catalog import get_spec
    from training.flavors import FlavorError, TrainOptions
    from training.trainer import BelowBaselineError, check_request, check_storage, train_model

    storage = Storage(config.storage)
    check_storage(storage)

    def accepts(name: str) -> bool:
        spec = get_spec(name)
        try:
            spec.flavor.check_options(spec, TrainOptions(gpu=gpu, epochs=epochs))
        except FlavorError:
            return False
        return True

    # --gpu and --epochs apply to the models whose flavor takes them (networks); to every model when none does,
    # so that asking them of a decision tree alone is refused by check_request.
    takers = [name for name in models if accepts(name)]
    options = {}
    for name in models:
        applies = name in takers or not takers
        options[name] = {"gpu": gpu, "epochs": epochs} if applies else {"gpu": False, "epochs": None}
        check_request(get_spec(name), dataset=dataset, **options[name])
    results = []
    with ray_session(config, quiet=quiet):
        for name in models:
            try:
                results.append(train_model(storage, name, dataset=dataset, workers=workers, force=force, alias=alias,
                                           **options[name]))
            except BelowBaselineError as refused:
                results.append({**refused.result, "registered": False, "error": str(refused)})
            except OrchardError as error:  # a refusal that says what to change: its message, no traceback
                results.append({"model": name, "registered": False, "error": f"{type(error).__name__}: {error}"})
            except Exception as error:  # noqa: BLE001 - one model's failure is reported; the others still train
                log.exception("training %s failed", name)
                results.append({"model": name, "registered": False, "error": f"{type(error).__name__}: {error}"})
    return results


def run_command(config: OrchardConfig, models: list[str], *, as_json: bool, **options) -> None:
    """What `orchard train` and this module's command do: train, print, exit 1 if a model was not registered."""
    from orchard.errors import UsageError

    try:
        with stdout_reserved_for_json(as_json):
            results = run(config, models, quiet=as_json, **options)
    except UsageError as error:  # a bad name or option, found before anything trained
        raise typer.BadParameter(str(error)) from None
    emit(results[0] if len(results) == 1 else results, as_json=as_json,
         human=lambda _: "\n".join(_human(result) for result in results))
    failed = [r["model"] for r in results if not r["registered"]]
    if failed:
        print(f"not registered: {', '.join(failed)} (see each one's error; --force registers a model below its "
              "baseline)", file=sys.stderr)
        raise typer.Exit(code=1)


def _human(result: dict) -> str:
    if not result["registered"]:
        return f"{result['model']}: NOT registered. {result['error']}"
    alias = f" ({result['alias']})" if result.get("alias") else ""
    return (f"{result['model']} version {result['version']}{alias} on {result['dataset']['view']} dataset "
            f"v{result['dataset']['version']}: {result['summary']} [{result['seconds']:.1f} s]")


def main(
    models: List[str] = typer.Argument(..., help="Model(s) to train, e.g. fruit_classifier surf_dnn_regressor."),
    dataset: Optional[str] = typer.Option(None, "--dataset", help="VIEW[:VERSION]: the training dataset (default: newest)."),
    workers: Optional[int] = typer.Option(None, "--workers", min=1, help=WORKERS_HELP),
    gpu: bool = typer.Option(False, "--gpu", help=GPU_HELP),
    epochs: Optional[int] = typer.Option(None, "--epochs", min=1, help="Epochs of a network (default: its spec's)."),
    force: bool = typer.Option(False, "--force", help="Register even a model that does not beat its baseline."),
    alias: Optional[str] = typer.Option(None, "--alias", help="Point this alias (e.g. production) at the new version."),
    storage: Optional[str] = options.STORAGE,
    ray_address: Optional[str] = options.RAY_ADDRESS,
    projects: Optional[List[str]] = options.PROJECT,
    verbose: bool = options.VERBOSE,
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON document (a list for several models)."),
) -> None:
    """Train models and register the ones that beat their baselines."""
    config = options.load_config(storage=storage, ray_address=ray_address, projects=projects, verbose=verbose)
    run_command(config, models, as_json=as_json, dataset=dataset, workers=workers, gpu=gpu, epochs=epochs,
                force=force, alias=alias)


if __name__ == "__main__":
    typer.run(main)
