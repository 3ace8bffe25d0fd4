"""``uncertainty``: learned log variances (Kendall, Gal & Cipolla 2018).

Example:
    >>> from kfacemtl.training.weighting.base import WEIGHTINGS
    >>> WEIGHTINGS[UncertaintyWeighting.name] is UncertaintyWeighting
    True
"""
from __future__ import annotations


import keras
import numpy as np
from keras import ops

from kfacemtl.training.weighting.base import TaskWeighting, register_weighting


@register_weighting
class UncertaintyWeighting(TaskWeighting):
    """Kendall, Gal & Cipolla (2018): ``Σ exp(-s_t)·L_t + s_t`` with learned ``s_t`` (log variance).

    Example:
        >>> tuple(UncertaintyWeighting(["age", "gender"]).variables[0].shape)
        (2,)
    """

    name = "uncertainty"

    def __init__(self, task_names, learning_rate: float = 1e-3):
        super().__init__(task_names)
        self.learning_rate = float(learning_rate)
        self.log_vars = keras.Variable(np.zeros(len(self.task_names), "float32"), name="log_variances")
        self.variables = [self.log_vars]

    def make_optimizer(self):
        return keras.optimizers.Adam(self.learning_rate)

    def combine(self, losses, present, features):
        present = ops.cast(present, "float32")
        weights = present * ops.exp(-self.log_vars)
        total = ops.sum(weights * losses + present * self.log_vars)
        return total, weights, total
