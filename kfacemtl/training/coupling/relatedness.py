"""How labels of two related tasks imply each other: ``d(i, k)`` between a classification task and a multilabel or
regression task, from Du, Tao & Martinez (2014), a config table, or estimated from data.

Example:
    >>> from kfacemtl.tasks import get_task
    >>> rel = Relatedness.du_2014(get_task("expression"), get_task("action_units"))
    >>> rel.value("happy", "AU12"), rel.value("neutral", "AU12")
    (1.0, 0.0)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
from keras import ops

from kfacemtl.errors import ConfigError, under_key
from kfacemtl.models.fusion import FLOOR, implied


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


LEVELS = ("sample", "class")  # what a co-annotated label or the implied distribution constrains


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
    gw = ops.convert_to_tensor(groups, "float32") * ops.reshape(ops.convert_to_tensor(weights, "float32"), (-1, 1))
    totals = ops.sum(gw, axis=0)
    means = ops.matmul(ops.transpose(gw), ops.convert_to_tensor(values, "float32"))
    return means / ops.reshape(ops.maximum(totals, 1e-6), (-1, 1)), totals


def _check_kinds(source, target):
    if source.kind != "classification":
        raise ValueError(f"source: the source of a relation must be a classification task, "
                         f"got {source.name} ({source.kind})")
    if target.kind not in ("multilabel", "regression"):
        raise ValueError(f"target: the target of a relation must be a multilabel or regression task, "
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
            raise ValueError(f"table: the {source.name} -> {target.name} table covers no class "
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
            raise ValueError(f"table: du2014 maps expressions to action units; {target.name} is a {target.kind} task")
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
        if not isinstance(table, Mapping) or not table:
            raise ValueError(f"table: expected a mapping {{class: ...}}, got {table!r}")
        matrix = np.zeros((len(source.classes), target.output_dim), "float32")
        known = np.zeros(len(source.classes), bool)
        for cls_name, row in table.items():
            if cls_name not in source.classes:
                raise ValueError(f"table.{cls_name}: not a class of {source.name} {list(source.classes)}")
            i = source.classes.index(cls_name)
            known[i] = True
            if target.kind == "multilabel":
                if not isinstance(row, Mapping):
                    raise ValueError(f"table.{cls_name}: expected {{label: probability}}, got {row!r}")
                for label, p in row.items():
                    if label not in target.classes:
                        raise ValueError(f"table.{cls_name}.{label}: not a label of {target.name} "
                                         f"{list(target.classes)}")
                    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p <= 1:
                        raise ValueError(f"table.{cls_name}.{label}: expected a probability in [0, 1], got {p!r}")
                    matrix[i, target.classes.index(label)] = p
            else:
                values = np.asarray(row, dtype="float64") if isinstance(row, (list, tuple)) else None
                lo, hi = target.value_range
                if values is None or values.shape != (target.dim,) or not np.all((values >= lo) & (values <= hi)):
                    raise ValueError(f"table.{cls_name}: expected {target.dim} values in [{lo}, {hi}], got {row!r}")
                matrix[i] = values
        return cls(source, target, matrix, known, origin)

    @classmethod
    def estimate(cls, sources: Sequence, source, target, smoothing: float = 1.0, prior=None) -> "Relatedness":
        """Estimate ``d`` from the rows of ``sources`` that carry both labels.

        Multilabel: ``d(i, k) = (count(i and k) + smoothing · prior(i, k)) / (count(i) + smoothing)``, with
        ``prior`` another :class:`Relatedness` (default 0.5 everywhere); regression: the mean target per class
        (classes without rows are not covered). The class frequencies become the prior of :meth:`inverse`.

        Raises:
            ValueError: no source has a row labelled for both tasks.
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
            raise ValueError(f"table: estimate needs training rows labelled for both {source.name} and {target.name}; "
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
        with under_key(where):  # the plain errors of Relatedness name the entry's keys (source, target, table)
            _check_kinds(source, target)
            if table == "du2014":
                relations.append(Relatedness.du_2014(source, target))
            elif table == "estimate":
                relations.append(Relatedness.estimate(sources, source, target))
            elif isinstance(table, Mapping):
                relations.append(Relatedness.from_table(table, source, target))
            else:
                raise ValueError(f"table: expected one of {TABLES} or a mapping, got {table!r}")
    names = [r.name for r in relations]
    if len(set(names)) != len(names):
        raise ConfigError("coupling.relations", f"a relation is given twice: {names}")
    return relations
