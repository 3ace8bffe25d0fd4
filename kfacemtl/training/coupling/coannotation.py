"""Co-annotation: a sample's missing label filled from its related task's real label (Kollias et al.).

Example:
    >>> from kfacemtl.tasks import resolve_tasks
    >>> from kfacemtl.training.coupling.relatedness import make_relations
    >>> CoAnnotation(make_relations(None, resolve_tasks(["expression", "action_units"]))).soft_tasks
    {'expression'}
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from keras import ops

from kfacemtl.errors import expect_one_of
from kfacemtl.models.losses import task_loss
from kfacemtl.training.coupling.relatedness import LEVELS, Relatedness, class_means


class CoAnnotation:
    """Fill a sample's missing label from its related task's real label (Kollias et al.'s co-annotation).

    For each relation: a row labelled for the source (expression) and not the target (AUs) gets the soft
    target ``d(class, ·)``; for multilabel targets, a row labelled for the target and not the source gets the
    source distribution of :meth:`Relatedness.inverse`, so the source task's labels become class distributions
    in every row (real ones one-hot). The filled labels get ``weight`` × the related label's weight. Only real
    labels are read, so nothing co-annotated spreads further. The weights also get ``real/<task>`` entries
    (1 where the label is real) for every task a relation fills, which :class:`DistributionMatching` reads.

    ``level="class"`` changes what the filled target labels (AUs from an expression) constrain: not each row,
    pulled towards its class's ``d(class, ·)`` (which is the AUs the expression implies, not the face's own),
    but each class's mean prediction over a batch's co-annotated rows, matched to ``d(class, ·)`` with the
    target task's loss (:meth:`class_terms`, weighted by ``weight``; the model takes those rows out of the
    target's per-row loss, :meth:`split`), so a row may differ from its class as its face does: expectation
    regularisation (Mann & McCallum, ICML 2007) with the relatedness as the expectations. The inverse fill
    (an expression from AUs) stays per row. The batches then also carry ``coannotated/<task>`` (1 where
    co-annotation filled the label).

    Args:
        relations: :class:`Relatedness` list.
        weight: the weight of a co-annotated label, in (0, 1]; at ``level="class"``, the coefficient of the
            class-mean terms.
        inverse: also fill the source task from the target (AUs → expression).
        level: ``"sample"`` (Kollias et al.) or ``"class"``.

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> from kfacemtl.training.coupling.relatedness import make_relations
        >>> tasks = resolve_tasks(["expression", "action_units"])
        >>> co = CoAnnotation(make_relations(None, tasks), weight=0.5)
        >>> labels = {"expression": np.array([3, 0]), "action_units": np.zeros((2, 14), "float32")}
        >>> weights = {"expression": np.array([1.0, 0.0], "float32"), "action_units": np.array([0.0, 0.0], "float32")}
        >>> new_labels, new_weights, real, _ = co.apply(labels, weights)
        >>> new_weights["action_units"].tolist(), new_labels["expression"].shape
        ([0.5, 0.0], (2, 7))
    """

    def __init__(self, relations: Sequence[Relatedness], weight: float = 0.5, inverse: bool = True,
                 level: str = "sample"):
        if not 0 < float(weight) <= 1:
            raise ValueError(f"weight: expected a weight in (0, 1], got {weight!r}")
        self.relations, self.weight, self.inverse = list(relations), float(weight), bool(inverse)
        self.level = expect_one_of("level", level, LEVELS)
        self._class_losses = {r.target.name: task_loss(r.target) for r in self.relations if self.level == "class"}

    @property
    def class_targets(self) -> list[str]:
        """Tasks whose co-annotated rows are matched by class means (``level="class"``), else none."""
        return list(self._class_losses)

    @property
    def term_names(self) -> list[str]:
        """The loss terms :meth:`class_terms` returns (logged as such)."""
        return [f"coannot_{t}" for t in self.class_targets]

    @property
    def soft_tasks(self) -> set:
        """Classification tasks whose labels become class distributions."""
        return {r.source.name for r in self.relations if self.inverse and r.invertible}

    def apply(self, labels: Mapping, weights: Mapping) -> tuple[dict, dict, dict, dict]:
        """Numpy labels and weights of a source's rows (as :meth:`Source.labels` gives them), co-annotated:
        ``(labels, weights, real, coannotated)``, the last two the masks of a
        :class:`~kfacemtl.data.batch.MaskedWeights` (``real``: 1 where a relation's task has a real label;
        ``coannotated``: 1 where co-annotation filled a class target's label)."""
        real_labels, real_weights = labels, weights
        labels, weights = dict(labels), {k: np.asarray(v, "float32").copy() for k, v in weights.items()}
        real, coannotated = {}, {}
        for r in self.relations:
            for t in (r.source.name, r.target.name):
                real[t] = (np.asarray(real_weights[t]) > 0).astype("float32")
        for name in self.soft_tasks:
            task = next(r.source for r in self.relations if r.source.name == name)
            ids = np.asarray(real_labels[name])
            labels[name] = ids.astype("float32") if ids.ndim == 2 else np.eye(len(task.classes), dtype="float32")[ids.astype(int)]
        for r in self.relations:
            s, t = r.source.name, r.target.name
            ws, wt = np.asarray(real_weights[s]), np.asarray(real_weights[t])
            src_ids = np.asarray(real_labels[s])
            covered = r.known[src_ids.astype(int)] if src_ids.ndim == 1 else np.ones(len(ws), bool)
            fill = (ws > 0) & (wt <= 0) & covered & (weights[t] <= 0)
            if fill.any():
                new = np.asarray(labels[t], "float32").copy().reshape(len(ws), -1)
                new[fill] = np.asarray(r.forward(src_ids[fill]))
                labels[t] = new.reshape(np.shape(labels[t]))
                weights[t][fill] = self.weight * ws[fill]
            if t in self.class_targets:
                coannotated[t] = fill.astype("float32")
            if self.inverse and r.invertible:
                fill = (wt > 0) & (ws <= 0) & (weights[s] <= 0)
                if fill.any():
                    labels[s][fill] = np.asarray(r.inverse(np.asarray(real_labels[t])[fill]))
                    weights[s][fill] = self.weight * wt[fill]
        return labels, weights, real, coannotated

    def split(self, weights: Mapping, coannotated: Mapping) -> tuple[dict, dict]:
        """At ``level="class"``: a batch's task weights without the co-annotated rows of the class targets (the
        per-row losses then see real labels and pseudo-labels only), and those rows' weights by target task;
        ``coannotated`` is the batch's mask of them (:class:`~kfacemtl.data.batch.MaskedWeights`)."""
        weights, moved = dict(weights), {}
        for t in self.class_targets:
            if t in coannotated:
                filled = ops.reshape(coannotated[t], ops.shape(weights[t]))
                moved[t] = weights[t] * filled
                weights[t] = weights[t] * (1.0 - filled)
        return weights, moved

    def class_terms(self, y_true: Mapping, y_pred: Mapping, moved: Mapping) -> dict:
        """``{coannot_<task>: weight × loss}``: for each class target, the task's loss between the class means of
        the co-annotated labels (``d(class, ·)``) and of the predictions over the rows of ``moved`` (weights from
        :meth:`split`), each class weighted by its rows' weight."""
        out = {}
        for r in self.relations:
            t = r.target.name
            if t not in self._class_losses:
                continue
            if t not in moved:  # a batch that co-annotation never saw (no such rows)
                out[f"coannot_{t}"] = ops.zeros(())
                continue
            groups = ops.convert_to_tensor(y_true[r.source.name])
            if len(groups.shape) != 2 or groups.shape[-1] != len(r.source.classes):
                groups = ops.one_hot(ops.cast(ops.reshape(groups, (-1,)), "int32"), len(r.source.classes))
            weights = ops.reshape(moved[t], (-1,))
            wanted, totals = class_means(groups, y_true[t], weights)
            predicted, _ = class_means(groups, y_pred[t], weights)
            out[f"coannot_{t}"] = self.weight * self._class_losses[t](wanted, predicted, totals)
        return out
