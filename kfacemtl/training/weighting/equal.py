"""Fixed task weights: ``equal`` (1 each) and ``static`` (given per task).

Example:
    >>> from kfacemtl.training.weighting.base import WEIGHTINGS
    >>> WEIGHTINGS[EqualWeighting.name] is EqualWeighting
    True
"""
from __future__ import annotations

from typing import Mapping

import numpy as np
from keras import ops

from kfacemtl.training.weighting.base import TaskWeighting, register_weighting


@register_weighting
class EqualWeighting(TaskWeighting):
    """Every task weight 1.

    Example:
        >>> EqualWeighting(["age", "gender"]).name
        'equal'
    """

    name = "equal"

    def combine(self, losses, present, features):
        weights = ops.cast(present, "float32")
        return ops.sum(weights * losses), weights, None


@register_weighting
class StaticWeighting(TaskWeighting):
    """Fixed weights per task (1 for tasks not named).

    Example:
        >>> StaticWeighting(["age", "gender"], {"gender": 3.0}).fixed.tolist()
        [1.0, 3.0]
    """

    name = "static"

    def __init__(self, task_names, weights: Mapping[str, float] | None = None):
        super().__init__(task_names)
        weights = dict(weights or {})
        unknown = set(weights) - set(self.task_names)
        if unknown:
            raise ValueError(f"weights.{sorted(unknown)[0]}: not a task of the model {self.task_names}")
        self.fixed = np.array([float(weights.get(t, 1.0)) for t in self.task_names], "float32")

    def combine(self, losses, present, features):
        weights = ops.cast(present, "float32") * self.fixed
        return ops.sum(weights * losses), weights, None
