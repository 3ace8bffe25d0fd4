"""Task weighting: how the per-task losses become the one loss the network trains on.

Every strategy is one small class behind :class:`TaskWeighting`, chosen by name
(``training.weighting`` in a config, ``compile_model(weighting=...)`` in Python):

- ``equal``: every task weight 1 (the default; Keras's own loss sum).
- ``static``: the weights you give (``{"expression": 2.0}``; 1 for the others).
- ``uncertainty`` (Kendall, Gal & Cipolla 2018): a learned log-variance ``s_t`` per task;
  the loss is ``Σ exp(-s_t)·L_t + s_t``, so noisy tasks are down-weighted.
- ``dwa`` (Liu, Johns & Davison 2019, dynamic weight average): ``w_t = T·softmax(r_t / τ)``
  with ``r_t`` the ratio of the task's last two epoch losses: a task whose loss falls
  slowly gets more weight (1 each for the first two epochs).
- ``dynamic`` (Ming et al. 2019, arXiv 1911.03281, as in their public code): a weight unit
  ``w = softmax(l2_normalize(Dense_T(l2_normalize(shared features))))``, averaged over the
  batch. The network trains on ``Σ w_t·L_t`` with ``w`` held constant; the weight unit alone
  trains on ``Σ w_t / (L_t + 0.01)`` with its own optimizer (10× the network's default learning
  rate, as theirs), so harder tasks (larger loss) get more weight. Normalising the unit's
  logits bounds the weights: ``Σ w_t / L_t`` is minimised by giving everything to the largest
  loss, and without the bound that is what happens (on real faces, expression took 3.95 of 4
  within two epochs). Weights are scaled to sum to the number of tasks present, so ``equal`` is
  1 each; with 4 tasks they stay within about [0.38, 2.06].
- ``gradnorm`` (Chen et al. 2018): learned weights ``w_t`` (summing to the number of tasks)
  trained so that each task's gradient norm on the last shared layer (``embedding_dense``),
  ``G_t = ||∇ w_t·L_t||``, approaches ``mean(G)·r_t^α``, where ``r_t`` is the task's loss
  relative to its first batch, over the mean of those ratios: tasks that train slower get
  larger gradients.

Masked losses: a task with no labelled row in the batch has loss exactly 0 (see
:mod:`kfacemtl.losses`); it gets weight 0 and its parameters get no gradient.

Example:
    >>> w = make_weighting("static", ["age", "expression"], weights={"expression": 2.0})
    >>> import numpy as np
    >>> total, weights, aux = w.combine(np.array([1.0, 0.5], "float32"), np.array([1.0, 1.0], "float32"), None)
    >>> float(total), [float(v) for v in weights]
    (2.0, [1.0, 2.0])
"""

from __future__ import annotations

from typing import Mapping, Sequence

import keras
import numpy as np
from keras import ops

from kfacemtl.errors import ConfigError, check_choice


def _l2_normalize(x):
    return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=-1, keepdims=True)), 1e-12)


