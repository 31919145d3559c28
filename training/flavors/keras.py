"""The tf-keras flavor: a network from a build function, trained with Ray Train, stored as `.keras`.

A `KerasFlavor` names a build function: it takes the model's `NetworkInputs`
(feature count, task, classes, the training split's per-feature mean and
variance, learning rate) and the flavor's `params`, and returns a compiled
tf-keras model, so a project can write any architecture. `dense_network`, a
stack of ReLU layers, is the default. Custom layers must be registered with
`tf_keras.saving.register_keras_serializable` in a project module, so that
safe-mode loading finds them again (no Python lambdas are deserialized).

`train_network` opens the view's training dataset, turns its transformed train and
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
(`OrchardConfig.runtime_env`); `train_network` sets it in the driver before
importing `ray.train.tensorflow`, which imports TensorFlow itself.
"""

from __future__ import annotations

import importlib
import inspect
import json
import logging
import math
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from orchard.errors import StateError
from orchard.runtime import prepare_driver_environment, quiet_native_stderr
from orchard.storage import Storage
from training import evaluation, plots
from training.flavors import Flavor, FlavorError, TrainedModel, TrainOptions, register_flavor
from training.model_data import FEATURES_COLUMN, TARGET_COLUMN, PreparedData, prepare_splits

if TYPE_CHECKING:
    import ray.data
    import ray.train

log = logging.getLogger(__name__)

RUNS_LOCATION = "train_runs"
MODEL_FILE = "model.keras"
STATE_FILE = "state.json"
DESCRIPTION_FILE = "dnn.json"


class DnnError(FlavorError):
    """A network cannot be described or trained as asked."""


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


@dataclass(frozen=True)
class NetworkInputs:
    """What a build function gets to know about the data: call `output_layer` and `compile` to finish a network."""

    n_features: int
    feature_columns: tuple[str, ...]
    task: str
    target: str
    classes: tuple[str, ...] | None
    feature_mean: tuple[float, ...]
    feature_variance: tuple[float, ...]
    learning_rate: float
    target_mean: float = 0.0
    target_std: float = 1.0
    """The training split's target mean and standard deviation (regression): the output layer rescales by them."""
    images: tuple[tuple[str, int, tuple[int, int, int]], ...] = ()
    """(column, offset in the input vector, (height, width, channels)) of every image feature: its pixels in
    [0, 1], row-major, at that offset (see `training.model_data.to_model_arrays`)."""

    def input_layer(self):
        import tf_keras

        return tf_keras.Input(shape=(self.n_features,), name=FEATURES_COLUMN)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """(height, width, channels) of a model whose only input is one image."""
        if len(self.images) != 1 or self.n_features != int(np.prod(self.images[0][2])):
            raise DnnError(f"this network takes {[c for c, _, _ in self.images] or 'no'} image(s) among "
                           f"{len(self.feature_columns)} feature column(s); image_shape is for one image alone")
        return tuple(self.images[0][2])

    def as_image(self):
        """A layer that turns the input vector of a one-image model into (height, width, channels) pixels."""
        import tf_keras

        return tf_keras.layers.Reshape(self.image_shape, name="pixels")

    def standardize(self):
        """A layer that standardizes each input with the training split's mean and variance (saved in the model)."""
        import tf_keras

        return tf_keras.layers.Normalization(mean=list(self.feature_mean), variance=list(self.feature_variance),
                                             name="standardize")

    def output_layer(self):
        """Softmax over the classes for a classifier. For a regressor, one linear unit rescaled to the target's
        mean and spread on the training split (so the network learns a standardized target whatever its units)."""
        import tf_keras

        if self.task == "classification":
            return tf_keras.layers.Dense(len(self.classes), activation="softmax", name="probabilities")
        scale = self.target_std if self.target_std > 0 else 1.0
        return tf_keras.Sequential([tf_keras.layers.Dense(1),
                                    tf_keras.layers.Rescaling(scale=scale, offset=self.target_mean)], name=self.target)

    def compile(self, model):
        """Adam at the flavor's learning rate; cross-entropy and accuracy, or mean squared error and MAE."""
        import tf_keras

        classification = self.task == "classification"
        model.compile(optimizer=tf_keras.optimizers.Adam(learning_rate=self.learning_rate),
                      loss="sparse_categorical_crossentropy" if classification else "mean_squared_error",
                      metrics=["accuracy" if classification else "mae"])
        return model


