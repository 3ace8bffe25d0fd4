"""Output fusion: at inference, a multilabel head's probabilities combined with those a related classification
head implies (a product of experts).

Example:
    >>> import numpy as np
    >>> np.asarray(implied(np.array([[0.5, 0.5]], "float32"), [True, False], np.eye(2, dtype="float32"))).tolist()
    [[1.0, 0.0]]
"""
from __future__ import annotations

from typing import Mapping

import keras
import numpy as np
from keras import ops


FLOOR = 0.05  # d(i, k) is clipped to [FLOOR, 1 - FLOOR] when AUs are turned into an expression distribution


def implied(p, known, matrix):
    """``Σ_i p_i · d(i, ·)`` with ``p`` ``(n, classes)`` renormalised over the ``known`` classes: what a
    :class:`Relatedness` (``d`` = ``matrix``) implies for its target (:meth:`Relatedness.forward`,
    :class:`OutputFusion`).

    Example:
        >>> np.asarray(implied(np.array([[0.5, 0.5]], "float32"), [True, False], np.eye(2, dtype="float32"))).tolist()
        [[1.0, 0.0]]
    """
    return ops.matmul(over_known(p, known), ops.convert_to_tensor(np.asarray(matrix, "float32")))


def over_known(p, known):
    """Class probabilities ``p`` ``(n, classes)`` restricted to the ``known`` classes and renormalised.

    Example:
        >>> np.asarray(over_known(np.array([[0.2, 0.2, 0.6]]), [True, True, False])).tolist()
        [[0.5, 0.5, 0.0]]
    """
    p = ops.convert_to_tensor(p, "float32") * ops.convert_to_tensor(np.asarray(known, "float32"))
    return p / ops.maximum(ops.sum(p, axis=-1, keepdims=True), 1e-6)


@keras.saving.register_keras_serializable(package="kfacemtl")
class OutputFusion(keras.layers.Layer):
    """At inference, a multilabel head's probabilities fused with those its related classification head implies.

    For a relation source → target (a multilabel target, e.g. expression → action units), with ``p_k`` the
    target head's probability of label ``k``, ``q_k = implied(p_source)_k`` the probability the source head
    implies and ``m_k`` the label's base rate under the relation (the ``prior`` pushed through ``d``), the fused
    probability treats the two as independent evidence about the label (a product of experts, as naive Bayes combines
    them): ``logit(fused_k) = logit(p_k) + logit(q_k) - logit(m_k)``; ``q`` and ``m`` are clipped to
    [``FLOOR``, 1 - ``FLOOR``], so no table entry of 0 or 1 overrules the head.

    A layer of the network: :func:`~kfacemtl.models.build_model` (``fusions=``) puts it after the target's head,
    named after the target task, so it is saved, loaded and exported with the model. It acts only where the model
    answers (``training=False``: ``predict``, ``evaluate``, exports); in training it passes the head through, so the
    head's own loss never learns to lean on the fusion. Called on ``[source probabilities, target probabilities]``.

    Args:
        source, target: the tasks' names (the model's output names).
        matrix: ``d``, (source classes, target labels).
        known: the source classes ``d`` covers.
        prior: the source class distribution the base rates are taken under.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> from kfacemtl.training.coupling import Relatedness
        >>> fusion = OutputFusion.from_relation(Relatedness.du_2014(get_task("expression"), get_task("action_units")))
        >>> happy = np.eye(7, dtype="float32")[[3]]
        >>> aus = np.full((1, 14), 0.5, "float32")   # an AU head that cannot tell
        >>> out = fusion([happy, aus])
        >>> [round(float(v), 2) for v in np.asarray(out)[0, [7, 0]]]   # AU12 up, AU1 down
        [0.99, 0.08]
        >>> bool(np.all(np.asarray(fusion([happy, aus], training=True)) == aus))   # training: the head as it is
        True
    """

    def __init__(self, source: str, target: str, matrix, known, prior, **kwargs):
        kwargs.setdefault("name", str(target))
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.source, self.target = str(source), str(target)
        self.matrix = np.asarray(matrix, "float32")
        self.known = np.asarray(known, bool)
        self.prior = np.asarray(prior, "float32")
        if self.matrix.shape[0] != len(self.known) or self.prior.shape != self.known.shape:
            raise ValueError(f"fusion {self.source}->{self.target}: matrix {self.matrix.shape}, known "
                             f"{self.known.shape} and prior {self.prior.shape} do not fit together")
        self.base_rate = np.asarray(implied(self.prior[None], self.known, self.matrix))[0]

    @classmethod
    def from_relation(cls, relation, **kwargs) -> "OutputFusion":
        """The fusion of a :class:`~kfacemtl.training.coupling.Relatedness` with a multilabel target.

        Example:
            >>> from kfacemtl.tasks import get_task
            >>> from kfacemtl.training.coupling import Relatedness
            >>> OutputFusion.from_relation(Relatedness.du_2014(get_task("expression"), get_task("action_units"))).name
            'action_units'
        """
        if not relation.invertible:
            raise ValueError(f"{relation.name}: fusing outputs needs a multilabel target (e.g. action units), not "
                             f"{relation.target.kind}")
        return cls(relation.source.name, relation.target.name, relation.matrix, relation.known, relation.prior,
                   **kwargs)

    def call(self, inputs, training=None):
        source, target = inputs
        if training:
            return target

        def logit(v, floor):
            v = ops.clip(v, floor, 1.0 - floor)
            return ops.log(v) - ops.log(1.0 - v)

        q = implied(source, self.known, self.matrix)
        return ops.sigmoid(logit(ops.cast(target, "float32"), 1e-6) + logit(q, FLOOR)
                           - logit(ops.convert_to_tensor(self.base_rate, "float32"), FLOOR))

    def compute_output_shape(self, input_shape):
        return input_shape[1]

    def apply(self, outputs: Mapping) -> dict:
        """``outputs`` (``{task: probabilities}``) with the target's replaced by the fused probabilities.

        Example:
            >>> fusion = OutputFusion("expression", "action_units", np.eye(2), [True, True], [0.5, 0.5])
            >>> out = fusion.apply({"expression": np.array([[1.0, 0.0]]), "action_units": np.array([[0.5, 0.5]])})
            >>> [round(float(v), 2) for v in np.asarray(out["action_units"])[0]]
            [0.95, 0.05]
        """
        return dict(outputs, **{self.target: self([outputs[self.source], outputs[self.target]], training=False)})

    def get_config(self) -> dict:
        return {**super().get_config(), "source": self.source, "target": self.target, "matrix": self.matrix.tolist(),
                "known": self.known.tolist(), "prior": self.prior.tolist()}
