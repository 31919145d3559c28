"""Training small tf-keras networks on a feature view's training dataset with Ray Train.

`train_dnn` opens the view's training dataset, turns its transformed train and
validation splits into two Ray Data pipelines (a float32 feature matrix and a
target per row) and hands them to a `TensorflowTrainer`. The rows stream to the
workers through `ray.train.get_dataset_shard`; only statistics reach the driver
(row counts, and the feature means and variances the network standardizes with).

Each worker builds the network inside a `MultiWorkerMirroredStrategy` scope and
trains one epoch at a time. After every epoch it reports the epoch's metrics
together with a checkpoint (the model in Keras' native `.keras` format plus a
small JSON state), because in Ray Train V2 only metrics reported with a
checkpoint reach `Result`. A restarted worker group (after a worker failure,
up to `max_failures` times) loads the latest checkpoint from
`ray.train.get_checkpoint()` and continues with the next epoch; every report
carries `epoch` and `resumed_from` (the epoch whose checkpoint this attempt
started from, 0 for a fresh start) so the history shows where it resumed.

The network standardizes its own input with the training split's per-feature
mean and variance (a Normalization layer saved inside the model): the view's
transforms leave some features unscaled (surf's compass bearings, 0 to 360),
and unscaled inputs make a small network's first epochs diverge.

Rows with a null in a feature or in the target are dropped, not imputed, and
counted per split in the result (`dropped_rows`): a null means the point-in-time
join found no fresh enough row (e.g. no buoy reading within the TTL), and a
made-up 0.0 would teach the network a swell that never happened.

`TF_USE_LEGACY_KERAS=1` must be set before TensorFlow is first imported:
Keras 3 fails inside Ray Train's MultiWorkerMirroredStrategy, tf-keras works.
The workers and the Train controller get it from the runtime env
(`OrchardConfig.runtime_env`); `train_dnn` sets it in the driver before
importing `ray.train.tensorflow`, which imports TensorFlow itself.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable, Literal

from orchard.model_data import FEATURES_COLUMN, TARGET_COLUMN, ModelDataError, PreparedData, prepare_splits
from orchard.runtime import prepare_driver_environment
from orchard.storage import Storage

if TYPE_CHECKING:
    import ray.data
    import ray.train

log = logging.getLogger(__name__)

Task = Literal["classification", "regression"]
TASKS = ("classification", "regression")
RUNS_LOCATION = "train_runs"
MODEL_FILE = "model.keras"
STATE_FILE = "state.json"
DESCRIPTION_FILE = "dnn.json"
_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")


class DnnError(ModelDataError):
    """A network cannot be described or trained as asked."""


@dataclass(frozen=True)
class DnnSpec:
    """A feed-forward network on one feature view: ReLU hidden layers, then softmax or one linear unit."""

    name: str
    view: str
    """Feature view reference (`fruit_classification` or `fruit_classification:1`)."""
    task: Task
    hidden_units: tuple[int, ...] = (32, 16)
    epochs: int = 10
    batch_size: int = 32
    learning_rate: float = 0.01
    target: str | None = None
    """Target column; None takes the view's label target."""
    excluded_features: tuple[str, ...] = ()
    """View features the network does not take (identifiers that are neither numbers nor transformed)."""
    seed: int = 0
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise DnnError(f"network name {self.name!r} must be lower case letters, digits, '_' or '-'")
        if not isinstance(self.view, str) or not self.view:
            raise DnnError(f"network {self.name}: view must name a feature view, got {self.view!r}")
        if self.task not in TASKS:
            raise DnnError(f"network {self.name}: task must be one of {', '.join(TASKS)}, got {self.task!r}")
        units = tuple(self.hidden_units) if isinstance(self.hidden_units, (list, tuple)) else None
        if not units or not all(_positive_int(u) for u in units):
            raise DnnError(f"network {self.name}: hidden_units must be a non-empty list of positive integers, "
                           f"got {self.hidden_units!r}")
        object.__setattr__(self, "hidden_units", units)
        for field_name in ("epochs", "batch_size"):
            if not _positive_int(getattr(self, field_name)):
                raise DnnError(f"network {self.name}: {field_name} must be a positive integer, "
                               f"got {getattr(self, field_name)!r}")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf"):
            raise DnnError(f"network {self.name}: learning_rate must be a positive number, got {rate!r}")


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


DNN_SPECS: dict[str, DnnSpec] = {
    spec.name: spec
    for spec in (
        DnnSpec(
            name="fruit_dnn_classifier",
            view="fruit_classification",
            task="classification",
            description="Apple or orange from colour, size, weight and skin: softmax over the label encoder's classes.",
        ),
        DnnSpec(
            name="surf_dnn_regressor",
            view="surf_height",
            task="regression",
            target="surf_height_m",
            excluded_features=("buoy_id",),  # a join key the view brings along, not a measurement
            description="Surf height in metres from the beach's shape and the latest swell at its buoy.",
        ),
    )
}


