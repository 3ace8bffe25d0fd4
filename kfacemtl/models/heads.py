"""A task's output layer: the task's activation and scale, and its description in the layer's config.

Example:
    >>> import keras
    >>> from kfacemtl.tasks import get_task
    >>> tuple(TaskOutput(get_task("gender"))(keras.ops.zeros((1, 4))).shape)
    (1, 2)
"""
from __future__ import annotations

import keras

from kfacemtl.tasks import Task


@keras.saving.register_keras_serializable(package="kfacemtl")
class TaskOutput(keras.layers.Dense):
    """A task's output layer: a Dense layer with the task's activation and scale.

    Classification → softmax probabilities; multilabel → sigmoid probabilities; regression →
    values on the task's own scale (``center + scale · z``, e.g. years for age).
    The task's description travels in the layer config.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> age = get_task("age")
        >>> out = TaskOutput(age)(keras.ops.zeros((1, 4)))     # a zero input gives the centre of the age scale
        >>> tuple(out.shape), float(out[0, 0]) == age.output_affine[0]
        ((1, 1), True)
    """

    def __init__(self, task: dict | Task, **kwargs):
        task = task if isinstance(task, Task) else Task.from_config(task)
        activation = {"classification": "softmax", "multilabel": "sigmoid", "regression": "linear"}[task.kind]
        kwargs.pop("units", None)
        kwargs.setdefault("activation", activation)
        kwargs.setdefault("name", task.name)
        super().__init__(units=task.output_dim, **kwargs)
        self.task = task

    def call(self, inputs):
        out = super().call(inputs)
        if self.task.kind == "regression":
            center, scale = self.task.output_affine
            out = center + scale * out
        return out

    def get_config(self):
        config = super().get_config()
        config.pop("units", None)
        config["task"] = self.task.to_config()
        return config
