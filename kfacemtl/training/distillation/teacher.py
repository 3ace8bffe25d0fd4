"""The teacher's ensemble: one batched pass under T transforms (flips, scales, shifts; :mod:`kfacemtl.models.views`),
and which of its answers are confident enough to become pseudo-labels.

Example:
    >>> DEFAULT_THRESHOLDS["classification"]    # a top class probability this high makes a pseudo-label
    0.7
"""
from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kfacemtl.models.views import DEFAULT_TRANSFORMS, transform_boxes, view_predictor
from kfacemtl.tasks import Task


DEFAULT_THRESHOLDS = {"classification": 0.7, "multilabel": 0.8}


REGRESSION_SPREAD = 0.05  # default regression threshold: this fraction of the task's value range


class EnsembleTeacher:
    """One or several models predicting batches under T transforms in one compiled pass through all of them.

    Args:
        models: a model (it answers all its tasks) or ``{task: model}`` (e.g. single-task
            teachers; each answers the task it is named for), or ``{task: [model, ...]}``: several models of one input
            size answer that task, their answers averaged (an ensemble of teachers, e.g. seeds of one recipe); the
            spread then adds their disagreement to their views'.
        transforms: ``(flip, scale, dx, dy)`` tuples (default :data:`DEFAULT_TRANSFORMS`).

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> teacher = EnsembleTeacher(build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1))
        >>> mean, spread = teacher(np.zeros((2, 16, 16, 3), "float32"))["age"]
        >>> mean.shape, spread.shape
        ((2, 1), (2,))
    """

    def __init__(self, models, transforms: Sequence = DEFAULT_TRANSFORMS):
        self.models = models
        self.transforms = tuple(transforms)
        self.boxes = tf.constant(transform_boxes(self.transforms))
        self.T = int(self.boxes.shape[0])
        if isinstance(models, Mapping):
            self._plan = []
            for task, m in models.items():
                group = list(m) if isinstance(m, (list, tuple)) else [m]
                sizes = sorted({tuple(x.input_shape[1:3]) for x in group})
                if len(sizes) != 1:
                    raise ValueError(f"models.{task}: expected one model or a list of models of one input size, "
                                     f"got {len(group)} models of sizes {sizes}")
                self._plan += [(x, [task]) for x in group]
        else:
            self._plan = [(models, list(models.output_names))]
        self._fns = {}  # which models of the plan -> one compiled pass through all of them

    @property
    def tasks(self) -> list[str]:
        """The task names the teacher answers."""
        return list(dict.fromkeys(t for _, tasks in self._plan for t in tasks))

    @property
    def model_list(self) -> list:
        """Every model of the teacher, once each, in the order given."""
        return list({id(m): m for m, _ in self._plan}.values())

    def input_sizes(self, tasks: Sequence[str] | None = None) -> dict:
        """``{(height, width): [task, ...]}``: which of ``tasks`` (default all) the models of each input size answer,
        so that each model is asked about images of its own size.

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> small = build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> large = build_model(resolve_tasks(["gender"]), input_shape=(24, 24, 3), widths=(4,), depths=1)
            >>> EnsembleTeacher({"age": small, "gender": large}).input_sizes()
            {(16, 16): ['age'], (24, 24): ['gender']}
        """
        sizes = {}
        for model, answers in self._plan:
            for task in answers:
                names = sizes.setdefault(tuple(model.input_shape[1:3]), [])
                if (tasks is None or task in tasks) and task not in names:
                    names.append(task)
        return {size: names for size, names in sizes.items() if names}

    def __call__(self, images, tasks: Sequence[str] | None = None) -> dict:
        """``{task: (ensemble mean (B, ...), spread (B,))}`` as numpy arrays, for ``tasks`` (default all)
        and whatever else the models that answer them give.

        Example: two teachers of one task, their answers averaged
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> a, b = (build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            ...         for _ in range(2))
            >>> x = np.random.default_rng(0).random((3, 16, 16, 3)).astype("float32")
            >>> mean, spread = EnsembleTeacher({"gender": [a, b]}, [(False, 1.0, 0.0, 0.0)])(x)["gender"]
            >>> bool(np.allclose(mean, (a.predict(x, verbose=0) + b.predict(x, verbose=0)) / 2, atol=1e-6))
            True
        """
        use = tuple(i for i, (_, answers) in enumerate(self._plan) if tasks is None or set(answers) & set(tasks))
        if use not in self._fns:  # one traced function for the models asked together (not one per teacher)
            self._fns[use] = view_predictor(_Together([self._plan[i][0] for i in use]), self.transforms)
        results = iter(self._fns[use](tf.convert_to_tensor(images, tf.float32)) if use else ())
        answered = {}
        for i in use:
            model, answers = self._plan[i]
            names = list(model.output_names)
            mine = [next(results) for _ in names]
            for task in answers:
                mean, spread = mine[names.index(task)]
                answered.setdefault(task, []).append((mean.numpy(), spread.numpy()))
        return {task: parts[0] if len(parts) == 1 else _pooled(parts) for task, parts in answered.items()}


