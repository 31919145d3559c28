"""Training: model definitions and flavors, evaluation, the predictor, training runs and their registration.

What a project uses to define its models is exported here:

    from training import ModelSpec, SklearnFlavor, KerasFlavor, NetworkInputs, RetrainPolicy, dense_network
"""

from training.flavors import (
                              Flavor,
                              KerasFlavor,
                              NetworkInputs,
                              SklearnFlavor,
                              TrainedModel,
                              TrainOptions,
                              dense_network,
                              register_flavor,
)
from training.policy import RetrainPolicy
from training.spec import ModelSpec

__all__ = ["Flavor", "KerasFlavor", "ModelSpec", "NetworkInputs", "RetrainPolicy", "SklearnFlavor", "TrainOptions",
           "TrainedModel", "dense_network", "register_flavor"]
