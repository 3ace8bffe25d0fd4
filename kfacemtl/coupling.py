"""Coupling related tasks through their labels and predictions (Kollias, Sharmanska & Zafeiriou).

Expressions and action units describe the same faces at two levels; Kollias et al. (arXiv
1910.11111, 2105.03790) let each teach the other, so a dataset labelled only for expressions
still shapes the AU head and vice versa. Four parts, one class each:

- :class:`Relatedness`: ``d(i, k)``, how likely label ``k`` of a target task is given class ``i``
  of a classification task (for a regression target: the target's expected value given ``i``).
  By default, for expressions → action units, the table of Du, Tao & Martinez (PNAS 2014,
  :data:`DU_2014`); any table from a config; or estimated from data that carries both labels.
- :class:`CoAnnotation` (data side): a sample with an expression label and no AU label gets the
  soft AU target ``d(expression, ·)``; a sample with AU labels and no expression label gets the
  soft expression target implied by its AUs (:meth:`Relatedness.inverse`). Weighted, never
  over a real label.
- :class:`DistributionMatching` (loss side): on samples lacking a target label, the target head's
  predictions are matched to the distribution implied by the related head,
  ``q(AU_k | x) = Σ_i p(expression_i | x) · d(i, k)``, with the task's own masked loss (binary
  cross-entropy for AUs, cross-entropy for expressions implied by AU predictions, the regression
  loss for valence/arousal implied by expressions).
- Both at one of two levels: ``"sample"`` (Kollias et al.: each row's target is what its expression
  implies) or ``"class"`` (each expression class's mean AU prediction is matched to ``d(class, ·)``,
  leaving each row free to differ from its class).
- :class:`OutputFusion` (prediction side): at inference, a multilabel head's probabilities combined with the
  ones its related classification head implies, as two independent pieces of evidence (a product of experts),
  so the AU output also carries what the expression head learnt on datasets without AU labels.

Example:
    >>> from kfacemtl.tasks import get_task
    >>> rel = Relatedness.du_2014(get_task("expression"), get_task("action_units"))
    >>> rel.value("happy", "AU12"), rel.value("happy", "AU6"), rel.value("neutral", "AU12")
    (1.0, 0.51, 0.0)
    >>> import numpy as np
    >>> happy = np.eye(7)[[3]]
    >>> [round(float(v), 2) for v in np.asarray(rel.forward(happy))[0, [4, 7]]]   # AU6, AU12
    [0.51, 1.0]
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from kfacemtl.errors import ConfigError, check_choice

# Du, Tao & Martinez (2014), "Compound facial expressions of emotion", PNAS 111(15) E1454-E1462, Table 1, the six
# basic emotions. 1.0: an AU "consistently active", i.e. used by more than 70 % of the 230 subjects (the paper gives no
# exact share; Kollias et al. use 1 as well); a fraction: an AU of the typical inter-subject variability, with the
# share of subjects who used it. Neutral uses no AU. AUs the model does not have (AU10, AU11, AU24 with the default
# 14 action units) are dropped by Relatedness.du_2014, which lists them in ``dropped``.
DU_2014: dict[str, dict[str, float]] = {
    "happy": {"AU12": 1.0, "AU25": 1.0, "AU6": 0.51},
    "sad": {"AU4": 1.0, "AU15": 1.0, "AU1": 0.60, "AU6": 0.50, "AU11": 0.26, "AU17": 0.67},
    "fear": {"AU1": 1.0, "AU4": 1.0, "AU20": 1.0, "AU25": 1.0, "AU2": 0.57, "AU5": 0.63, "AU26": 0.33},
    "angry": {"AU4": 1.0, "AU7": 1.0, "AU24": 1.0, "AU10": 0.26, "AU17": 0.52, "AU23": 0.29},
    "surprise": {"AU1": 1.0, "AU2": 1.0, "AU25": 1.0, "AU26": 1.0, "AU5": 0.66},
    "disgust": {"AU9": 1.0, "AU10": 1.0, "AU17": 1.0, "AU4": 0.31, "AU24": 0.26},
    "neutral": {},
}
TABLES = ("du2014", "estimate")
# Co-annotated batches also carry, in their weights dict, ``REAL + task``: 1 where the row's label of the task is a real
# one (not co-annotated), so distribution matching still covers the rows co-annotation filled.
REAL = "real/"
# and, at the class level, ``COANNOTATED + task``: 1 where co-annotation filled the row's label of the task
COANNOTATED = "coannotated/"
LEVELS = ("sample", "class")  # what a co-annotated label or the implied distribution constrains
FLOOR = 0.05  # d(i, k) is clipped to [FLOOR, 1 - FLOOR] when AUs are turned into an expression distribution


def implied(p, known, matrix):
    """``Σ_i p_i · d(i, ·)`` with ``p`` ``(n, classes)`` renormalised over the ``known`` classes: what a
    :class:`Relatedness` (``d`` = ``matrix``) implies for its target (:meth:`Relatedness.forward`,
    :class:`OutputFusion`).

    Example:
        >>> np.asarray(implied(np.array([[0.5, 0.5]], "float32"), [True, False], np.eye(2, dtype="float32"))).tolist()
        [[1.0, 0.0]]
    """
    from keras import ops
    return ops.matmul(_over_known(p, known), ops.convert_to_tensor(np.asarray(matrix, "float32")))


def _over_known(p, known):
    """Class probabilities ``p`` ``(n, classes)`` restricted to the ``known`` classes and renormalised."""
    from keras import ops
    p = ops.convert_to_tensor(p, "float32") * ops.convert_to_tensor(np.asarray(known, "float32"))
    return p / ops.maximum(ops.sum(p, axis=-1, keepdims=True), 1e-6)


def class_means(groups, values, weights):
    """Weighted means of ``values`` ``(n, k)`` per class, each row counted in the classes of ``groups`` ``(n,
    classes)`` (one-hot or distributions) with its weight ``weights`` ``(n,)``: ``(means (classes, k), totals
    (classes,))``, a class without rows having mean 0 and total 0.

    Example:
        >>> m, w = class_means(np.eye(2, dtype="float32")[[0, 0, 1]], np.array([[1.], [0.], [1.]], "float32"),
        ...                    np.ones(3, "float32"))
        >>> np.asarray(m).ravel().tolist(), np.asarray(w).tolist()
        ([0.5, 1.0], [2.0, 1.0])
    """
    from keras import ops
    gw = ops.convert_to_tensor(groups, "float32") * ops.reshape(ops.convert_to_tensor(weights, "float32"), (-1, 1))
    totals = ops.sum(gw, axis=0)
    means = ops.matmul(ops.transpose(gw), ops.convert_to_tensor(values, "float32"))
    return means / ops.reshape(ops.maximum(totals, 1e-6), (-1, 1)), totals


def _check_kinds(source, target, where: str = "coupling.relations"):
    if source.kind != "classification":
        raise ConfigError(f"{where}.source", f"the source of a relation must be a classification task, "
                                             f"got {source.name} ({source.kind})")
    if target.kind not in ("multilabel", "regression"):
        raise ConfigError(f"{where}.target", f"the target of a relation must be a multilabel or regression task, "
                                             f"got {target.name} ({target.kind})")


class Relatedness:
    """``d(i, k)`` between a classification task (``source``) and a multilabel or regression ``target``.

    Args:
        source: the classification task (e.g. expression).
        target: a multilabel task (``d`` = P(label k | class i)) or a regression task (``d`` = the
            expected values given class i).
        matrix: ``(classes, target width)``.
        known: which source classes the table covers (others are left out of both directions).
        origin: where the values come from, for reports.
        prior: class frequencies used by :meth:`inverse` (default uniform over known classes).

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> rel = Relatedness.from_table({"happy": {"AU12": 0.9}, "neutral": {}}, get_task("expression"),
        ...                              get_task("action_units"))
        >>> rel.known.tolist()
        [False, False, False, True, False, False, True]
    """

    def __init__(self, source, target, matrix, known=None, origin: str = "", prior=None, dropped=()):
        _check_kinds(source, target)
        self.source, self.target = source, target
        self.matrix = np.asarray(matrix, dtype="float32")
        if self.matrix.shape != (len(source.classes), target.output_dim):
            raise ValueError(f"matrix shape {self.matrix.shape}, expected {(len(source.classes), target.output_dim)}")
        self.known = np.ones(len(source.classes), bool) if known is None else np.asarray(known, bool)
        if not self.known.any():
            raise ConfigError("coupling.relations", f"the {source.name} -> {target.name} table covers no class "
                                                    f"of {source.name} {list(source.classes)}")
        self.origin, self.dropped = origin, tuple(dropped)
        prior = np.ones(len(source.classes)) if prior is None else np.asarray(prior, "float64")
        prior = np.where(self.known, np.maximum(prior, 1e-6), 0.0)
        self.prior = (prior / prior.sum()).astype("float32")

    @property
    def name(self) -> str:
        return f"{self.source.name}->{self.target.name}"

    @property
    def label_names(self) -> tuple:
        """Names of the target's values: its labels (multilabel) or its value names (regression)."""
        return self.target.classes if self.target.kind == "multilabel" else self.target.value_names

    @property
    def invertible(self) -> bool:
        """Whether target labels imply a source distribution (multilabel targets: Bayes' rule over ``d``)."""
        return self.target.kind == "multilabel"

    def value(self, class_name: str, label: str) -> float:
        """``d(class, label)``; ``label`` is a multilabel label or a regression value name."""
        return round(float(self.matrix[self.source.classes.index(class_name), self.label_names.index(label)]), 6)

    # --- construction ---------------------------------------------------------------------------------------
    @classmethod
    def du_2014(cls, source, target) -> "Relatedness":
        """The basic-expression table of Du, Tao & Martinez (2014) (:data:`DU_2014`) on the model's classes and AUs.

        Expression classes the table lacks (``contempt``) are not covered; AUs the target lacks are dropped.
        """
        if target.kind != "multilabel":
            raise ConfigError("coupling.relations", f"table du2014 maps expressions to action units; "
                                                    f"{target.name} is a {target.kind} task")
        table = {c: v for c, v in DU_2014.items() if c in source.classes}
        dropped = sorted({au for v in DU_2014.values() for au in v} - set(target.classes),
                         key=lambda au: int(au[2:]) if au[2:].isdigit() else 0)
        rel = cls.from_table({c: {au: p for au, p in v.items() if au in target.classes} for c, v in table.items()},
                             source, target, origin="Du, Tao & Martinez, PNAS 2014, Table 1")
        rel.dropped = tuple(dropped)
        return rel

    @classmethod
    def from_table(cls, table: Mapping, source, target, origin: str = "config") -> "Relatedness":
        """From ``{class: {label: d}}`` (multilabel target; labels not given are 0) or ``{class: [values]}``
        (regression target); classes not given are not covered."""
        where = f"coupling.relations[{source.name}->{target.name}].table"
        if not isinstance(table, Mapping) or not table:
            raise ConfigError(where, f"expected a mapping {{class: ...}}, got {table!r}")
        matrix = np.zeros((len(source.classes), target.output_dim), "float32")
        known = np.zeros(len(source.classes), bool)
        for cls_name, row in table.items():
            if cls_name not in source.classes:
                raise ConfigError(f"{where}.{cls_name}", f"not a class of {source.name} {list(source.classes)}")
            i = source.classes.index(cls_name)
            known[i] = True
            if target.kind == "multilabel":
                if not isinstance(row, Mapping):
                    raise ConfigError(f"{where}.{cls_name}", f"expected {{label: probability}}, got {row!r}")
                for label, p in row.items():
                    if label not in target.classes:
                        raise ConfigError(f"{where}.{cls_name}.{label}", f"not a label of {target.name} "
                                                                         f"{list(target.classes)}")
                    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                        raise ConfigError(f"{where}.{cls_name}.{label}", f"expected a probability in [0, 1], got {p!r}")
                    matrix[i, target.classes.index(label)] = p
            else:
                values = np.asarray(row, dtype="float64") if isinstance(row, (list, tuple)) else None
                lo, hi = target.value_range
                if values is None or values.shape != (target.dim,) or not np.all((values >= lo) & (values <= hi)):
                    raise ConfigError(f"{where}.{cls_name}", f"expected {target.dim} values in [{lo}, {hi}], got {row!r}")
                matrix[i] = values
        return cls(source, target, matrix, known, origin)

    @classmethod
    def estimate(cls, sources: Sequence, source, target, smoothing: float = 1.0, prior=None) -> "Relatedness":
        """Estimate ``d`` from the rows of ``sources`` that carry both labels.

        Multilabel: ``d(i, k) = (count(i and k) + smoothing · prior(i, k)) / (count(i) + smoothing)``, with
        ``prior`` another :class:`Relatedness` (default 0.5 everywhere); regression: the mean target per class
        (classes without rows are not covered). The class frequencies become the prior of :meth:`inverse`.

        Raises:
            ConfigError: no source has a row labelled for both tasks.
        """
        xs, ys, names = [], [], []
        for s in sources:
            labels, weights = s.labels([source, target])
            both = (weights[source.name] > 0) & (weights[target.name] > 0)
            xs.append(labels[source.name][both].astype(int))
            ys.append(labels[target.name][both].astype("float64"))
            if both.any():
                names.append(s.name)
        x, y = np.concatenate(xs), np.concatenate(ys).reshape(-1, target.output_dim)
        if not len(x):
            raise ConfigError(f"coupling.relations[{source.name}->{target.name}].table",
                              f"estimate needs training rows labelled for both {source.name} and {target.name}; "
                              f"no source has one ({[s.name for s in sources]})")
        counts = np.bincount(x, minlength=len(source.classes)).astype("float64")
        sums = np.zeros((len(source.classes), target.output_dim))
        np.add.at(sums, x, y)
        origin = f"estimated from {len(x)} rows of {', '.join(sorted(set(names)))}"
        if target.kind == "multilabel":
            base = np.full(sums.shape, 0.5) if prior is None else prior.matrix.astype("float64")
            matrix = (sums + smoothing * base) / (counts[:, None] + smoothing)
            return cls(source, target, matrix, counts > 0, origin, prior=counts)
        matrix = np.where(counts[:, None] > 0, sums / np.maximum(counts[:, None], 1), 0.0)
        return cls(source, target, matrix, counts > 0, origin, prior=counts)

    # --- the two directions (numpy arrays or tensors in, tensors out) --------------------------------------
    def forward(self, p):
        """Target values implied by source class probabilities ``p`` ``(n, classes)`` (class ids work as one-hot):
        ``Σ_i p_i · d(i, ·)`` over the covered classes, renormalised over them."""
        from keras import ops
        p = ops.convert_to_tensor(p, "float32")
        if len(p.shape) == 1:
            p = ops.one_hot(ops.cast(p, "int32"), len(self.source.classes))
        return implied(p, self.known, self.matrix)

    def inverse(self, a, temperature: float = 1.0):
        """The source distribution implied by target labels or probabilities ``a`` ``(n, K)`` (multilabel targets):
        Bayes' rule with each label independent given the class, P(label k | class i) = ``d(i, k)`` clipped to
        [``FLOOR``, 1 - ``FLOOR``], and ``prior``; labels in between 0 and 1 count by their expectation.
        Uncovered classes get probability 0.

        Example:
            >>> from kfacemtl.tasks import get_task, ACTION_UNITS
            >>> rel = Relatedness.du_2014(get_task("expression"), get_task("action_units"))
            >>> aus = np.zeros((1, len(ACTION_UNITS)), "float32")
            >>> aus[0, [ACTION_UNITS.index(a) for a in ("AU6", "AU12", "AU25")]] = 1
            >>> int(np.argmax(rel.inverse(aus)[0]))   # happy
            3
        """
        from keras import ops
        if not self.invertible:
            raise ValueError(f"{self.name}: only a multilabel target implies a distribution over {self.source.name}")
        a = ops.convert_to_tensor(a, "float32")
        d = np.clip(self.matrix, FLOOR, 1 - FLOOR)
        loglik = ops.matmul(a, ops.convert_to_tensor(np.log(d).T)) + ops.matmul(1 - a, ops.convert_to_tensor(np.log(1 - d).T))
        log_prior = np.where(self.known, np.log(np.maximum(self.prior, 1e-12)), -1e9).astype("float32")
        return ops.softmax((loglik + log_prior) / float(temperature), axis=-1)

    def describe(self) -> dict:
        """A JSON-able summary: tasks, origin, covered classes, the table."""
        return {"source": self.source.name, "target": self.target.name, "origin": self.origin,
                "dropped": list(self.dropped),
                "table": {c: {n: round(float(v), 4) for n, v in zip(self.label_names, row) if v}
                          for c, row, k in zip(self.source.classes, self.matrix, self.known) if k}}


