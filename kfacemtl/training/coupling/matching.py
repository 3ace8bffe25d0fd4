"""Distribution matching: a head's predictions matched to those implied by a related head, on samples lacking the
target's label (Kollias et al.).

Example:
    >>> from kfacemtl.tasks import resolve_tasks
    >>> from kfacemtl.training.coupling.relatedness import make_relations
    >>> DistributionMatching(make_relations(None, resolve_tasks(["expression", "action_units"]))).term_names
    ['match_action_units', 'match_expression']
"""
from __future__ import annotations

from typing import Mapping, Sequence

from keras import ops

from kfacemtl.errors import expect_one_of
from kfacemtl.models.fusion import over_known
from kfacemtl.models.losses import task_loss
from kfacemtl.training.coupling.relatedness import LEVELS, Relatedness, class_means


class DistributionMatching:
    """Match a head's predictions to those implied by a related head, on samples lacking the target's label.

    For a relation source → target: ``q = forward(p_source)`` against ``p_target`` with the target task's masked
    loss, on rows without a real target label (weight 0, or a label co-annotation filled: the ``real/<task>``
    weights of a co-annotated batch); for multilabel targets also the other way, ``q = inverse(p_target)`` against
    ``p_source`` (cross-entropy) on rows without a real source label. The network
    trains on ``weight`` × the sum of these terms on top of its task losses (whatever the task weighting); the
    model logs each as ``match_<task>``.

    Args:
        relations: :class:`Relatedness` list.
        weight: the coefficient of the matching terms.
        inverse: also match the source head to what the target head implies.
        stop_gradient: treat ``q`` as a constant (only the matched head learns); default False, as Kollias
            et al.: both heads learn from the disagreement.
        level: ``"sample"`` (Kollias et al.) or ``"class"``: the source → target terms match, for each class
            ``i``, the target head's mean prediction over the rows (each counted by ``p(i | x)``, held constant)
            to ``d(i, ·)``, instead of each row's prediction to its ``q``; a row may then differ from what its
            expression implies (see :class:`CoAnnotation`). Only the target head learns from those terms; the
            inverse terms stay per row.

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> from kfacemtl.training.coupling.relatedness import make_relations
        >>> dm = DistributionMatching(make_relations(None, resolve_tasks(["expression", "action_units"])))
        >>> sorted(dm.term_names)
        ['match_action_units', 'match_expression']
    """

    def __init__(self, relations: Sequence[Relatedness], weight: float = 1.0, inverse: bool = True,
                 stop_gradient: bool = False, level: str = "sample"):
        if not float(weight) > 0:
            raise ValueError(f"weight: expected a number > 0, got {weight!r}")
        self.relations, self.weight = list(relations), float(weight)
        self.inverse, self.stop_gradient = bool(inverse), bool(stop_gradient)
        self.level = expect_one_of("level", level, LEVELS)
        self._terms = []  # (name, relation, direction, loss)
        for r in self.relations:
            self._terms.append((f"match_{r.target.name}", r, "forward", task_loss(r.target)))
            if self.inverse and r.invertible:
                self._terms.append((f"match_{r.source.name}", r, "inverse", task_loss(r.source)))
        names = [n for n, *_ in self._terms]
        if len(set(names)) != len(names):
            raise ValueError(f"relations: two relations match the same head: {names}")

    @property
    def term_names(self) -> list[str]:
        return [n for n, *_ in self._terms]

    def terms(self, y_pred: Mapping, weights: Mapping, real: Mapping | None = None) -> dict:
        """``{match_<task>: scalar loss}`` for a batch's predictions and sample weights, keyed by task; ``real``
        (:class:`~kfacemtl.data.batch.MaskedWeights`) says which labels are real where co-annotation filled some."""
        real_weights = dict(weights, **(real or {}))  # a pseudo-label counts as a label, a co-annotated one does not
        out = {}
        for name, r, direction, loss in self._terms:
            given, matched = (r.source.name, r.target.name) if direction == "forward" else (r.target.name, r.source.name)
            mask = ops.cast(ops.reshape(real_weights[matched], (-1,)) <= 0, "float32")
            if direction == "forward" and self.level == "class":
                groups = over_known(ops.stop_gradient(ops.convert_to_tensor(y_pred[given])), r.known)
                predicted, totals = class_means(groups, y_pred[matched], mask)
                out[name] = loss(ops.convert_to_tensor(r.matrix), predicted, totals)
                continue
            q = r.forward(y_pred[given]) if direction == "forward" else r.inverse(y_pred[given])
            if self.stop_gradient:
                q = ops.stop_gradient(q)
            out[name] = loss(q, y_pred[matched], mask)
        return out

    def total(self, y_pred: Mapping, weights: Mapping, real: Mapping | None = None):
        """``weight`` × the sum of :meth:`terms`, and the terms."""
        terms = self.terms(y_pred, weights, real)
        return self.weight * ops.sum(ops.stack(list(terms.values()))), terms
