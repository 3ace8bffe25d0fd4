"""``dwa``: dynamic weight average (Liu, Johns & Davison 2019).

Example:
    >>> from kfacemtl.training.weighting.base import WEIGHTINGS
    >>> WEIGHTINGS[DWAWeighting.name] is DWAWeighting
    True
"""
from __future__ import annotations


import keras
import numpy as np
from keras import ops

from kfacemtl.training.weighting.base import TaskWeighting, register_weighting


@register_weighting
class DWAWeighting(TaskWeighting):
    """Liu, Johns & Davison (2019): ``w_t = T·softmax(r_t / τ)``, ``r_t = L_t(e-1) / L_t(e-2)``.

    Example:
        >>> w = DWAWeighting(["a", "b"], temperature=2.0)
        >>> w.on_epoch_end(0, {"a": 1.0, "b": 1.0}); w.on_epoch_end(1, {"a": 0.5, "b": 1.0})
        >>> [round(float(v), 3) for v in w.current.numpy()]   # b fell slower: more weight
        [0.876, 1.124]
    """

    name = "dwa"

    def __init__(self, task_names, temperature: float = 2.0):
        super().__init__(task_names)
        if not float(temperature) > 0:
            raise ValueError(f"temperature: expected > 0, got {temperature!r}")
        self.temperature = float(temperature)
        self.current = keras.Variable(np.ones(len(self.task_names), "float32"), trainable=False, name="dwa_weights")
        self.history: list[np.ndarray] = []

    def combine(self, losses, present, features):
        weights = ops.cast(present, "float32") * self.current
        return ops.sum(weights * losses), weights, None

    def on_epoch_end(self, epoch, task_losses):
        self.history = (self.history + [np.array([float(task_losses.get(t, np.nan)) for t in self.task_names])])[-2:]
        if len(self.history) == 2:
            ratio = self.history[1] / np.maximum(self.history[0], 1e-12)
            ratio = np.where(np.isfinite(ratio), ratio, 1.0)
            z = np.exp((ratio - ratio.max()) / self.temperature)
            self.current.assign((len(z) * z / z.sum()).astype("float32"))

    def get_state(self):
        return {"current": self.current.numpy(), "history": np.array(self.history)}

    def set_state(self, state):
        if "current" in state and state["current"].shape == (len(self.task_names),):
            self.current.assign(state["current"])
            self.history = list(state.get("history", []))
