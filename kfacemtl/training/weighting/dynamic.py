"""``dynamic``: a learned weight unit on the shared features (Ming et al. 2019).

Example:
    >>> from kfacemtl.training.weighting.base import WEIGHTINGS
    >>> WEIGHTINGS[DynamicWeighting.name] is DynamicWeighting
    True
"""
from __future__ import annotations


import keras
from keras import ops

from kfacemtl.training.weighting.base import TaskWeighting, l2_normalize, register_weighting


@register_weighting
class DynamicWeighting(TaskWeighting):
    """Ming et al. (2019): a learned weight unit on the shared features (see the module docstring).

    Args:
        learning_rate: the weight unit's own learning rate.
        epsilon: ``L_t + epsilon`` in the weight unit's loss.

    Example:
        >>> w = DynamicWeighting(["age", "gender"]); w.build(16)
        >>> tuple(w.unit.kernel.shape)
        (16, 2)
    """

    name = "dynamic"

    def __init__(self, task_names, learning_rate: float = 1e-2, epsilon: float = 0.01):
        super().__init__(task_names)
        self.learning_rate, self.epsilon = float(learning_rate), float(epsilon)
        self.unit = None

    needs_features = True

    def create_variables(self, feature_dim):
        if self.unit is None:
            self.unit = keras.layers.Dense(len(self.task_names), name="task_weight_unit")
            self.unit.build((None, int(feature_dim)))
            self.variables = list(self.unit.trainable_variables)

    def make_optimizer(self):
        return keras.optimizers.Adam(self.learning_rate)

    def combine(self, losses, present, features):
        present = ops.cast(present, "float32")
        features = ops.stop_gradient(features)
        logits = self.unit(l2_normalize(features)) * present  # absent tasks take no part in the normalisation
        logits = l2_normalize(logits) + (present - 1.0) * 1e9  # bounded logits; absent tasks: no weight
        unit_weights = ops.mean(ops.softmax(logits, axis=-1), axis=0) * present
        scaled = unit_weights * ops.sum(present)  # sums to the number of tasks present
        total = ops.sum(ops.stop_gradient(scaled) * losses)
        aux = ops.sum(unit_weights / (ops.stop_gradient(losses) + self.epsilon) * present)
        return total, scaled, aux