def dense_network(inputs: NetworkInputs, hidden_units: tuple[int, ...] | list[int] = (32, 16)):
    """The default builder: standardized inputs, ReLU hidden layers of `hidden_units`, then the output layer."""
    import tf_keras

    units = _hidden_units(hidden_units)
    layers = [inputs.input_layer(), inputs.standardize()]
    layers += [tf_keras.layers.Dense(count, activation="relu") for count in units]
    layers.append(inputs.output_layer())
    return inputs.compile(tf_keras.Sequential(layers))


def _hidden_units(value: Any) -> tuple[int, ...]:
    units = tuple(value) if isinstance(value, (list, tuple)) else None
    if not units or not all(_positive_int(u) for u in units):
        raise DnnError(f"hidden_units must be a non-empty list of positive integers, got {value!r}")
    return units


def _builder_path(build: Any) -> str:
    if isinstance(build, str):
        return build
    module, name = getattr(build, "__module__", None), getattr(build, "__qualname__", None)
    if not callable(build) or not module or not name or "<" in name:
        raise DnnError(f"build must be a module-level function (or its dotted path), got {build!r}")
    if module == "__main__":
        raise DnnError(f"build function {name} is defined in __main__; define it in a project module so that "
                       "Ray Train workers can import it")
    return f"{module}.{name}"


@register_flavor
@dataclass(frozen=True)
class KerasFlavor(Flavor):
    """A tf-keras network: `build(inputs, **params)` returns it compiled; trained `epochs` epochs with Ray Train."""

    build: Any = dense_network
    """A module-level function (or its dotted path): `build(inputs: NetworkInputs, **params) -> compiled model`."""
    params: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 32
    """Rows per optimizer step on each worker: with N workers one step sees N x batch_size rows."""
    learning_rate: float = 0.01
    shuffle_buffer: int = 2048
    """Training rows each worker shuffles anew every epoch (after the blocks' order is randomized), 0 for none.
    A training dataset is stored in key order: unshuffled, a network sees the rows of one class after another
    (a class per file name prefix, say) and does not learn."""
    learning_rate_schedule: str = "constant"
    """"constant", or "cosine": each epoch's rate falls from `learning_rate` towards zero along half a cosine over
    the run's epochs (set per epoch, so a resumed run continues the same schedule)."""
    keep: str = "last"
    """Which epoch's network is registered: "last", or "best" (the lowest validation loss, as Keras's
    `EarlyStopping(restore_best_weights=True)` would; every epoch's checkpoint is kept anyway)."""

    name = "keras"
    artifact = MODEL_FILE
    v2_platform = "tensorflow_keras"
    batch_requests = True
    library_packages = ("tensorflow", "tensorflow-cpu", "tf-keras")

    def __post_init__(self) -> None:
        _builder_path(self.build)
        if not isinstance(self.params, dict):
            raise DnnError(f"params must be a dict of the build function's arguments, got {self.params!r}")
        if callable(self.build):
            try:
                inspect.signature(self.build).bind(None, **self.params)
            except TypeError as error:
                raise DnnError(f"params {sorted(self.params)} do not fit build function {_builder_path(self.build)}"
                               f"{inspect.signature(self.build)}: {error}") from None
        if self.build is dense_network and "hidden_units" in self.params:
            object.__setattr__(self, "params", {**self.params, "hidden_units": _hidden_units(self.params["hidden_units"])})
        for field_name in ("epochs", "batch_size"):
            if not _positive_int(getattr(self, field_name)):
                raise DnnError(f"{field_name} must be a positive integer, got {getattr(self, field_name)!r}")
        if isinstance(self.shuffle_buffer, bool) or not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 0:
            raise DnnError(f"shuffle_buffer must be a non-negative integer (rows; 0: no shuffling), got "
                           f"{self.shuffle_buffer!r}")
        rate = self.learning_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < float("inf"):
            raise DnnError(f"learning_rate must be a positive number, got {rate!r}")
        if self.learning_rate_schedule not in LEARNING_RATE_SCHEDULES:
            raise DnnError(f"learning_rate_schedule must be one of {sorted(LEARNING_RATE_SCHEDULES)}, got "
                           f"{self.learning_rate_schedule!r}")
        if self.keep not in ("last", "best"):
            raise DnnError(f"keep must be 'last' or 'best' (lowest validation loss), got {self.keep!r}")

    def builder(self) -> Callable[..., Any]:
        if callable(self.build):
            return self.build
        module_name, _, name = self.build.rpartition(".")
        try:
            return getattr(importlib.import_module(module_name), name)
        except (ImportError, AttributeError, ValueError) as error:
            raise DnnError(f"build function {self.build!r} cannot be imported: {error}") from None

    def verify(self) -> None:
        build = self.builder()
        try:
            inspect.signature(build).bind(None, **self.params)
        except TypeError as error:
            raise DnnError(f"params {sorted(self.params)} do not fit build function {_builder_path(build)}: "
                           f"{error}") from None

    def describe(self) -> dict:
        return {"build": _builder_path(self.build), "params": self.params, "epochs": self.epochs,
                "batch_size": self.batch_size, "learning_rate": self.learning_rate,
                "shuffle_buffer": self.shuffle_buffer, "learning_rate_schedule": self.learning_rate_schedule,
                "keep": self.keep}

    def check_options(self, spec, options: TrainOptions) -> None:
        if options.epochs is not None and not _positive_int(options.epochs):
            raise DnnError(f"epochs must be a positive integer, got {options.epochs!r}")

    def train(self, storage: Storage, spec, data: PreparedData, options: TrainOptions) -> TrainedModel:
        self.check_options(spec, options)
        return _train_and_evaluate(storage, spec, data, workers=options.workers or 1, gpu=options.gpu,
                                   epochs=options.epochs)

    def load_config(self) -> dict:
        # The build function's module registers the project's custom layers: imported before a load.
        return {"build_module": _builder_path(self.build).rpartition(".")[0]}

    @classmethod
    def load(cls, artifact: bytes, config: dict) -> Any:
        return load_keras(artifact, config.get("build_module"))

    @classmethod
    def predict(cls, model: Any, features: np.ndarray, signature: dict) -> np.ndarray:
        outputs = model(features.astype(np.float32), training=False).numpy().astype(np.float64)
        if signature["task"] == "regression":
            return outputs.reshape(-1)
        if outputs.shape[1] != len(signature["classes"]):
            raise StateError(f"the network has {outputs.shape[1]} outputs but its signature names "
                             f"{len(signature['classes'])} classes")
        return outputs


