"""Pseudo-labels of every (source, task), held in ``tf.Variable`` s that the training pipeline reads by row id.

Example:
    >>> from kfacemtl.data import make_source
    >>> from kfacemtl.tasks import resolve_tasks
    >>> store = PseudoLabels([make_source("synthetic:street?n=3")], resolve_tasks(["gender"]))
    >>> store.assign("street-train", "gender", np.eye(2)[[0, 1, 1]], np.array([0.5, 0.5, 0.0]))
    >>> labels, weights = store.merge("street-train", tf.range(3), {"gender": tf.zeros(3, tf.int32)},
    ...                               {"gender": tf.constant([1.0, 0.0, 0.0])})   # row 0 has a real label
    >>> labels["gender"].numpy().tolist(), weights["gender"].numpy().tolist()
    ([0, 1, 0], [1.0, 0.5, 0.0])
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import tensorflow as tf

from kfacemtl.data import Source
from kfacemtl.errors import ConfigError
from kfacemtl.files import atomic_write
from kfacemtl.tasks import Task


class PseudoLabels:
    """Pseudo-labels of every (source, task), read by the training pipeline by row id.

    Classification values are stored as class distributions ``(n, classes)`` (hard mode
    feeds their argmax); other tasks in their label shape. A weight of 0 means no
    pseudo-label. :meth:`assign` changes what the next batches see, with no dataset rebuild.

    Example:
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> store = PseudoLabels([make_source("synthetic:street?n=4")], resolve_tasks(["gender"]))
        >>> store.assign("street-train", "gender", np.eye(2)[[0, 1, 1, 0]], np.array([0.5, 0.5, 0, 0]))
        >>> store.counts()
        {'street-train': {'gender': 2}}
    """

    def __init__(self, sources: Sequence[Source], tasks: Sequence[Task], soft: bool = False):
        self.soft = bool(soft)
        self.tasks = list(tasks)
        self._sizes = {s.name: len(s) for s in sources}
        if len(self._sizes) != len(sources):
            raise ValueError(f"sources: distillation needs distinct source names, got {[s.name for s in sources]}")
        self.values: dict[str, dict[str, tf.Variable]] = {}
        self.weights: dict[str, dict[str, tf.Variable]] = {}
        for name, n in self._sizes.items():
            self.values[name], self.weights[name] = {}, {}
            for t in self.tasks:
                shape = (n, len(t.classes)) if t.kind == "classification" else (n,) + t.label_shape
                init = t.placeholder(n).astype("float32") if t.kind == "regression" else np.zeros(shape, "float32")
                self.values[name][t.name] = tf.Variable(init, trainable=False, name=f"pseudo_{t.name}")
                self.weights[name][t.name] = tf.Variable(np.zeros(n, "float32"), trainable=False,
                                                         name=f"pseudo_weight_{t.name}")

    def assign(self, source_name: str, task_name: str, values, weights):
        """Replace one (source, task)'s pseudo-labels: ``values`` in the stored shape, ``weights`` ``(n,)``."""
        values, weights = np.asarray(values, "float32"), np.asarray(weights, "float32")
        if not (np.all(np.isfinite(values)) and np.all(np.isfinite(weights)) and np.all(weights >= 0)):
            raise ValueError(f"pseudo-labels of {source_name}/{task_name} must be finite with weights >= 0")
        self.values[source_name][task_name].assign(values.reshape(self.values[source_name][task_name].shape))
        self.weights[source_name][task_name].assign(weights)

    @tf.autograph.experimental.do_not_convert  # plain TF ops: no control flow to convert
    def merge(self, source_name: str, i, labels: dict, weights: dict) -> tuple[dict, dict]:
        """TF ops: row ``i``'s labels with its pseudo-labels filled in where the real label is missing.

        ``i`` is one row id (``labels`` and ``weights`` that row's) or a vector of them (and the
        labels and weights of those rows, stacked). In soft mode class ids become one-hot
        distributions, also for a source the store does not hold (every source's batches need the
        same label structure); labels that are class distributions already (co-annotation) get the
        pseudo-labels' distributions.
        """
        labels, weights = dict(labels), dict(weights)
        held = source_name in self._sizes
        rows = tf.convert_to_tensor(i).shape.rank  # 0: one row, 1: several
        for t in self.tasks:
            real, real_w = labels[t.name], weights[t.name]
            # class distributions already (co-annotation made them) or to be (soft mode)
            dist = t.kind == "classification" and real.shape.rank == 1 + rows
            soft = t.kind == "classification" and (self.soft or dist)
            if soft and not dist:
                real = tf.one_hot(tf.cast(real, tf.int32), len(t.classes))
            if not held:
                labels[t.name] = real
                continue
            pseudo_w = tf.gather(self.weights[source_name][t.name], i)
            value = tf.gather(self.values[source_name][t.name], i)
            if t.kind == "classification" and not self.soft:  # hard pseudo-labels: the top class
                value = tf.argmax(value, axis=-1)
                value = tf.one_hot(value, len(t.classes)) if dist else tf.cast(value, real.dtype)
            use = (real_w <= 0) & (pseudo_w > 0)
            use_value = tf.reshape(use, tf.concat([tf.shape(use), tf.ones([real.shape.rank - rows], tf.int32)], 0))
            labels[t.name] = tf.where(use_value, value, real)  # a row's choice spread over its label's values
            weights[t.name] = tf.where(use, pseudo_w, real_w)
        return labels, weights

    def counts(self) -> dict:
        """``{source: {task: rows with a pseudo-label}}``."""
        return {s: {t: int(np.count_nonzero(w.numpy())) for t, w in tw.items()} for s, tw in self.weights.items()}

    def save(self, path) -> Path:
        """Write every variable to an ``.npz`` file, atomically."""
        arrays = {f"{kind}/{s}/{t}": v.numpy() for kind, store in (("values", self.values), ("weights", self.weights))
                  for s, tv in store.items() for t, v in tv.items()}
        return atomic_write(path, lambda tmp: np.savez(tmp, **arrays))

    def load(self, path):
        """Read what :meth:`save` wrote (the sources and tasks must match)."""
        with np.load(path) as data:
            for kind, store in (("values", self.values), ("weights", self.weights)):
                for s, tv in store.items():
                    for t, v in tv.items():
                        key = f"{kind}/{s}/{t}"
                        if key not in data or data[key].shape != tuple(v.shape):
                            raise ConfigError("distillation", f"{str(path)!r} does not hold pseudo-labels of "
                                                              f"{s}/{t} with shape {tuple(v.shape)}")
                        v.assign(data[key])
