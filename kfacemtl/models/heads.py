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
    The task's description travels in the layer config, and so does a classification head's ``temperature``
    (temperature scaling, :func:`kfacemtl.analysis.calibration.calibrate`): outside training its probabilities are
    ``softmax(z / temperature)`` of its logits ``z`` (1: as trained).

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> age = get_task("age")
        >>> out = TaskOutput(age)(keras.ops.zeros((1, 4)))     # a zero input gives the centre of the age scale
        >>> tuple(out.shape), float(out[0, 0]) == age.output_affine[0]
        ((1, 1), True)
    """

    def __init__(self, task: dict | Task, temperature: float = 1.0, **kwargs):
        task = task if isinstance(task, Task) else Task.from_config(task)
        activation = {"classification": "softmax", "multilabel": "sigmoid", "regression": "linear"}[task.kind]
        kwargs.pop("units", None)
        kwargs.setdefault("activation", activation)
        kwargs.setdefault("name", task.name)
        super().__init__(units=task.output_dim, **kwargs)
        self.task, self.temperature = task, 1.0
        self.set_temperature(temperature)

    def set_temperature(self, temperature: float):
        """Set the temperature of a classification head (1: as trained); a model's outputs follow once its
        functions are traced again (:meth:`~kfacemtl.models.MultiTaskModel.set_temperatures` sees to that).

        Example:
            >>> from kfacemtl.tasks import get_task
            >>> head = TaskOutput(get_task("gender"))
            >>> head.set_temperature(1.5); head.temperature
            1.5
        """
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < 1e30:
            raise ValueError(f"temperature: expected a positive number; got {temperature!r}")
        if temperature != 1.0 and self.task.kind != "classification":
            raise ValueError(f"temperature: only classification heads are scaled; {self.task.name} is {self.task.kind}")
        self.temperature = float(temperature)

    def call(self, inputs, training=None):
        out = super().call(inputs)
        if self.task.kind == "regression":
            center, scale = self.task.output_affine
            out = center + scale * out
        elif self.temperature != 1.0 and not training:  # softmax(log p / T) = softmax(z / T)
            out = keras.ops.softmax(keras.ops.log(keras.ops.maximum(out, 1e-30)) / self.temperature, axis=-1)
        return out

    def get_config(self):
        config = super().get_config()
        config.pop("units", None)
        config["task"] = self.task.to_config()
        if self.temperature != 1.0:
            config["temperature"] = self.temperature
        return config