def get_dnn_spec(name: str) -> DnnSpec:
    if name not in DNN_SPECS:
        raise KeyError(f"no network named {name!r}; known networks: {', '.join(sorted(DNN_SPECS))}")
    return DNN_SPECS[name]


def scaling_config(workers: int, gpu: bool) -> "ray.train.ScalingConfig":
    """`workers` training workers with one CPU each, and one GPU each when `gpu`."""
    from ray.train import ScalingConfig

    if not _positive_int(workers):
        raise DnnError(f"workers must be a positive integer, got {workers!r}")
    resources = {"CPU": 1, "GPU": 1} if gpu else {"CPU": 1}
    return ScalingConfig(num_workers=workers, use_gpu=bool(gpu), resources_per_worker=resources)


# -- the training loop, run by every Ray Train worker


def build_model(config: dict):
    """The network, compiled; call inside the distribution strategy's scope."""
    import tf_keras

    layers = [tf_keras.Input(shape=(config["n_features"],), name=FEATURES_COLUMN),
              tf_keras.layers.Normalization(mean=config["feature_mean"], variance=config["feature_variance"],
                                            name="standardize")]
    layers += [tf_keras.layers.Dense(units, activation="relu") for units in config["hidden_units"]]
    if config["task"] == "classification":
        layers.append(tf_keras.layers.Dense(len(config["classes"]), activation="softmax", name="probabilities"))
        loss, metric = "sparse_categorical_crossentropy", "accuracy"
    else:
        layers.append(tf_keras.layers.Dense(1, name=config["target"]))
        loss, metric = "mean_squared_error", "mae"
    model = tf_keras.Sequential(layers)
    model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=config["learning_rate"]), loss=loss,
                  metrics=[metric])
    return model


def _tf_dataset(shard, config: dict):
    """The worker's shard as (features, target) batches; Ray Data's `to_tf` already turns TF's auto-sharding off."""
    import tensorflow as tf

    target_type = tf.int64 if config["task"] == "classification" else tf.float32
    # Explicit type specs spare `to_tf` a pass over the data to infer the schema.
    return shard.to_tf(feature_columns=FEATURES_COLUMN, label_columns=TARGET_COLUMN, batch_size=config["batch_size"],
                       feature_type_spec=tf.TensorSpec((None, config["n_features"]), tf.float32),
                       label_type_spec=tf.TensorSpec((None,), target_type))


def train_loop_per_worker(config: dict) -> None:
    """Train epoch by epoch from the latest checkpoint (if any), reporting metrics with a checkpoint each epoch."""
    prepare_driver_environment()  # the legacy-Keras switch; normally set by the runtime env already
    import tensorflow as tf
    import tf_keras

    import ray.train

    tf_keras.utils.set_random_seed(config["seed"])
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    checkpoint = ray.train.get_checkpoint()
    with strategy.scope():
        if checkpoint is None:
            model, completed = build_model(config), 0
        else:
            with checkpoint.as_directory() as folder:
                model = tf_keras.models.load_model(os.path.join(folder, MODEL_FILE))
                with open(os.path.join(folder, STATE_FILE)) as handle:
                    completed = json.load(handle)["epoch"]
            log.info("resuming %s after epoch %d from %s", config["name"], completed, checkpoint.path)

    train = _tf_dataset(ray.train.get_dataset_shard("train"), config)
    validation = _tf_dataset(ray.train.get_dataset_shard("validation"), config)
    context = ray.train.get_context()
    is_chief = context.get_world_rank() == 0
    environment = {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "ray": ray.__version__,
                   "gpus_visible": len(tf.config.list_physical_devices("GPU")), "world_size": context.get_world_size()}
    after_epoch: Callable[[int], None] | None = config.get("after_epoch")
    for epoch in range(completed + 1, config["epochs"] + 1):
        epoch_started = time.perf_counter()
        fitted = model.fit(train, validation_data=validation, epochs=epoch, initial_epoch=epoch - 1, verbose=0)
        metrics = {name: float(values[-1]) for name, values in fitted.history.items()}
        metrics.update(epoch=epoch, resumed_from=completed, world_size=environment["world_size"],
                       fit_seconds=round(time.perf_counter() - epoch_started, 3))
        with tempfile.TemporaryDirectory(prefix="orchard-dnn-") as folder:
            # Every worker saves (MultiWorkerMirroredStrategy expects all of them to), only rank 0's copy is
            # reported. The explicit format matters: tf-keras keeps its "native format on" switch per thread and
            # leaves it off after a first save in a non-main thread (Ray Train runs this loop in one), so later
            # saves to "model.keras" would silently write HDF5.
            model.save(os.path.join(folder, MODEL_FILE), save_format="keras_v3")
            with open(os.path.join(folder, STATE_FILE), "w") as handle:
                json.dump({"epoch": epoch, "metrics": metrics, "environment": environment}, handle)
            with open(os.path.join(folder, DESCRIPTION_FILE), "w") as handle:
                json.dump(config["description"], handle, indent=2)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(folder) if is_chief else None,
                             checkpoint_dir_name=f"epoch_{epoch:04d}")
        if after_epoch is not None:
            after_epoch(epoch)