def scaling_config(workers: int, gpu: bool) -> "ray.train.ScalingConfig":
    """`workers` training workers with one CPU each, and one GPU each when `gpu`; spread over the cluster's nodes
    where it has several (Ray Train packs them by default), as data-parallel workers that share a node share its
    cores and memory bandwidth."""
    from ray.train import ScalingConfig

    if not _positive_int(workers):
        raise DnnError(f"workers must be a positive integer, got {workers!r}")
    resources = {"CPU": 1, "GPU": 1} if gpu else {"CPU": 1}
    return ScalingConfig(num_workers=workers, use_gpu=bool(gpu), resources_per_worker=resources,
                         placement_strategy="SPREAD")


# -- the training loop, run by every Ray Train worker


def _cosine(rate: float, epoch: int, epochs: int) -> float:
    return rate * 0.5 * (1 + math.cos(math.pi * (epoch - 1) / epochs))


LEARNING_RATE_SCHEDULES: dict[str, Callable[[float, int, int], float]] = {
    "constant": lambda rate, epoch, epochs: rate,
    "cosine": _cosine,
}
"""Each schedule gives epoch `epoch`'s (1-based) learning rate of `epochs` from the flavor's base rate."""


def _set_learning_rate(model, config: dict, epoch: int) -> None:
    schedule = config.get("learning_rate_schedule", "constant")
    if schedule == "constant":
        return
    rate = getattr(model.optimizer, "learning_rate", None)
    if not hasattr(rate, "assign"):
        raise DnnError(f"network {config['name']}: learning_rate_schedule {schedule!r} sets the optimizer's rate "
                       f"each epoch, but the build function compiled it with {type(rate).__name__}; compile with "
                       "a plain number (inputs.compile does) or use the constant schedule")
    rate.assign(LEARNING_RATE_SCHEDULES[schedule](config["inputs"]["learning_rate"], epoch, config["epochs"]))


def build_model(config: dict):
    """The network, compiled, from the flavor's build function; call inside the distribution strategy's scope."""
    inputs = NetworkInputs(**config["inputs"])
    model = config["build"](inputs, **config["params"])
    if not hasattr(model, "fit") or not getattr(model, "optimizer", None):
        raise DnnError(f"network {config['name']}: the build function must return a compiled tf-keras model, "
                       f"got {type(model).__name__}")
    return model


