"""Model flavors: one plug-in interface for every library a model can be written in.

A flavor knows, for its library, how to train a model on a prepared training
dataset (and evaluate it on the test split as mergeable sums), what file the
model is stored in, how to load that file *without pickle*, how to predict a
batch, and the model's platform name in the Open Inference Protocol. Training,
the predictor and the Serve app only call this interface; nothing else in the
engine checks which library a model uses.

Two flavors come with Orchard: `SklearnFlavor` (any scikit-learn compatible
estimator or pipeline, stored with skops) and `KerasFlavor` (a tf-keras network
from a build function, trained on Ray Train, stored as `.keras`). A project can
add its own: subclass `Flavor`, fill in its methods and decorate the class with
`register_flavor`. A registered version names its flavor in its card, and the
predictor finds the class again by that name (loading the active projects when
it is not one of the built-in ones).

In signatures here, `spec` is a `training.spec.ModelSpec` (which depends on this module, not the other way round).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from orchard.errors import UsageError

if TYPE_CHECKING:
    from orchard.storage import Storage
    from training.model_data import PreparedData


class FlavorError(UsageError):
    """A flavor is defined or asked for inconsistently."""


@dataclass(frozen=True)
class TrainOptions:
    """Per-run options of `orchard train`; a flavor refuses the ones that do not apply to it."""

    workers: int | None = None
    gpu: bool = False
    epochs: int | None = None


@dataclass
class TrainedModel:
    """What a flavor's training run hands back to be registered."""

    artifact: bytes
    """The model file's bytes (stored as the flavor's `artifact` file)."""
    sums: dict
    """Test-split evaluation sums (`training.evaluation.partials`, merged)."""
    hyperparameters: dict
    learning_curve: dict
    learning_curve_png: bytes | None = None
    card: dict = field(default_factory=dict)
    """Further entries for the model card (a grid search's candidates, say)."""
    lineage: dict = field(default_factory=dict)
    """Further lineage (a Ray Train run, the workers' environment)."""


class Flavor:
    """The interface every flavor fills in. Instances are the per-model configuration (frozen dataclasses)."""

    name: ClassVar[str] = ""
    """Stored in every version's card: how a loaded version finds its flavor."""
    artifact: ClassVar[str] = ""
    """File name of the stored model inside a registered version."""
    v2_platform: ClassVar[str] = ""
    """The `platform` of the Open Inference Protocol's model metadata."""
    batch_requests: ClassVar[bool] = False
    """Serving groups concurrent requests into one predict call (worth it where a call costs more than a row)."""
    library_packages: ClassVar[tuple[str, ...]] = ()
    """Distributions whose versions the lineage records, besides Ray, NumPy, pyarrow and scikit-learn."""

    # -- definition time

    def check_spec(self, spec: Any) -> None:
        """Refuse a model definition this flavor cannot train (called by ModelSpec)."""

    def describe(self) -> dict:
        """The flavor's configuration as plain data, for the card's lineage."""
        return {}

    def verify(self) -> None:
        """Check what definition time cannot: that the code the flavor names imports and accepts its parameters."""

    def check_options(self, spec: Any, options: TrainOptions) -> None:
        """Refuse per-run options that do not apply (before anything runs)."""
        if options.gpu or options.epochs is not None:
            raise FlavorError(f"model {spec.name} is a {self.name} model: --gpu and --epochs apply to networks only")

    # -- training

    def train(self, storage: "Storage", spec: Any, data: "PreparedData", options: TrainOptions) -> TrainedModel:
        raise NotImplementedError

    def load_config(self) -> dict:
        """What `load` needs besides the file (stored in the card as `flavor_config`)."""
        return {}

    # -- serving: class methods, since a loaded version has its card, not its spec

    @classmethod
    def load(cls, artifact: bytes, config: dict) -> Any:
        """The model from its stored bytes, without unpickling anything."""
        raise NotImplementedError

    @classmethod
    def predict(cls, model: Any, features: np.ndarray, signature: dict) -> np.ndarray:
        """Class probabilities (rows x the signature's `classes`, in order) for a classifier, values (rows) for a
        regressor, from a float matrix of the model's input columns (`signature["model_inputs"]`)."""
        raise NotImplementedError


_FLAVORS: dict[str, type[Flavor]] = {}


def register_flavor(kind: type[Flavor]) -> type[Flavor]:
    """Class decorator: make a Flavor subclass findable by its `name` when a registered version is loaded."""
    if not (isinstance(kind, type) and issubclass(kind, Flavor)) or kind is Flavor:
        raise TypeError(f"register_flavor takes a subclass of Flavor, got {kind!r}")
    for attribute in ("name", "artifact", "v2_platform"):
        if not getattr(kind, attribute):
            raise TypeError(f"flavor {kind.__qualname__} must set the class attribute {attribute!r}")
    known = _FLAVORS.get(kind.name)
    if known is not None and (known.__module__, known.__qualname__) != (kind.__module__, kind.__qualname__):
        raise FlavorError(f"two flavors named {kind.name!r}: {known.__module__}.{known.__qualname__} and "
                          f"{kind.__module__}.{kind.__qualname__}")
    _FLAVORS[kind.name] = kind
    return kind


def flavor_class(name: str) -> type[Flavor]:
    """The flavor registered under `name`; a project's own flavor is found by loading the active projects."""
    if name not in _FLAVORS:
        from orchard.projects import active_modules

        active_modules()
    if name not in _FLAVORS:
        raise FlavorError(f"no model flavor named {name!r}; known: {', '.join(sorted(_FLAVORS))} "
                          "(a project's own flavor must be registered with @register_flavor in a loaded project)")
    return _FLAVORS[name]


# The built-in flavors register themselves; their libraries are imported only when a model is trained or loaded.
from training.flavors.keras import KerasFlavor, NetworkInputs, dense_network  # noqa: E402
from training.flavors.sklearn import SklearnFlavor  # noqa: E402

__all__ = ["Flavor", "FlavorError", "KerasFlavor", "NetworkInputs", "SklearnFlavor", "TrainOptions", "TrainedModel",
           "dense_network", "flavor_class", "register_flavor"]