def _pooled(parts) -> tuple:
    """Several models' ``(mean, spread)`` of one task as one: the mean of their means; the spread from the law of total
    variance (their views' mean squared spread plus the variance between their means, averaged over the values)."""
    means, spreads = np.stack([m for m, _ in parts]), np.stack([s for _, s in parts])
    between = means.var(0).reshape(means.shape[1], -1).mean(-1)
    return means.mean(0), np.sqrt((spreads ** 2).mean(0) + between).astype(spreads.dtype)


class _Together:
    """Several models called as one: their outputs, in turn, as one list (what :func:`view_predictor` traces)."""

    def __init__(self, models):
        self.models = list(models)

    def __call__(self, images, training=False):
        outs = []
        for model in self.models:
            o = model(images, training=training)
            outs.extend(o if isinstance(o, (list, tuple)) else [o])
        return outs


def select(task: Task, mean: np.ndarray, spread: np.ndarray, candidates: np.ndarray, threshold: float,
           balance: bool = False) -> np.ndarray:
    """Which candidate rows' ensemble predictions are confident enough to become pseudo-labels.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]])
        >>> select(get_task("gender"), probs, np.zeros(3), np.array([True, True, False]), 0.7).tolist()
        [True, False, False]
    """
    if task.kind == "regression":
        ok = spread <= threshold
        confidence = -spread
    else:
        confidence = mean.max(-1) if task.kind == "classification" else np.maximum(mean, 1 - mean).mean(-1)
        ok = confidence >= threshold
    accepted = candidates & ok
    if balance and task.kind == "classification" and accepted.any():
        cls = mean.argmax(-1)
        counts = np.bincount(cls[accepted], minlength=mean.shape[-1])
        cap = int(math.ceil(np.median(counts[counts > 0])))
        for c in np.flatnonzero(counts > cap):
            rows = np.flatnonzero(accepted & (cls == c))
            drop = rows[np.argsort(-confidence[rows], kind="stable")[cap:]]
            accepted[drop] = False
    return accepted


def pseudo_label_quality(task: Task, mean: np.ndarray, truth: np.ndarray) -> float:
    """Accuracy of pseudo-labels against ground truth: accuracy (classification), per-unit
    accuracy (multilabel) or mean absolute error (regression).

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> pseudo_label_quality(get_task("gender"), np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0]))
        0.5
    """
    if task.kind == "classification":
        return float(np.mean(mean.argmax(-1) == truth.reshape(-1).astype(int)))
    if task.kind == "multilabel":
        return float(np.mean((mean >= 0.5) == (truth >= 0.5)))
    return float(np.mean(np.abs(mean.reshape(len(mean), -1) - truth.reshape(len(truth), -1))))
