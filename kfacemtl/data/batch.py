"""The batch contract: ``(images, {task: label}, weights)``, every task present in every batch.

A missing label has weight 0 and a finite placeholder label. ``weights`` is ``{task: weight}``, or, when co-annotation
fills labels (:class:`~kfacemtl.training.coupling.CoAnnotation`), a :class:`MaskedWeights` that also says which labels
are real and which co-annotation filled: the masks travel as named fields of the batch, next to the weights they
qualify, and :meth:`~kfacemtl.models.MultiTaskModel.unpack_batch` reads either form.

Example:
    >>> import numpy as np
    >>> w = MaskedWeights({"age": np.array([1.0, 0.0])}, real={"age": np.array([1.0, 0.0])})
    >>> task_weights(w)["age"].tolist(), task_weights({"age": np.array([0.5])})["age"].tolist()
    ([1.0, 0.0], [0.5])
"""
from __future__ import annotations

from typing import Mapping, NamedTuple


class MaskedWeights(NamedTuple):
    """A batch's sample weights with the masks that coupling related tasks needs.

    Args:
        weights: ``{task: weight}`` per row (0: no label).
        real: ``{task: 1 where the row's label is a real one}`` for the tasks co-annotation fills (a co-annotated
            label has weight > 0 and real 0); distribution matching covers the rows without a real label.
        coannotated: ``{task: 1 where co-annotation filled the label}``, at ``coupling.level: class`` only (those rows
            leave the task's per-row loss for its class-mean terms).

    Example:
        >>> MaskedWeights({"gender": [1.0]}).real
        {}
    """

    weights: Mapping
    real: Mapping = {}
    coannotated: Mapping = {}


def task_weights(weights) -> Mapping:
    """The ``{task: weight}`` of a batch's weights, plain or :class:`MaskedWeights`.

    Example:
        >>> task_weights(MaskedWeights({"gender": [1.0]}))
        {'gender': [1.0]}
    """
    return weights.weights if isinstance(weights, MaskedWeights) else weights