def make_relations(specs, tasks: Sequence, sources: Sequence = ()) -> list[Relatedness]:
    """Relations from config entries ``{source, target, table}`` (table: ``du2014``, ``estimate`` or a mapping).

    ``specs=None`` gives the default: expression → action_units from Du et al. (2014) when the model has both,
    and expression → valence_arousal estimated from ``sources`` when the model has both and a source labels both.

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> [r.name for r in make_relations(None, resolve_tasks(["expression", "action_units"]))]
        ['expression->action_units']
    """
    by_name = {t.name: t for t in tasks}
    if specs is None:
        specs = []
        if "expression" in by_name and "action_units" in by_name:
            specs.append({"source": "expression", "target": "action_units", "table": "du2014"})
        if "expression" in by_name and "valence_arousal" in by_name and any(
                {"expression", "valence_arousal"} <= set(s.tasks) for s in sources):
            specs.append({"source": "expression", "target": "valence_arousal", "table": "estimate"})
    if not isinstance(specs, (list, tuple)):
        raise ConfigError("coupling.relations", f"expected a list of {{source, target, table}}, got {specs!r}")
    relations = []
    for n, spec in enumerate(specs):
        where = f"coupling.relations[{n}]"
        if not isinstance(spec, Mapping) or set(spec) - {"source", "target", "table"} or not {"source", "target"} <= set(spec):
            raise ConfigError(where, f"expected {{source: TASK, target: TASK, table: du2014|estimate|mapping}}, got {spec!r}")
        for key in ("source", "target"):
            if spec[key] not in by_name:
                raise ConfigError(f"{where}.{key}", f"{spec[key]!r} is not a task of the model {sorted(by_name)}")
        source, target, table = by_name[spec["source"]], by_name[spec["target"]], spec.get("table", "du2014")
        _check_kinds(source, target, where)
        if table == "du2014":
            relations.append(Relatedness.du_2014(source, target))
        elif table == "estimate":
            relations.append(Relatedness.estimate(sources, source, target))
        elif isinstance(table, Mapping):
            relations.append(Relatedness.from_table(table, source, target))
        else:
            raise ConfigError(f"{where}.table", f"expected one of {TABLES} or a mapping, got {table!r}")
    names = [r.name for r in relations]
    if len(set(names)) != len(names):
        raise ConfigError("coupling.relations", f"a relation is given twice: {names}")
    return relations


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
        >>> tasks = resolve_tasks(["expression", "action_units"])
        >>> co = CoAnnotation(make_relations(None, tasks), weight=0.5)
        >>> labels = {"expression": np.array([3, 0]), "action_units": np.zeros((2, 14), "float32")}
        >>> weights = {"expression": np.array([1.0, 0.0], "float32"), "action_units": np.array([0.0, 0.0], "float32")}
        >>> new_labels, new_weights = co.apply(labels, weights)
        >>> new_weights["action_units"].tolist(), new_labels["expression"].shape
        ([0.5, 0.0], (2, 7))
    """

    def __init__(self, relations: Sequence[Relatedness], weight: float = 0.5, inverse: bool = True,
                 level: str = "sample"):
        if not 0 < float(weight) <= 1:
            raise ConfigError("coupling.coannotation_weight", f"expected a weight in (0, 1], got {weight!r}")
        self.relations, self.weight, self.inverse = list(relations), float(weight), bool(inverse)
        self.level = check_choice("coupling.level", level, LEVELS)
        from kfacemtl.losses import task_loss
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

    def apply(self, labels: Mapping, weights: Mapping) -> tuple[dict, dict]:
        """Numpy labels and weights of a source's rows (as :meth:`Source.labels` gives them), co-annotated."""
        real_labels, real_weights = labels, weights
        labels, weights = dict(labels), {k: np.asarray(v, "float32").copy() for k, v in weights.items()}
        for r in self.relations:
            for t in (r.source.name, r.target.name):
                weights[REAL + t] = (np.asarray(real_weights[t]) > 0).astype("float32")
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
                weights[COANNOTATED + t] = fill.astype("float32")
            if self.inverse and r.invertible:
                fill = (wt > 0) & (ws <= 0) & (weights[s] <= 0)
                if fill.any():
                    labels[s][fill] = np.asarray(r.inverse(np.asarray(real_labels[t])[fill]))
                    weights[s][fill] = self.weight * wt[fill]
        return labels, weights

    def split(self, weights: Mapping) -> tuple[dict, dict]:
        """At ``level="class"``: a batch's task weights without the co-annotated rows of the class targets (the
        per-row losses then see real labels and pseudo-labels only), and those rows' weights by target task."""
        from keras import ops
        weights, moved = dict(weights), {}
        for t in self.class_targets:
            if COANNOTATED + t in weights:
                filled = ops.reshape(weights[COANNOTATED + t], ops.shape(weights[t]))
                moved[t] = weights[t] * filled
                weights[t] = weights[t] * (1.0 - filled)
        return weights, moved

    def class_terms(self, y_true: Mapping, y_pred: Mapping, moved: Mapping) -> dict:
        """``{coannot_<task>: weight × loss}``: for each class target, the task's loss between the class means of
        the co-annotated labels (``d(class, ·)``) and of the predictions over the rows of ``moved`` (weights from
        :meth:`split`), each class weighted by its rows' weight."""
        from keras import ops
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
        >>> dm = DistributionMatching(make_relations(None, resolve_tasks(["expression", "action_units"])))
        >>> sorted(dm.term_names)
        ['match_action_units', 'match_expression']
    """

    def __init__(self, relations: Sequence[Relatedness], weight: float = 1.0, inverse: bool = True,
                 stop_gradient: bool = False, level: str = "sample"):
        if not float(weight) > 0:
            raise ConfigError("coupling.matching_weight", f"expected a number > 0, got {weight!r}")
        from kfacemtl.losses import task_loss
        self.relations, self.weight = list(relations), float(weight)
        self.inverse, self.stop_gradient = bool(inverse), bool(stop_gradient)
        self.level = check_choice("coupling.level", level, LEVELS)
        self._terms = []  # (name, relation, direction, loss)
        for r in self.relations:
            self._terms.append((f"match_{r.target.name}", r, "forward", task_loss(r.target)))
            if self.inverse and r.invertible:
                self._terms.append((f"match_{r.source.name}", r, "inverse", task_loss(r.source)))
        names = [n for n, *_ in self._terms]
        if len(set(names)) != len(names):
            raise ConfigError("coupling.relations", f"two relations match the same head: {names}")

    @property
    def term_names(self) -> list[str]:
        return [n for n, *_ in self._terms]

    def terms(self, y_pred: Mapping, weights: Mapping) -> dict:
        """``{match_<task>: scalar loss}`` for a batch's predictions and sample weights, keyed by task (and
        ``real/<task>`` where co-annotation filled labels)."""
        from keras import ops
        out = {}
        for name, r, direction, loss in self._terms:
            given, matched = (r.source.name, r.target.name) if direction == "forward" else (r.target.name, r.source.name)
            real = weights.get(REAL + matched, weights[matched])  # a pseudo-label counts as a label
            mask = ops.cast(ops.reshape(real, (-1,)) <= 0, "float32")
            if direction == "forward" and self.level == "class":
                groups = _over_known(ops.stop_gradient(ops.convert_to_tensor(y_pred[given])), r.known)
                predicted, totals = class_means(groups, y_pred[matched], mask)
                out[name] = loss(ops.convert_to_tensor(r.matrix), predicted, totals)
                continue
            q = r.forward(y_pred[given]) if direction == "forward" else r.inverse(y_pred[given])
            if self.stop_gradient:
                q = ops.stop_gradient(q)
            out[name] = loss(q, y_pred[matched], mask)
        return out

    def total(self, y_pred: Mapping, weights: Mapping):
        """``weight`` × the sum of :meth:`terms`, and the terms."""
        from keras import ops
        terms = self.terms(y_pred, weights)
        return self.weight * ops.sum(ops.stack(list(terms.values()))), terms


class OutputFusion:
    """At inference, a multilabel head's probabilities fused with those its related classification head implies.

    For a relation source → target (a multilabel target, e.g. expression → action units), with ``p_k`` the
    target head's probability of label ``k``, ``q_k = forward(p_source)_k`` the probability the source head
    implies and ``m_k`` the label's base rate under the relation (``forward(prior)``), the fused probability
    treats the two as independent evidence about the label (a product of experts, as naive Bayes combines
    them): ``logit(fused_k) = logit(p_k) + logit(q_k) - logit(m_k)``; ``q`` and ``m`` are clipped to
    [``FLOOR``, 1 - ``FLOOR``], so no table entry of 0 or 1 overrules the head. It acts only where the model
    answers (``training=False``: ``predict``, ``evaluate``, exports); training sees the head itself, so the
    head's own loss never learns to lean on the fusion. On the synthetic benchmark the fused AUs are better
    than the AU head on the domains without AU labels, in every seed measured (README: *Coupling related tasks*).

    Args:
        source, target: the tasks' names (the model's output names).
        matrix: ``d``, (source classes, target labels).
        known: the source classes ``d`` covers.
        prior: the source class distribution the base rates are taken under.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> rel = Relatedness.du_2014(get_task("expression"), get_task("action_units"))
        >>> fusion = OutputFusion.from_relation(rel)
        >>> happy = np.eye(7, dtype="float32")[[3]]
        >>> aus = np.full((1, 14), 0.5, "float32")   # an AU head that cannot tell
        >>> out = fusion.apply({"expression": happy, "action_units": aus})
        >>> [round(float(v), 2) for v in np.asarray(out["action_units"])[0, [7, 0]]]   # AU12 up, AU1 down
        [0.99, 0.08]
    """

    def __init__(self, source: str, target: str, matrix, known, prior):
        self.source, self.target = str(source), str(target)
        self.matrix = np.asarray(matrix, "float32")
        self.known = np.asarray(known, bool)
        self.prior = np.asarray(prior, "float32")
        if self.matrix.shape[0] != len(self.known) or self.prior.shape != self.known.shape:
            raise ValueError(f"fusion {self.source}->{self.target}: matrix {self.matrix.shape}, known "
                             f"{self.known.shape} and prior {self.prior.shape} do not fit together")
        self.base_rate = np.asarray(implied(self.prior[None], self.known, self.matrix))[0]

    @classmethod
    def from_relation(cls, relation: Relatedness) -> "OutputFusion":
        if not relation.invertible:
            raise ConfigError("coupling.fuse_outputs", f"{relation.name}: fusing outputs needs a multilabel target "
                                                       f"(e.g. action units), not {relation.target.kind}")
        return cls(relation.source.name, relation.target.name, relation.matrix, relation.known, relation.prior)

    def apply(self, outputs: Mapping) -> dict:
        """``outputs`` (``{task: probabilities}``) with the target's replaced by the fused probabilities."""
        from keras import ops

        def logit(v, floor):
            v = ops.clip(v, floor, 1.0 - floor)
            return ops.log(v) - ops.log(1.0 - v)

        q = implied(outputs[self.source], self.known, self.matrix)
        fused = ops.sigmoid(logit(ops.cast(outputs[self.target], "float32"), 1e-6) + logit(q, FLOOR)
                            - logit(ops.convert_to_tensor(self.base_rate, "float32"), FLOOR))
        return dict(outputs, **{self.target: fused})

    def get_config(self) -> dict:
        return {"source": self.source, "target": self.target, "matrix": self.matrix.tolist(),
                "known": self.known.tolist(), "prior": self.prior.tolist()}

    @classmethod
    def from_config(cls, config: Mapping) -> "OutputFusion":
        return cls(**config)