class TaskWeighting:
    """The interface: ``combine(losses, present, features) -> (total, weights, aux_loss)``.

    ``losses`` and ``present`` are ``(T,)`` tensors in task order (present: 1 when the batch
    labels the task); ``features`` is the shared embedding ``(batch, D)``; strategies with
    :attr:`needs_gradient_norms` also get ``grad_norms`` ``(T,)``. ``total`` is what the
    network's gradient follows; ``aux_loss`` (or None) is what the strategy's own
    :attr:`variables` follow, with :meth:`make_optimizer`. :meth:`on_epoch_end` sees the
    epoch's mean loss per task; :meth:`get_state` / :meth:`set_state` let a run resume.

    Example:
        >>> class Halves(TaskWeighting):                 # a new strategy is one small class
        ...     name = "halves"
        ...     def combine(self, losses, present, features):
        ...         weights = 0.5 * keras.ops.ones_like(losses)
        ...         return keras.ops.sum(weights * losses * present), weights, None
        >>> total, weights, _ = Halves(["age", "gender"]).combine(keras.ops.convert_to_tensor([2.0, 4.0]),
        ...                                                       keras.ops.convert_to_tensor([1.0, 1.0]), None)
        >>> float(total)
        3.0
    """

    name = ""
    #: True when :meth:`combine` needs ``grad_norms``: the norm of each task loss's gradient on the
    #: last shared layer (the train step computes them).
    needs_gradient_norms = False

    def __init__(self, task_names: Sequence[str]):
        self.task_names = list(task_names)
        self.variables: list = []

    def build(self, feature_dim: int):
        """Create variables once the shared feature width is known."""

    def combine(self, losses, present, features):
        raise NotImplementedError

    def make_optimizer(self):
        """The optimizer of :attr:`variables` (when there are any)."""
        return keras.optimizers.Adam(1e-3)

    def on_epoch_end(self, epoch: int, task_losses: Mapping[str, float]):
        """Called with the epoch's mean loss of each task."""

    def get_state(self) -> dict:
        return {f"v{i}": np.asarray(v.numpy()) for i, v in enumerate(self.variables)}

    def set_state(self, state: Mapping):
        for i, v in enumerate(self.variables):
            if f"v{i}" in state and tuple(state[f"v{i}"].shape) == tuple(v.shape):
                v.assign(state[f"v{i}"])

    def describe(self) -> dict:
        return {"name": self.name}


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
            raise ConfigError(f"training.weighting_options.weights.{sorted(unknown)[0]}",
                              f"not a task of the model {self.task_names}")
        self.fixed = np.array([float(weights.get(t, 1.0)) for t in self.task_names], "float32")

    def combine(self, losses, present, features):
        weights = ops.cast(present, "float32") * self.fixed
        return ops.sum(weights * losses), weights, None


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
            raise ConfigError("training.weighting_options.temperature", f"expected > 0, got {temperature!r}")
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

    def build(self, feature_dim):
        if self.unit is None:
            self.unit = keras.layers.Dense(len(self.task_names), name="task_weight_unit")
            self.unit.build((None, int(feature_dim)))
            self.variables = list(self.unit.trainable_variables)

    def make_optimizer(self):
        return keras.optimizers.Adam(self.learning_rate)

    def combine(self, losses, present, features):
        present = ops.cast(present, "float32")
        features = ops.stop_gradient(features)
        logits = self.unit(_l2_normalize(features)) * present  # absent tasks take no part in the normalisation
        logits = _l2_normalize(logits) + (present - 1.0) * 1e9  # bounded logits; absent tasks: no weight
        unit_weights = ops.mean(ops.softmax(logits, axis=-1), axis=0) * present
        scaled = unit_weights * ops.sum(present)  # sums to the number of tasks present
        total = ops.sum(ops.stop_gradient(scaled) * losses)
        aux = ops.sum(unit_weights / (ops.stop_gradient(losses) + self.epsilon) * present)
        return total, scaled, aux


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
            raise ConfigError("training.weighting_options.alpha", f"expected >= 0, got {alpha!r}")
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


WEIGHTINGS = {cls.name: cls for cls in (EqualWeighting, StaticWeighting, UncertaintyWeighting, DWAWeighting,
                                        DynamicWeighting, GradNormWeighting)}


def make_weighting(name: str | TaskWeighting, task_names: Sequence[str], **options) -> TaskWeighting:
    """A weighting strategy by name, with its options.

    Example:
        >>> make_weighting("dwa", ["age", "gender"], temperature=1.0).temperature
        1.0
    """
    if isinstance(name, TaskWeighting):
        return name
    check_choice("training.weighting", name, sorted(WEIGHTINGS))
    try:
        return WEIGHTINGS[name](task_names, **options)
    except TypeError as e:
        raise ConfigError("training.weighting_options", f"not options of {name!r}: {e}") from None