def _tf_dataset(shard, config: dict, shuffle: bool = False, cache: bool = False):
    """The worker's shard as (features, target) batches; Ray Data's `to_tf` already turns TF's auto-sharding off.
    With `shuffle`, the rows pass a shuffle buffer that draws anew every epoch. With `cache`, the first epoch's rows
    stay in TensorFlow's memory and later epochs read them from there instead of from Ray Data again."""
    import tensorflow as tf

    target_type = tf.int64 if config["task"] == "classification" else tf.float32
    buffer = config.get("shuffle_buffer", 0) if shuffle else 0
    batch_size = config["batch_size"]

    def batches(size: int):
        # Explicit type specs spare `to_tf` a pass over the data to infer the schema.
        return shard.to_tf(feature_columns=FEATURES_COLUMN, label_columns=TARGET_COLUMN, batch_size=size,
                           feature_type_spec=tf.TensorSpec((None, config["n_features"]), tf.float32),
                           label_type_spec=tf.TensorSpec((None,), target_type))

    if not buffer:
        return batches(batch_size).cache() if cache else batches(batch_size)
    # Rows come from Ray Data in chunks and are shuffled by TensorFlow (in C++, drawn anew every epoch): Ray Data's
    # own local shuffle buffer (`local_shuffle_buffer_size`) halved the apple network's training speed.
    rows = batches(max(batch_size, 256)).unbatch()
    if cache:  # before the shuffle, so that every epoch still draws its own order
        rows = rows.cache()
    return rows.shuffle(buffer, reshuffle_each_iteration=True).batch(batch_size)


