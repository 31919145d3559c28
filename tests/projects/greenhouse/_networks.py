"""A Keras architecture of the project's own: residual blocks with a registered custom layer.

The leading underscore keeps this module out of the project's eager import (so commands that never touch a
network need no TensorFlow); the model names its build function by dotted path, and Orchard imports this module
when it builds or loads the network.
"""

from __future__ import annotations

import tf_keras


@tf_keras.saving.register_keras_serializable(package="greenhouse")
class ScaledResidual(tf_keras.layers.Layer):
    """x + scale * Dense(relu(Dense(x))): a residual block whose branch starts small."""

    def __init__(self, units: int, scale: float = 0.5, **kwargs):
        super().__init__(**kwargs)
        self.units, self.scale = units, scale
        self.inner = tf_keras.layers.Dense(units, activation="relu")
        self.outer = tf_keras.layers.Dense(units)

    def call(self, inputs):
        return inputs + self.scale * self.outer(self.inner(inputs))

    def get_config(self):
        return {**super().get_config(), "units": self.units, "scale": self.scale}


def residual_network(inputs, width: int = 16, blocks: int = 2):
    """Standardized inputs, a projection to `width`, `blocks` residual blocks, the task's output layer."""
    features = inputs.input_layer()
    hidden = tf_keras.layers.Dense(width, activation="relu")(inputs.standardize()(features))
    for _ in range(blocks):
        hidden = ScaledResidual(width)(hidden)
    return inputs.compile(tf_keras.Model(features, inputs.output_layer()(hidden)))
