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
    >>> from kfacemtl.training.coupling import Relatedness
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

from kfacemtl.errors import ConfigError, under_key
from kfacemtl.models.fusion import OutputFusion
from kfacemtl.training.coupling.coannotation import CoAnnotation
from kfacemtl.training.coupling.matching import DistributionMatching
from kfacemtl.training.coupling.relatedness import DU_2014, LEVELS, TABLES, Relatedness, class_means, make_relations

__all__ = ["CoAnnotation", "DistributionMatching", "DU_2014", "LEVELS", "TABLES", "Relatedness", "class_means",
           "make_relations", "OutputFusion", "make_coupling"]


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
    with under_key("coupling", weight="coannotation_weight"):
        co = CoAnnotation(relations, cfg["coannotation_weight"], cfg["inverse"], level) if cfg["coannotation"] else None
    with under_key("coupling", weight="matching_weight"):
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