def train_loop_per_worker(config: dict) -> None:
    """Train epoch by epoch from the latest checkpoint (if any), reporting metrics with a checkpoint each epoch."""
    tf, tf_keras = import_tensorflow()  # the legacy-Keras switch is normally set by the runtime env already

    import ray.train

    tf_keras.utils.set_random_seed(config["seed"])
    # One worker needs no collective ops: the default strategy (measured on the apple photos' network, the
    # all-reduce of a one-worker MultiWorkerMirroredStrategy cost a share of every step).
    strategy = tf.distribute.MultiWorkerMirroredStrategy() if ray.train.get_context().get_world_size() > 1 \
        else tf.distribute.get_strategy()
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

    cache = config.get("cache", {})
    train = _tf_dataset(ray.train.get_dataset_shard("train"), config, shuffle=True, cache=cache.get("train", False))
    validation = _tf_dataset(ray.train.get_dataset_shard("validation"), config, cache=cache.get("validation", False))
    context = ray.train.get_context()
    is_chief = context.get_world_rank() == 0
    environment = {"tensorflow": tf.__version__, "tf_keras": tf_keras.__version__, "ray": ray.__version__,
                   "gpus_visible": len(tf.config.list_physical_devices("GPU")), "world_size": context.get_world_size()}
    after_epoch: Callable[[int], None] | None = config.get("after_epoch")
    for epoch in range(completed + 1, config["epochs"] + 1):
        epoch_started = time.perf_counter()
        _set_learning_rate(model, config, epoch)
        fitted = model.fit(train, validation_data=validation, epochs=epoch, initial_epoch=epoch - 1, verbose=0)
        metrics = {name: float(values[-1]) for name, values in fitted.history.items()}
        rate = model.optimizer.learning_rate
        metrics.update(epoch=epoch, resumed_from=completed, world_size=environment["world_size"],
                       learning_rate=float(rate.numpy()) if hasattr(rate, "numpy") else None,
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


def _check_room_for_ingest(workers: int) -> None:
    """Refuse, on a local Ray this process started, a worker group that takes every CPU: Ray Data then has none
    left to read and stream the training data to the workers, and the run waits forever. (A cluster may still
    grow, so there it is a warning.)"""
    import ray

    from orchard.runtime import owns_local_ray

    cpus = ray.cluster_resources().get("CPU", 0)
    if workers < cpus:
        return
    message = (f"{workers} training worker(s) of 1 CPU each take all {cpus:g} CPUs of this Ray cluster and leave "
               "none for Ray Data to stream the training data to them")
    if owns_local_ray():
        raise DnnError(f"{message}; train with at most {max(int(cpus) - 1, 1)} worker(s) here, or give the local "
                       "Ray more (logical) CPUs with --num-cpus")
    log.warning("%s; the run waits until the cluster has another CPU", message)


def _image_layout(inputs) -> tuple:
    layout, offset = [], 0
    for column in inputs.feature_columns:
        if column in inputs.images:
            layout.append((column, offset, inputs.images[column].shape))
        offset += inputs.width(column)
    return tuple(layout)


def train_network(
    storage: Storage,
    spec,
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
    """Train `spec` (a ModelSpec with a KerasFlavor) on its view's training dataset (the latest unless
    `dataset_version`) with Ray Train.

    The run lives under `<storage>/train_runs/<run_name>`; a `run_name` that
    already holds checkpoints continues from its latest one. `after_epoch(epoch)`
    runs in every worker after each epoch's report (a hook for progress or fault
    injection). `data` reuses splits already prepared for `spec`. Returns the
    final metrics, the per-epoch history, the last checkpoint's path, its model's
    bytes, what the workers ran (TensorFlow, Ray, GPUs) and the epoch count; the
    model is not registered.
    """
    import_tensorflow()  # before ray.train.tensorflow, which imports TensorFlow
    from ray.data.dataset import MaterializedDataset
    from ray.train import CheckpointConfig, FailureConfig, RunConfig
    from ray.train.tensorflow import TensorflowTrainer

    flavor: KerasFlavor = spec.flavor
    if not isinstance(flavor, KerasFlavor):
        raise DnnError(f"model {spec.name} is a {flavor.name} model, not a network")
    epochs = flavor.epochs if epochs is None else epochs
    if not _positive_int(epochs):
        raise DnnError(f"epochs must be a positive integer, got {epochs!r}")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < -1:
        raise DnnError(f"max_failures must be -1 (retry forever) or a non-negative integer, got {max_failures!r}")
    _check_room_for_ingest(workers)
    started = time.perf_counter()
    data = data or prepare_splits(storage, spec, dataset_version)
    inputs, train_summary = data.inputs, data.summaries["train"]
    if any(data.dropped_rows.values()):
        log.warning("network %s: dropped rows with null features or target: %s", spec.name, data.dropped_rows)
    metadata = data.dataset.metadata

    description = {
        "spec": spec.describe(),
        "feature_columns": inputs.feature_columns,
        "target": inputs.target,
        "classes": inputs.classes,
        "dataset": {"view": metadata["view"], "version": metadata["version"], "location": data.dataset.location},
    }
    config = {
        "name": spec.name,
        "task": spec.task,
        "n_features": inputs.n_features,
        "inputs": {"n_features": inputs.n_features, "feature_columns": tuple(inputs.feature_columns),
                   "images": _image_layout(inputs),
                   "task": spec.task, "target": inputs.target,
                   "classes": tuple(inputs.classes) if inputs.classes is not None else None,
                   "feature_mean": tuple(train_summary["mean"]), "feature_variance": tuple(train_summary["variance"]),
                   "learning_rate": flavor.learning_rate,
                   **({"target_mean": float(train_summary["target_mean"]), "target_std": float(train_summary["target_std"])}
                      if spec.task == "regression" else {})},
        "build": flavor.builder(),
        "params": dict(flavor.params),
        "batch_size": flavor.batch_size,
        "shuffle_buffer": flavor.shuffle_buffer,
        # Splits the driver keeps in the object store are small: a worker keeps its rows after the first epoch
        # (measured on the apple photos' network: see bench/README.md). Training rows only where the shuffle
        # buffer holds them all, so that every epoch is still a whole new order.
        "cache": {"validation": isinstance(data.splits["validation"], MaterializedDataset),
                  "train": isinstance(data.splits["train"], MaterializedDataset)
                  and (not flavor.shuffle_buffer or data.rows["train"] <= flavor.shuffle_buffer)},
        "learning_rate_schedule": flavor.learning_rate_schedule,
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
        # Each epoch reads the training blocks in a new random order (and each worker shuffles its rows).
        datasets={"train": data.splits["train"].randomize_block_order() if flavor.shuffle_buffer
                  else data.splits["train"], "validation": data.splits["validation"]},
        run_config=RunConfig(
            name=run_name,
            storage_path=storage.uri(RUNS_LOCATION),
            failure_config=FailureConfig(max_failures=max_failures),
            # Every epoch's checkpoint is kept (a few KB for these networks): it holds that epoch's metrics.
            checkpoint_config=CheckpointConfig(num_to_keep=None),
        ),
    )
    result = trainer.fit()
    checkpoints = sorted(((checkpoint, dict(metrics)) for checkpoint, metrics in result.best_checkpoints or []),
                         key=lambda pair: pair[1]["epoch"])
    history = [metrics for _, metrics in checkpoints]
    if result.checkpoint is None or not history:
        raise DnnError(f"network {spec.name}: run {run_name} finished without a checkpoint")
    chosen, chosen_metrics = _chosen_checkpoint(spec, checkpoints)
    with chosen.as_directory() as folder:
        with open(os.path.join(folder, MODEL_FILE), "rb") as handle:
            model_bytes = handle.read()
        with open(os.path.join(folder, STATE_FILE)) as handle:
            worker_environment = json.load(handle).get("environment", {})
    return {
        "name": spec.name,
        "run_name": run_name,
        "run_path": result.path,
        "checkpoint": chosen.path,
        "checkpoint_filesystem": chosen.filesystem,
        "model_bytes": model_bytes,
        "worker_environment": worker_environment,
        "epochs": int(history[-1]["epoch"]),
        "chosen_epoch": int(chosen_metrics["epoch"]),
        "metrics": chosen_metrics,
        "history": history,
        "rows": data.rows,
        "dropped_rows": data.dropped_rows,
        **{key: description[key] for key in ("feature_columns", "target", "classes", "dataset")},
        "seconds": round(time.perf_counter() - started, 3),
    }


def _chosen_checkpoint(spec, checkpoints: list[tuple[Any, dict]]) -> tuple[Any, dict]:
    """The last epoch's checkpoint, or with `keep="best"` the one with the lowest finite validation loss (the
    earliest of equals)."""
    if spec.flavor.keep == "last":
        return checkpoints[-1]
    scored = [(metrics["val_loss"], metrics["epoch"], index) for index, (_, metrics) in enumerate(checkpoints)
              if isinstance(metrics.get("val_loss"), (int, float)) and math.isfinite(metrics["val_loss"])]
    if not scored:
        log.warning("network %s: no epoch has a finite validation loss; the last epoch's network is kept", spec.name)
        return checkpoints[-1]
    return checkpoints[min(scored)[2]]


# -- evaluation on the test split, and loading without pickle


_loaded_networks: dict[str, Any] = {}

DRIVER_EVALUATION_BYTES = 64 * 1024**2
"""A test split already in the object store and at most this large (features as float32) is evaluated in the
driver, which holds TensorFlow and the network already: Ray Data's tasks would each import TensorFlow first, about
8 s on a new local Ray for the demo's networks, whose test splits take milliseconds to predict."""


def _sums(network, batch: dict[str, np.ndarray], task: str, n_classes: int, train_mean: float | None) -> dict:
    outputs = network(batch[FEATURES_COLUMN], training=False).numpy()
    predicted = outputs.argmax(axis=1) if task == "classification" else outputs.reshape(-1)
    return evaluation.partials(task, batch[TARGET_COLUMN], predicted, n_classes=n_classes, train_mean=train_mean)


def _evaluate_block(batch: dict[str, np.ndarray], filesystem, path: str, build_module: str | None, task: str,
                    n_classes: int, train_mean: float | None) -> dict[str, np.ndarray]:
    """One block of test rows as evaluation sums. The network is read from the run's checkpoint on storage once per
    worker process (a task, not an actor: Ray Data's actors get their code through the object store, which Ray
    warns about on every run)."""
    if path not in _loaded_networks:
        with filesystem.open_input_stream(path) as stream:
            _loaded_networks.clear()
            _loaded_networks[path] = load_keras(stream.readall(), build_module)
    sums = _sums(_loaded_networks[path], batch, task, n_classes, train_mean)
    return {"sums": np.array([json.dumps(sums)])}


def _evaluate(spec, data: PreparedData, trained: dict, gpu: bool) -> dict | None:
    """The evaluation sums of the trained network on the test split: in the driver for a small split already in
    the object store (`DRIVER_EVALUATION_BYTES`), else in Ray Data tasks (on GPUs with `gpu`)."""
    from ray.data.dataset import MaterializedDataset

    test = data.splits["test"]
    task, n_classes = spec.task, len(data.inputs.classes or ())
    train_mean = data.summaries["train"]["target_mean"]
    build_module = spec.flavor.load_config()["build_module"]
    sums = None
    if (not gpu and isinstance(test, MaterializedDataset)
            and data.summaries["test"]["count"] * (data.inputs.n_features * 4 + 8) <= DRIVER_EVALUATION_BYTES):
        network = load_keras(trained["model_bytes"], build_module)
        for batch in test.iter_batches(batch_format="numpy", batch_size=4096):
            sums = evaluation.merge(sums, _sums(network, batch, task, n_classes, train_mean))
        return sums
    parts = test.map_batches(
        _evaluate_block, batch_format="numpy", num_gpus=1 if gpu else 0,
        fn_kwargs={"filesystem": trained["checkpoint_filesystem"], "path": f"{trained['checkpoint']}/{MODEL_FILE}",
                   "build_module": build_module, "task": task, "n_classes": n_classes, "train_mean": train_mean})
    for row in parts.iter_rows():
        sums = evaluation.merge(sums, json.loads(row["sums"]))
    return sums


def _train_and_evaluate(storage: Storage, spec, data: PreparedData, *, workers: int, gpu: bool,
                        epochs: int | None) -> TrainedModel:

    trained = train_network(storage, spec, workers=workers, gpu=gpu, epochs=epochs, data=data)
    sums = _evaluate(spec, data, trained, gpu)
    history = trained["history"]
    curves = {label: [(m["epoch"], m[key]) for m in history if math.isfinite(m[key])]
              for label, key in (("train loss", "loss"), ("validation loss", "val_loss"))}
    curves = {label: points for label, points in curves.items() if points}  # a diverged run has no finite loss
    curve_png = plots.learning_curve_png(
        curves, title=f"{spec.name}: learning curve", x_label="epoch",
        y_label="cross-entropy" if spec.task == "classification" else "mean squared error") if curves else None
    flavor: KerasFlavor = spec.flavor
    # Each worker takes batch_size rows per step, so one optimizer step sees batch_size x workers rows.
    hyperparameters = {"build": _builder_path(flavor.build), **flavor.params, "batch_size": flavor.batch_size,
                       "learning_rate": flavor.learning_rate, "shuffle_buffer": flavor.shuffle_buffer,
                       "learning_rate_schedule": flavor.learning_rate_schedule, "keep": flavor.keep,
                       "seed": spec.seed, "epochs": trained["epochs"], "chosen_epoch": trained["chosen_epoch"],
                       "workers": workers, "gpu": gpu, "global_batch_size": flavor.batch_size * workers}
    return TrainedModel(
        artifact=trained["model_bytes"],
        sums=sums,
        hyperparameters=hyperparameters,
        learning_curve={"x": "epoch", "metric": "loss", "points": history},
        learning_curve_png=curve_png,
        lineage={"train_run": trained["run_path"], "worker_environment": trained["worker_environment"]},
    )


def import_tensorflow():
    """TensorFlow and tf-keras, imported with the legacy-Keras switch set and, unless verbose, without the native
    start-up notices (`orchard.runtime.quiet_native_stderr`); the first device query (CUDA probing) too."""
    prepare_driver_environment()
    with quiet_native_stderr():
        import tensorflow as tf
        import tf_keras

        tf.config.list_physical_devices("GPU")
    return tf, tf_keras


def load_keras(data: bytes, build_module: str | None = None) -> Any:
    """A tf-keras model from the bytes of a native `.keras` file, in safe mode and without its optimizer.

    A project's custom layers register themselves when their module is imported: the active projects are loaded
    first, then the build function's module (which may be one the project keeps out of its eager import).
    """
    _, tf_keras = import_tensorflow()

    from orchard.projects import active_modules

    active_modules()
    if build_module:
        try:
            importlib.import_module(build_module)
        except ImportError as error:
            raise StateError(f"the network's build module {build_module} cannot be imported: {error}") from None
    with tempfile.TemporaryDirectory(prefix="orchard-keras-") as folder:
        path = os.path.join(folder, MODEL_FILE)
        with open(path, "wb") as handle:
            handle.write(data)
        try:
            return tf_keras.models.load_model(path, compile=False, safe_mode=True)
        except (ValueError, OSError, TypeError) as error:
            raise StateError(f"the stored network cannot be loaded: {error}") from None
