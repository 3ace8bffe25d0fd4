"""A model's answers by name: each head's raw output turned into the named outputs the exported signatures give
(a class task's probabilities, label and class name; a multi-label task's probabilities and active names; a
regression task's values), and those outputs grouped per image.

Example:
    >>> from kfacemtl.tasks import get_task
    >>> named = task_outputs([get_task("gender")], [tf.constant([[0.3, 0.7]])])
    >>> group_outputs({k: v.numpy() for k, v in named.items()}, 1)
    [{'gender': {'probs': [0.30000001192092896, 0.699999988079071], 'label': 1, 'class': 'female'}}]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from kfacemtl.tasks import Task

OUTPUT_SUFFIXES = ("_probs", "_label", "_class", "_active")

ERROR_OUTPUT = "error"  # the bytes signature's status of each image: "" when it was answered, else why not


def interval_scale(task: Task, values):
    """How wide a regression head's interval is at its predicted ``values``: the distance above the bottom of the
    task's range plus a tenth of the range (12 years for age), so that errors that grow with the value (an age
    guess is off by more at 60 than at 6) get intervals that grow with it.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> interval_scale(get_task("age"), np.array([5.0, 60.0])).tolist()
        [17.0, 72.0]
    """
    low, high = task.value_range
    return values - low + 0.1 * (high - low)


def output_names(task: Task, interval: bool = False) -> list[str]:
    """The signature outputs of one task.

    classification: ``<task>_probs`` (batch, C), ``<task>_label`` (class index, int64) and
    ``<task>_class`` (class name); multilabel: ``<task>_probs`` (batch, K) and
    ``<task>_active`` (names with probability ≥ 0.5, comma-joined); regression:
    ``<task>`` on the task's own scale ((batch,) for one value, e.g. ``age`` in years), and with an ``interval``
    (a calibrated head, :meth:`~kfacemtl.models.MultiTaskModel.set_intervals`) ``<task>_interval`` (batch, 2), its
    low and high ends.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> output_names(get_task("gender"))
        ['gender_probs', 'gender_label', 'gender_class']
    """
    if task.kind == "classification":
        return [f"{task.name}_probs", f"{task.name}_label", f"{task.name}_class"]
    if task.kind == "multilabel":
        return [f"{task.name}_probs", f"{task.name}_active"]
    return [task.name] + ([f"{task.name}_interval"] if interval else [])


def task_outputs(tasks: Sequence[Task], outputs, intervals=None) -> dict:
    """The signatures' named outputs (:func:`output_names`) from the model's outputs in task order: each
    classification head's probabilities, label and class name, each multi-label head's probabilities and active
    names, each regression head's values, and for a head in ``intervals`` (``{task: (q_low, q_high)}``,
    :meth:`~kfacemtl.models.MultiTaskModel.set_intervals`) its interval: value + q × :func:`interval_scale`, within the
    task's range.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> out = task_outputs([get_task("gender")], [tf.constant([[0.3, 0.7]])])
        >>> out["gender_class"].numpy().tolist(), out["gender_label"].numpy().tolist()
        ([b'female'], [1])
    """
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    result = {}
    for task, out in zip(tasks, outputs):
        out = tf.cast(out, tf.float32)
        if task.kind == "classification":
            label = tf.argmax(out, axis=-1)
            result[f"{task.name}_probs"] = out
            result[f"{task.name}_label"] = label
            result[f"{task.name}_class"] = tf.gather(tf.constant(list(task.classes)), label)
        elif task.kind == "multilabel":
            result[f"{task.name}_probs"] = out
            names = tf.broadcast_to(tf.constant(list(task.classes)), tf.shape(out))
            active = tf.ragged.boolean_mask(names, out >= 0.5)
            result[f"{task.name}_active"] = tf.strings.reduce_join(active, axis=-1, separator=",")
        else:
            result[task.name] = value = out[:, 0] if task.dim == 1 else out
            if intervals and task.name in intervals:
                (q_low, q_high), (low, high) = intervals[task.name], task.value_range
                scale = interval_scale(task, value)
                result[f"{task.name}_interval"] = tf.clip_by_value(
                    tf.stack([value + q_low * scale, value + q_high * scale], axis=-1), low, high)
    return result


def group_outputs(outputs: dict, n: int) -> list[dict]:
    """Signature outputs ``{name: array (n, ...)}`` → one ``{task: result}`` dict per image.

    ``<task>_probs``, ``<task>_label``, ``<task>_class`` and ``<task>_active`` are gathered
    under ``<task>`` as ``probs``, ``label``, ``class``, ``active``; other outputs (``age``,
    ``valence_arousal``) are the task's value.

    Example:
        >>> group_outputs({"age": np.array([30.5]), "gender_label": np.array([1]),
        ...                "gender_class": np.array([b"female"])}, 1)
        [{'age': 30.5, 'gender': {'label': 1, 'class': 'female'}}]
    """
    results = [{} for _ in range(n)]
    for name, value in outputs.items():
        value = np.asarray(value)
        task, key = name, None
        for suffix in OUTPUT_SUFFIXES:
            if name.endswith(suffix):
                task, key = name[: -len(suffix)], suffix[1:]
        for i in range(n):
            v = value[i]
            v = v.decode() if isinstance(v, bytes) else v if isinstance(v, str) else v.tolist()
            if key is None:
                results[i][task] = v
            else:
                results[i].setdefault(task, {})[key] = v
    return results
