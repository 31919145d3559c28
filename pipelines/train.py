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
from orchard.output import emit, stdout_reserved_for_json
from orchard.runtime import ray_session

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
    from orchard.dnn import DnnSpec
    from orchard.storage import Storage
    from orchard.training import BelowBaselineError, check_request, check_storage, get_spec, train_model

    storage = Storage(config.storage)
    check_storage(storage)
    # --gpu and --epochs apply to the networks among the models (to every model when none is a network, so that
    # asking them of a decision tree alone is refused by check_request).
    networks = [name for name in models if isinstance(get_spec(name), DnnSpec)]
    options = {}
    for name in models:
        applies = name in networks or not networks
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
            except Exception as error:  # noqa: BLE001 - one model's failure is reported; the others still train
                log.exception("training %s failed", name)
                results.append({"model": name, "registered": False, "error": f"{type(error).__name__}: {error}"})
    return results


def run_command(config: OrchardConfig, models: list[str], *, as_json: bool, **options) -> None:
    """What `orchard train` and this module's command do: train, print, exit 1 if a model was not registered."""
    from features.datasets import DatasetError
    from orchard.model_data import ModelDataError
    from orchard.registry import RegistryError
    from orchard.training import TrainingError

    try:
        with stdout_reserved_for_json(as_json):
            results = run(config, models, quiet=as_json, **options)
    except (KeyError, DatasetError, ModelDataError, RegistryError, TrainingError) as error:
        raise typer.BadParameter(str(error).strip('"')) from None
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
    storage: Optional[str] = typer.Option(None, "--storage", help="Storage root URI (default: $ORCHARD_STORAGE or ./orchard-data)."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="Join this Ray cluster instead of starting a local one."),
    as_json: bool = typer.Option(False, "--json", help="Print the result as one JSON document (a list for several models)."),
) -> None:
    """Train models and register the ones that beat their baselines."""
    config = OrchardConfig.from_sources(storage=storage, ray_address=ray_address)
    run_command(config, models, as_json=as_json, dataset=dataset, workers=workers, gpu=gpu, epochs=epochs,
                force=force, alias=alias)


if __name__ == "__main__":
    typer.run(main)
