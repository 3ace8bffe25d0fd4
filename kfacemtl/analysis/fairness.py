"""Accuracy broken down by group: every task's metrics for each gender and each race (or any classification label
a source carries), and the worst-group gap.

Groups come from the evaluation data's own labels (UTKFace labels every face's gender and race), never from the
model's predictions. A group with fewer than ``min_faces`` labelled faces is shown but left out of the gap.

Example:
    >>> from kfacemtl.data import make_source
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> model = build_model(resolve_tasks(["age", "gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
    >>> result = evaluate_groups(model, [make_source("synthetic:portraits?n=40")], by=["gender"], min_faces=5)
    >>> by_gender = result["portraits-train"]["gender"]
    >>> sorted(by_gender["groups"]), by_gender["gap"]["age"]["metric"]
    (['female', 'male'], 'mae')
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kfacemtl.analysis.evaluation import headline_metric, predictions_of, task_metrics
from kfacemtl.data import Source
from kfacemtl.models import model_tasks
from kfacemtl.tables import text_table
from kfacemtl.tasks import get_task


def evaluate_groups(model, sources: Sequence[Source], by: Sequence[str], tasks=None, batch_size: int = 128,
                    image_size=None, min_faces: int = 20, predicted=None) -> dict:
    """``{source: {attribute: {"groups": {group: {task: metrics}}, "gap": {task: gap}}}}``.

    ``by``: classification tasks whose labels define the groups (``gender``, ``race`` ...), each on its own (not
    crossed). A source that does not label an attribute has no entry for it. Each ``gap`` names the task's
    headline ``metric``, the ``best`` and ``worst`` groups (among those with at least ``min_faces`` faces for the
    task) and the ``gap`` between them (always ≥ 0: accuracy points, or years of MAE). ``predicted``: the sources'
    predictions by name, when already made (:func:`~kfacemtl.analysis.evaluation.predictions_of`).

    Example:
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> by_race = evaluate_groups(model, [make_source("synthetic:portraits?n=30")], by=["race"])["portraits-train"]
        >>> sum(m["gender"]["n"] for m in by_race["race"]["groups"].values())     # every face in one group
        30
    """
    tasks = list(tasks or model_tasks(model))
    attributes = [get_task(name) for name in by]
    for a in attributes:
        if a.kind != "classification":
            raise ValueError(f"by: {a.name} is not a classification task; groups come from class labels")
    out = {}
    for source in sources:
        labels, weights = source.labels(attributes)
        answers = predictions_of(model, source, tasks, batch_size, image_size, predicted)
        _, task_weights = source.labels(tasks)
        entry = {}
        for a in attributes:
            has = weights[a.name] > 0
            if not has.any():
                continue
            groups, gap = {}, {}
            for k, group in enumerate(a.classes):
                in_group = has & (labels[a.name] == k)
                metrics = {}
                for name, (task, _, _) in answers.items():
                    rows = in_group[task_weights[name] > 0]  # the task's labelled rows that are in the group
                    if rows.any():
                        _, y, p = answers[name]
                        m = task_metrics(task, y[rows], p[rows])
                        metrics[name] = {k2: v for k2, v in m.items() if k2 != "confusion"}
                if metrics:
                    groups[group] = metrics
            for name, (task, _, _) in answers.items():
                metric = headline_metric(task)
                scores = {g: m[name][metric] for g, m in groups.items()
                          if name in m and m[name]["n"] >= min_faces and np.isfinite(m[name][metric])}
                if len(scores) >= 2:
                    lower_better = metric == "mae"
                    best = (min if lower_better else max)(scores, key=scores.get)
                    worst = (max if lower_better else min)(scores, key=scores.get)
                    gap[name] = {"metric": metric, "best": best, "worst": worst,
                                 "gap": float(abs(scores[best] - scores[worst]))}
            entry[a.name] = {"groups": groups, "gap": gap, "min_faces": min_faces}
        out[source.name] = entry
    return out


def format_groups(results: dict) -> str:
    """One table per source and attribute: a row per task and group with its headline metric and faces, then the
    worst-group gap.

    Example:
        >>> r = {"utk": {"gender": {"groups": {"male": {"age": {"mae": 6.1, "n": 50}},
        ...                                    "female": {"age": {"mae": 6.9, "n": 40}}},
        ...                         "gap": {"age": {"metric": "mae", "best": "male", "worst": "female", "gap": 0.8}}}}}
        >>> print(format_groups(r))
        utk by gender
        task  metric  male        female      worst-group gap
        ----  ------  ----------  ----------  ---------------
        age   mae     6.100 (50)  6.900 (40)  0.800 (female)
    """
    blocks = []
    for source, entry in results.items():
        for attribute, result in entry.items():
            groups = list(result["groups"])
            names = list(dict.fromkeys(t for g in groups for t in result["groups"][g]))
            rows = []
            for name in names:
                metric = result["gap"].get(name, {}).get("metric") or next(
                    k for k in ("accuracy", "mean_f1", "mae", "mean_ccc") if k in next(
                        result["groups"][g][name] for g in groups if name in result["groups"][g]))
                cells = [f"{result['groups'][g][name][metric]:.3f} ({result['groups'][g][name]['n']})"
                         if name in result["groups"][g] else "-" for g in groups]
                gap = result["gap"].get(name)
                rows.append([name, metric, *cells, f"{gap['gap']:.3f} ({gap['worst']})" if gap else "-"])
            blocks.append(f"{source} by {attribute}\n" + text_table(["task", "metric", *groups, "worst-group gap"],
                                                                    rows))
    return "\n\n".join(blocks)
