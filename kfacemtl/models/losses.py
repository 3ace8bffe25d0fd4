"""Masked per-task losses.

A missing label arrives with sample weight 0 and a finite placeholder label. The loss
ignores whatever label value a masked row holds (it is replaced before any arithmetic, so
even huge garbage cannot make ``0 * inf``), and the reduction is a decision:

- ``mean_with_sample_weight`` (default): Σ wᵢ·ℓᵢ / Σ wᵢ, the mean over labelled rows. A task
  labelled in 10% of a batch learns as fast per labelled sample as one labelled everywhere.
  A batch without any label for the task contributes exactly 0.
- ``sum_over_batch_size`` (Keras's default): Σ wᵢ·ℓᵢ / batch size, so a task's gradient
  shrinks with the share of the batch that labels it.

Example:
    >>> import numpy as np
    >>> from kfacemtl.models.losses import MaskedTaskLoss
    >>> loss = MaskedTaskLoss("regression", "mae")
    >>> float(loss(np.array([[1.0], [1e30]]), np.array([[0.0], [0.0]]), np.array([1.0, 0.0])))
    1.0
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from kfacemtl.tasks import Task


NORMALIZATIONS = ("mean_with_sample_weight", "sum_over_batch_size")


_EPS = 1e-7


@keras.saving.register_keras_serializable(package="kfacemtl")
class MaskedTaskLoss(keras.losses.Loss):
    """Loss of one task that honours a 0/1 (or soft) per-sample weight exactly.

    Args:
        kind: the task kind: ``classification``, ``multilabel`` or ``regression``.
        loss: ``crossentropy`` (probabilities in; class ids or class distributions as labels), ``binary_crossentropy``,
            ``huber``, ``mse`` or ``mae``.
        scale: regression errors are divided by this first.
        normalization: ``mean_with_sample_weight`` or ``sum_over_batch_size``.
        label_smoothing: for ``crossentropy``.

    Example:
        >>> loss = MaskedTaskLoss("classification", "crossentropy")
        >>> round(float(loss([0, 1], [[0.5, 0.5], [0.9, 0.1]], [1.0, 0.0])), 4)
        0.6931
    """

    def __init__(self, kind: str, loss: str, scale: float = 1.0,
                 normalization: str = "mean_with_sample_weight", label_smoothing: float = 0.0,
                 name: str | None = None, **kwargs):
        if normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {NORMALIZATIONS}, got {normalization!r}")
        kwargs.pop("reduction", None)
        super().__init__(name=name or f"masked_{loss}", reduction="none", **kwargs)
        self.kind, self.loss_name, self.scale = kind, loss, float(scale)
        self.normalization, self.label_smoothing = normalization, float(label_smoothing)

    def per_sample(self, y_true, y_pred):
        """Unweighted loss of every row, shape (batch,)."""
        if self.loss_name == "crossentropy":
            n = ops.shape(y_pred)[-1]
            if is_distribution(y_true, y_pred):  # soft targets (e.g. distillation's pseudo-labels)
                y = ops.cast(y_true, y_pred.dtype)
            else:
                y = ops.one_hot(ops.cast(ops.reshape(y_true, (-1,)), "int32"), n)
            if self.label_smoothing:
                y = y * (1 - self.label_smoothing) + self.label_smoothing / ops.cast(n, y.dtype)
            return -ops.sum(y * ops.log(ops.clip(y_pred, _EPS, 1.0)), axis=-1)
        y_true = ops.reshape(y_true, ops.shape(y_pred))
        if self.loss_name == "binary_crossentropy":
            p = ops.clip(y_pred, _EPS, 1 - _EPS)
            return -ops.mean(y_true * ops.log(p) + (1 - y_true) * ops.log(1 - p), axis=-1)
        err = (y_pred - y_true) / self.scale
        if self.loss_name == "mse":
            values = ops.square(err)
        elif self.loss_name == "mae":
            values = ops.abs(err)
        elif self.loss_name == "huber":
            a = ops.abs(err)
            values = ops.where(a <= 1.0, 0.5 * ops.square(err), a - 0.5)
        else:
            raise ValueError(f"unknown loss {self.loss_name!r}")
        return ops.mean(values, axis=-1)

    def __call__(self, y_true, y_pred, sample_weight=None):
        y_pred = ops.convert_to_tensor(y_pred, dtype="float32")
        y_true = ops.convert_to_tensor(y_true, dtype="float32")
        batch = ops.shape(y_pred)[0]
        if sample_weight is None:
            w = ops.ones((batch,), dtype="float32")
        else:
            w = ops.reshape(ops.cast(ops.convert_to_tensor(sample_weight), "float32"), (-1,))
        labelled = w > 0
        # Replace masked labels before any arithmetic: garbage there can't reach the loss or its gradient.
        mask = ops.reshape(labelled, (-1,) + (1,) * (len(y_true.shape) - 1))
        y_true = ops.where(mask, y_true, ops.zeros_like(y_true))
        values = ops.where(labelled, self.per_sample(y_true, y_pred), 0.0)
        total = ops.sum(values * w)
        # Under a tf.distribute strategy each replica returns its share of the global batch's mean (Keras's own
        # losses divide by the number of replicas), so the replicas' summed gradients are those of the mean.
        if self.normalization == "mean_with_sample_weight":
            return share_of_mean(total, ops.sum(w))  # the labelled rows of all replicas count
        return scale_loss_for_distribution(total / ops.cast(batch, "float32"))

    def call(self, y_true, y_pred):
        return self.per_sample(ops.convert_to_tensor(y_true, "float32"), ops.convert_to_tensor(y_pred, "float32"))

    def get_config(self):
        config = super().get_config()
        config.pop("reduction", None)
        config.update(kind=self.kind, loss=self.loss_name, scale=self.scale,
                      normalization=self.normalization, label_smoothing=self.label_smoothing)
        return config


def is_distribution(y_true, y_pred) -> bool:
    """Whether classification labels are class distributions ``(batch, classes)`` rather than class ids.

    Example:
        >>> ids, probs = ops.convert_to_tensor([2, 0]), ops.zeros((2, 7))
        >>> is_distribution(ids, probs), is_distribution(ops.one_hot(ids, 7), probs)
        (False, True)
    """
    return len(y_true.shape) == len(y_pred.shape) and y_true.shape[-1] == y_pred.shape[-1] \
        and y_pred.shape[-1] is not None and y_pred.shape[-1] > 1


@keras.saving.register_keras_serializable(package="kfacemtl")
def class_accuracy(y_true, y_pred):
    """Per-row accuracy of class probabilities against class ids or class distributions (their argmax).

    Example:
        >>> import numpy as np
        >>> class_accuracy(np.array([1, 0]), np.array([[0.2, 0.8], [0.3, 0.7]])).numpy().tolist()
        [1.0, 0.0]
        >>> class_accuracy(np.array([[0.1, 0.9]]), np.array([[0.2, 0.8]])).numpy().tolist()
        [1.0]
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.convert_to_tensor(y_true)
    if is_distribution(y_true, y_pred):
        y_true = ops.argmax(y_true, axis=-1)
    y_true = ops.cast(ops.reshape(y_true, (-1,)), "int32")
    return ops.cast(ops.equal(ops.cast(ops.argmax(y_pred, axis=-1), "int32"), y_true), "float32")


