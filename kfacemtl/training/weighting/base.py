"""The task-weighting interface, its registry and :func:`make_weighting`.

Example:
    >>> make_weighting("dwa", ["age", "gender"], temperature=1.0).temperature
    1.0
"""
from __future__ import annotations

import inspect
from typing import Mapping, Sequence

import keras
import numpy as np
from keras import ops

from kfacemtl.errors import expect_one_of, under_argument

WEIGHTINGS: dict[str, type] = {}


def register_weighting(cls):
    """Class decorator: make a :class:`TaskWeighting` subclass available by its ``name`` (``training.weighting``).

    Example:
        >>> @register_weighting
        ... class Halves(TaskWeighting):
        ...     name = "halves-example"
        ...     def combine(self, losses, present, features):
        ...         weights = 0.5 * keras.ops.ones_like(losses)
        ...         return keras.ops.sum(weights * losses * present), weights, None
        >>> type(make_weighting("halves-example", ["age"])).__name__
        'Halves'
    """
    if not cls.name or WEIGHTINGS.get(cls.name, cls) is not cls:
        raise ValueError(f"task weighting {cls.name!r} of {cls.__name__}: empty, or registered already")
    WEIGHTINGS[cls.name] = cls
    return cls


def l2_normalize(x):
    """Each row of ``x`` divided by its L2 norm (a zero row stays zero).

    Example:
        >>> np.asarray(l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]]))).tolist()
        [[0.6, 0.8], [0.0, 0.0]]
    """
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
    #: True when :meth:`combine` needs ``features``, the shared embedding of the batch (else it gets None).
    needs_features = False

    def __init__(self, task_names: Sequence[str]):
        self.task_names = list(task_names)
        self.variables: list = []
        self.optimizer = None

    def build(self, feature_dim: int):
        """Create the strategy's variables once the shared feature width is known (:meth:`create_variables`), and
        their optimizer (:meth:`make_optimizer`). The model calls it when the strategy is set."""
        self.create_variables(feature_dim)
        if self.variables and self.optimizer is None:
            self.optimizer = self.make_optimizer()
            self.optimizer.build(self.variables)

    def create_variables(self, feature_dim: int):
        """Create variables that depend on the shared feature width (most strategies make theirs in ``__init__``)."""

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


def make_weighting(name: str | TaskWeighting, task_names: Sequence[str], **options) -> TaskWeighting:
    """A weighting strategy by name, with its options.

    Example:
        >>> make_weighting("dwa", ["age", "gender"], temperature=1.0).temperature
        1.0
        >>> make_weighting("dwa", ["age", "gender"], temperature=0)
        Traceback (most recent call last):
        ...
        ValueError: weighting_options.temperature: expected > 0, got 0
    """
    if isinstance(name, TaskWeighting):
        return name
    expect_one_of("weighting", name, sorted(WEIGHTINGS))
    unknown = set(options) - set(inspect.signature(WEIGHTINGS[name]).parameters)
    if unknown:
        raise ValueError(f"weighting_options: {sorted(unknown)} are not options of {name!r}")
    with under_argument("weighting_options"):
        return WEIGHTINGS[name](task_names, **options)
