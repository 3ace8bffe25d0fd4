"""``gradnorm``: weights that balance the tasks' gradient norms (Chen et al. 2018).

Example:
    >>> from kfacemtl.training.weighting.base import WEIGHTINGS
    >>> WEIGHTINGS[GradNormWeighting.name] is GradNormWeighting
    True
"""
from __future__ import annotations


import keras
import numpy as np
from keras import ops

from kfacemtl.training.weighting.base import TaskWeighting, register_weighting


@register_weighting
class GradNormWeighting(TaskWeighting):
    """Chen et al. (2018), GradNorm: weights that balance the tasks' gradient norms on the last
    shared layer (see the module docstring).

    The network trains on ``Σ w_t·L_t`` with ``w`` held constant; ``w`` alone trains on
    ``Σ_t |G_t - mean(G)·r_t^α|`` (the target held constant) with its own optimizer, and is
    then renormalised to sum to the number of tasks. Tasks absent from a batch take no part.

    Args:
        alpha: how strongly slow tasks are pushed (the paper's α; 0 equalises the gradient norms).
        learning_rate: the weights' own learning rate.

    Example:
        >>> import numpy as np
        >>> w = GradNormWeighting(["age", "gender"])
        >>> ones = np.ones(2, "float32")
        >>> total, weights, aux = w.combine(np.array([2.0, 1.0], "float32"), ones, None,
        ...                                 grad_norms=np.array([3.0, 1.0], "float32"))
        >>> float(total), float(aux)   # G = (3, 1), r = (1, 1): both targets are mean(G) = 2
        (3.0, 2.0)
    """

    name = "gradnorm"
    needs_gradient_norms = True

    def __init__(self, task_names, alpha: float = 1.5, learning_rate: float = 0.025):
        super().__init__(task_names)
        if not float(alpha) >= 0:
            raise ValueError(f"alpha: expected >= 0, got {alpha!r}")
        self.alpha, self.learning_rate = float(alpha), float(learning_rate)
        n = len(self.task_names)
        self.weights = keras.Variable(np.ones(n, "float32"), name="gradnorm_weights")
        # Applied by the optimizer after each update: positive, summing to the number of tasks.
        self.weights.constraint = lambda w: n * ops.maximum(w, 1e-3) / ops.sum(ops.maximum(w, 1e-3))
        self.initial = keras.Variable(np.zeros(n, "float32"), trainable=False, name="gradnorm_initial_losses")
        self.variables = [self.weights]

    def make_optimizer(self):
        return keras.optimizers.Adam(self.learning_rate)

    def combine(self, losses, present, features, grad_norms=None):
        if grad_norms is None:
            raise ValueError("gradnorm needs the gradient norm of each task loss (grad_norms)")
        present = ops.cast(present, "float32")
        seen = ops.stop_gradient(losses) * present
        first = present * ops.cast(ops.equal(self.initial, 0.0), "float32")  # a task's first labelled batch
        self.initial.assign(self.initial + first * seen)
        weights = self.weights * present
        total = ops.sum(ops.stop_gradient(weights) * losses)
        count = ops.maximum(ops.sum(present), 1.0)
        norms = weights * ops.stop_gradient(ops.cast(grad_norms, "float32"))  # G_t = ||∇ w_t·L_t|| = w_t·||∇L_t||
        ratio = present * seen / ops.maximum(self.initial, 1e-12)
        relative = ratio / ops.maximum(ops.sum(ratio) / count, 1e-12)
        target = ops.stop_gradient(ops.sum(norms) / count * relative ** self.alpha)
        aux = ops.sum(present * ops.abs(norms - target))
        return total, weights, aux

    def get_state(self):
        return {"weights": self.weights.numpy(), "initial": self.initial.numpy()}

    def set_state(self, state):
        for key, var in (("weights", self.weights), ("initial", self.initial)):
            if key in state and tuple(state[key].shape) == tuple(var.shape):
                var.assign(state[key])