@keras.saving.register_keras_serializable(package="kfacemtl")
def label_accuracy(y_true, y_pred):
    """Per-row share of labels right at 0.5, of probabilities against 0/1 or soft labels (co-annotation's).

    Example:
        >>> import numpy as np
        >>> label_accuracy(np.array([[1.0, 0.0], [0.8, 0.3]]), np.array([[0.9, 0.6], [0.7, 0.1]])).numpy().tolist()
        [0.5, 1.0]
    """
    y_pred = ops.convert_to_tensor(y_pred)
    y_true = ops.reshape(ops.convert_to_tensor(y_true, y_pred.dtype), ops.shape(y_pred))
    return ops.mean(ops.cast(ops.equal(y_true > 0.5, y_pred > 0.5), "float32"), axis=-1)


def task_loss(task, normalization: str = "mean_with_sample_weight", label_smoothing: float = 0.0) -> MaskedTaskLoss:
    """The masked loss of a :class:`~kfacemtl.tasks.Task`.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> task_loss(get_task("age")).loss_name
        'huber'
    """
    return MaskedTaskLoss(task.kind, task.loss, scale=task.loss_scale, normalization=normalization,
                          label_smoothing=label_smoothing if task.kind == "classification" else 0.0,
                          name=f"{task.name}_loss")


def task_metrics_for(task: Task) -> list:
    """Keras metrics of a task, used as ``weighted_metrics`` so masked rows don't count.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> [m.name for m in task_metrics_for(get_task("expression"))], [m.name for m in task_metrics_for(get_task("age"))]
        (['acc'], ['mae'])
    """
    if task.kind == "classification":
        return [keras.metrics.MeanMetricWrapper(class_accuracy, name="acc")]  # class ids or distributions
    if task.kind == "multilabel":
        return [keras.metrics.MeanMetricWrapper(label_accuracy, name="acc")]  # 0/1 or soft labels
    return [keras.metrics.MeanAbsoluteError(name="mae")]


def _replicas() -> int:
    return tf.distribute.get_strategy().num_replicas_in_sync


def scale_loss_for_distribution(loss):
    """A replica's loss divided by the number of replicas in sync (no-op outside a strategy): summing the
    replicas' gradients, as the optimizer does, then gives those of the mean over the global batch.

    Example:
        >>> float(scale_loss_for_distribution(tf.constant(3.0)))   # outside a strategy: unchanged
        3.0
    """
    n = _replicas()
    return loss if n == 1 else loss * (1.0 / n)


def unscale_loss_for_distribution(loss):
    """Undo :func:`scale_loss_for_distribution`: the replica's own loss value (for logging and weighting).

    Example:
        >>> float(unscale_loss_for_distribution(scale_loss_for_distribution(tf.constant(3.0))))
        3.0
    """
    n = _replicas()
    return loss if n == 1 else loss * float(n)


def share_of_mean(total, count):
    """This replica's share of the global batch's mean ``Σ total / Σ count`` (sums over the replicas in sync):
    summed over the replicas, as their gradients are, it is the mean. On one device: ``total / count``.

    A masked loss's mean over labelled rows is then exact under a strategy, however the labelled rows fall
    between the replicas (a mean of per-replica means is not).

    Example:
        >>> float(share_of_mean(tf.constant(6.0), tf.constant(3.0)))   # one replica: the mean itself
        2.0
    """
    ctx = tf.distribute.get_replica_context()
    if ctx is not None and ctx.num_replicas_in_sync > 1:
        count = ctx.all_reduce(tf.distribute.ReduceOp.SUM, tf.stop_gradient(count))
        return tf.math.divide_no_nan(total, count)
    return scale_loss_for_distribution(tf.math.divide_no_nan(total, count))
