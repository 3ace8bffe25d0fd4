"""Mixup (Zhang et al. 2018, "mixup: Beyond Empirical Risk Minimization", arXiv 1710.09412) for partially labelled
batches: each training image blended with another image of its batch, ``λ·x_i + (1 − λ)·x_j`` with ``λ`` drawn per
image from ``Beta(α, α)``, and its targets blended to match.

A row labels only some tasks, so each task's target is blended by the two rows' shares of the image and their sample
weights: with ``a = λ·w_i`` and ``b = (1 − λ)·w_j``, the target is ``(a·y_i + b·y_j) / (a + b)`` at weight ``a + b``.
Where only one of the two is labelled the blend learns that row's label at its share of the image; where neither is,
the weight stays 0. For cross-entropy this is exactly mixup's loss, ``λ·L(y_i) + (1 − λ)·L(y_j)``; class ids become
distributions, action units probabilities, ages and valence/arousal weighted means.

Example:
    >>> import numpy as np
    >>> from kfacemtl.tasks import resolve_tasks
    >>> tasks = resolve_tasks(["gender", "age"])
    >>> x = tf.constant(np.stack([np.zeros((4, 4, 3)), np.ones((4, 4, 3))]), tf.float32)
    >>> y = {"gender": tf.constant([0, 1]), "age": tf.constant([[20.0], [40.0]])}
    >>> w = {"gender": tf.constant([1.0, 1.0]), "age": tf.constant([1.0, 0.0])}  # the second face has no age
    >>> mx, my, mw = mix_batch(x, y, w, tasks, alpha=0.4, seed=tf.constant([0, 1], tf.int64))
    >>> bool(np.allclose(my["gender"].numpy().sum(-1), 1))       # class ids became distributions
    True
    >>> sorted(set(my["age"].numpy().ravel()[mw["age"].numpy() > 0].tolist()))  # only the labelled age is learned
    [20.0]
"""
from __future__ import annotations

from typing import Mapping, Sequence

import tensorflow as tf

from kfacemtl.tasks import Task


def mixup_alpha(value) -> float:
    """``training.mixup`` checked: ``Beta(α, α)``'s ``α``, a number >= 0 (0 or false: off).

    Example:
        >>> mixup_alpha(0.2), mixup_alpha(False)
        (0.2, 0.0)
        >>> mixup_alpha(-1)
        Traceback (most recent call last):
        ...
        ValueError: mixup: expected Beta(alpha, alpha)'s alpha, a number >= 0 (0: off; 0.2 is common), got -1
    """
    if value is False or value is None:
        return 0.0
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        raise ValueError(f"mixup: expected Beta(alpha, alpha)'s alpha, a number >= 0 (0: off; 0.2 is common), "
                         f"got {value!r}")
    return float(value)


def mix_batch(images, labels: Mapping, weights: Mapping, tasks: Sequence[Task], alpha: float, seed):
    """One batch ``(images, {task: label}, {task: weight})`` mixed (see the module docstring); ``seed``: a stateless
    seed, shape (2,).

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> images, labels, weights = mix_batch(tf.zeros((4, 8, 8, 3)), {"expression": tf.constant([0, 3, 3, 6])},
        ...                                     {"expression": tf.ones(4)}, resolve_tasks(["expression"]), 0.2,
        ...                                     seed=tf.constant([0, 0], tf.int64))
        >>> tuple(images.shape), tuple(labels["expression"].shape)     # class ids blended as distributions
        ((4, 8, 8, 3), (4, 7))
    """
    images = tf.cast(images, tf.float32)
    n = tf.shape(images)[0]
    s_lam, s_mate = tf.unstack(tf.random.experimental.stateless_split(tf.cast(seed, tf.int64), 2))
    a, b = tf.unstack(tf.random.stateless_gamma([2, n], s_lam, alpha=float(alpha)))
    lam = a / tf.maximum(a + b, 1e-12)
    mate = tf.argsort(tf.random.stateless_uniform([n], s_mate))
    images = _along(lam, images) * images + _along(1.0 - lam, images) * tf.gather(images, mate)
    labels, weights = dict(labels), dict(weights)
    for t in tasks:
        y, w = labels[t.name], tf.cast(weights[t.name], tf.float32)
        if t.kind == "classification" and y.shape.rank == 1:  # class ids as distributions
            y = tf.one_hot(tf.cast(y, tf.int32), len(t.classes))
        y = tf.cast(y, tf.float32)
        own, other = lam * w, (1.0 - lam) * tf.gather(w, mate)
        total = own + other
        share = own / tf.maximum(total, 1e-12)
        labels[t.name] = _along(share, y) * y + _along(1.0 - share, y) * tf.gather(y, mate)
        weights[t.name] = tf.cast(total, weights[t.name].dtype)
    return images, labels, weights


def _along(v, like):
    """``v`` (one value per row) shaped to broadcast over the rows of ``like``."""
    return tf.reshape(v, tf.concat([tf.shape(v), tf.ones([like.shape.rank - 1], tf.int32)], 0))