# -- the driver side


def train_dnn(
    storage: Storage,
    spec: DnnSpec,
    *,
    workers: int = 1,
    gpu: bool = False,
    epochs: int | None = None,
    dataset_version: int | None = None,
    max_failures: int = 2,
    run_name: str | None = None,
    after_epoch: Callable[[int], None] | None = None,
    data: PreparedData | None = None,
) -> dict:
    """Train `spec` on its view's training dataset (the latest unless `dataset_version`) with Ray Train.

    The run lives under `<storage>/train_runs/<run_name>`; a `run_name` that
    already holds checkpoints continues from its latest one. `after_epoch(epoch)`
    runs in every worker after each epoch's report (a hook for progress or fault
    injection). `data` reuses splits already prepared for `spec`. Returns the
    final metrics, the per-epoch history, the last checkpoint's path, its model's
    bytes, what the workers ran (TensorFlow, Ray, GPUs) and the epoch count; the
    model is not registered.
    """
    from orchard.runtime import prepare_driver_environment

    prepare_driver_environment()  # before ray.train.tensorflow, which imports TensorFlow
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.tensorflow import TensorflowTrainer

    epochs = spec.epochs if epochs is None else epochs
    if not _positive_int(epochs):
        raise DnnError(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < -1:
        raise DnnError(f"max_failures must be -1 (retry forever) or a non-negative integer, got {max_failures!r}")
    started = time.perf_counter()
    data = data or prepare_splits(storage, spec, dataset_version)
    inputs, train_summary = data.inputs, data.summaries["train"]
    if any(data.dropped_rows.values()):
        log.warning("network %s: dropped rows with null features or target: %s", spec.name, data.dropped_rows)
    metadata = data.dataset.metadata

    description = {
        "spec": asdict(spec),
        "feature_columns": inputs.feature_columns,
        "target": inputs.target,
        "classes": inputs.classes,
        "dataset": {"view": metadata["view"], "version": metadata["version"], "location": data.dataset.location},
    }
    config = {
        "name": spec.name,
        "task": spec.task,
        "target": inputs.target,
        "classes": inputs.classes,
        "n_features": len(inputs.feature_columns),
        "feature_mean": train_summary["mean"],
        "feature_variance": train_summary["variance"],
        "hidden_units": list(spec.hidden_units),
        "learning_rate": spec.learning_rate,
        "batch_size": spec.batch_size,
        "epochs": epochs,
        "seed": spec.seed,
        "description": description,
        "after_epoch": after_epoch,
    }
    run_name = run_name or f"{spec.name}-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"
    trainer = TensorflowTrainer(
        train_loop_per_worker=train_loop_per_worker,
        train_loop_config=config,
        scaling_config=scaling_config(workers, gpu),
        datasets={split: data.splits[split] for split in ("train", "validation")},
        run_config=RunConfig(
            name=run_name,
            storage_path=storage.uri(RUNS_LOCATION),
            failure_config=FailureConfig(max_failures=max_failures),
            # Every epoch's checkpoint is kept (a few KB for these networks): it holds that epoch's metrics.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    result = trainer.fit()
    history = sorted((dict(metrics) for _, metrics in result.best_checkpoints or []), key=lambda m: m["epoch"])
    if result.checkpoint is None or not history:
        raise DnnError(f"network {spec.name}: run {run_name} finished without a checkpoint")
    with result.checkpoint.as_directory() as folder:
        with open(os.path.join(folder, MODEL_FILE), "rb") as handle:
            model_bytes = handle.read()
        with open(os.path.join(folder, STATE_FILE)) as handle:
            worker_environment = json.load(handle).get("environment", {})
    return {
        "name": spec.name,
        "run_name": run_name,
        "run_path": result.path,
        "checkpoint": result.checkpoint.path,
        "model_bytes": model_bytes,
        "worker_environment": worker_environment,
        "epochs": int(result.metrics["epoch"]),
        "metrics": dict(result.metrics),
        "history": history,
        "rows": data.rows,
        "dropped_rows": data.dropped_rows,
        **{key: description[key] for key in ("feature_columns", "target", "classes", "dataset")},
        "seconds": round(time.perf_counter() - started, 3),
    }