def make_coupling(cfg: Mapping, tasks: Sequence, sources: Sequence = ()):
    """``(CoAnnotation or None, DistributionMatching or None, [OutputFusion], relations)`` from a config's
    ``coupling`` section (``fuse_outputs``: one :class:`OutputFusion` per relation with a multilabel target).

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> co, dm, fusions, rel = make_coupling({"coannotation": True, "distribution_matching": False,
        ...     "fuse_outputs": True, "relations": None, "coannotation_weight": 0.5, "matching_weight": 1.0,
        ...     "inverse": True, "stop_gradient": False}, resolve_tasks(["expression", "action_units"]))
        >>> type(co).__name__, dm, [(f.source, f.target) for f in fusions]
        ('CoAnnotation', None, [('expression', 'action_units')])
    """
    fuse = bool(cfg.get("fuse_outputs", False))
    if not (cfg["coannotation"] or cfg["distribution_matching"] or fuse):
        return None, None, [], []
    relations = make_relations(cfg["relations"], tasks, sources)
    if not relations:
        raise ConfigError("coupling.relations", "co-annotation, distribution matching and fused outputs need a "
                                                "relation between two tasks of the model (e.g. expression -> "
                                                "action_units)")
    level = cfg.get("level", "sample")
    co = CoAnnotation(relations, cfg["coannotation_weight"], cfg["inverse"], level) if cfg["coannotation"] else None
    dm = DistributionMatching(relations, cfg["matching_weight"], cfg["inverse"], cfg["stop_gradient"],
                              level) if cfg["distribution_matching"] else None
    fusions = [OutputFusion.from_relation(r) for r in relations if r.invertible] if fuse else []
    if fuse and not fusions:
        raise ConfigError("coupling.fuse_outputs", f"no relation has a multilabel target to fuse "
                                                   f"({[r.name for r in relations]}); e.g. expression -> action_units")
    targets = [f.target for f in fusions]
    if len(set(targets)) != len(targets):
        raise ConfigError("coupling.fuse_outputs", f"two relations fuse the same output: {targets}")
    return co, dm, fusions, relations
