"""Evaluation per source and task: the numbers a face-analysis paper reports.

- classification: accuracy, macro-F1 (over the classes present in labels or predictions), the expected
  calibration error (``ece``, 15 bins), plus a confusion matrix;
- regression: MAE and RMSE per value (age in years); for valence/arousal also CCC per value
  and their mean;
- multilabel: F1 per label at 0.5 and their mean (over labels with a positive or a prediction);
- always ``n``: the number of labelled samples the numbers are computed on.

Results are shaped ``{source: {task: {metric: value, "n": count}}}``.

Example:
    >>> import numpy as np
    >>> from kfacemtl.analysis.evaluation import classification_metrics
    >>> m = classification_metrics(np.array([0, 1, 1]), np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]]))
    >>> round(m["accuracy"], 3), m["n"]
    (0.667, 3)
"""
from __future__ import annotations

import json
import math
from typing import Mapping, Sequence

import numpy as np

from kfacemtl.data import Source, make_dataset
from kfacemtl.models import model_tasks
from kfacemtl.models.answers import interval_scale
from kfacemtl.models.views import predict_batches, tta_views, view_predictor
from kfacemtl.tables import text_table
from kfacemtl.tasks import Task


def _f1(tp, fp, fn):
    denom = 2 * tp + fp + fn
    return float(2 * tp / denom) if denom else 0.0


def confusion_matrix(y_true, y_pred, n_classes) -> np.ndarray:
    """Rows: true class, columns: predicted class.

    Example:
        >>> confusion_matrix([0, 1, 1], [0, 0, 1], 2).tolist()
        [[1, 0], [1, 1]]
    """
    cm = np.zeros((n_classes, n_classes), dtype="int64")
    np.add.at(cm, (np.asarray(y_true, int), np.asarray(y_pred, int)), 1)
    return cm


def classification_metrics(y_true, probs) -> dict:
    """Accuracy, macro-F1 and the confusion matrix of class ids vs. class probabilities.

    Example:
        >>> m = classification_metrics(np.array([0, 1]), np.array([[0.8, 0.2], [0.6, 0.4]]))
        >>> m["accuracy"], m["n"]
        (0.5, 2)
    """
    y_true = np.asarray(y_true, int)
    pred = np.argmax(probs, axis=-1)
    cm = confusion_matrix(y_true, pred, probs.shape[-1])
    present = (cm.sum(0) + cm.sum(1)) > 0
    f1 = [_f1(cm[k, k], cm[:, k].sum() - cm[k, k], cm[k, :].sum() - cm[k, k]) for k in np.flatnonzero(present)]
    return {"accuracy": float(np.mean(pred == y_true)) if len(y_true) else math.nan,
            "macro_f1": float(np.mean(f1)) if f1 else math.nan,
            "ece": expected_calibration_error(y_true, probs) if len(y_true) else math.nan, "n": int(len(y_true)),
            "confusion": cm.tolist()}


def reliability(y_true, probs, bins: int = 15) -> dict:
    """The reliability curve of class probabilities: faces binned by their top probability (``bins`` equal
    widths over [0, 1]); per bin the mean ``confidence``, the ``accuracy`` and the ``count`` (empty bins left out).

    Example:
        >>> r = reliability([0, 1, 1, 0], np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]), bins=10)
        >>> r["confidence"], r["accuracy"], r["count"]
        ([0.6, 0.7, 0.8, 0.9], [1.0, 1.0, 0.0, 1.0], [1, 1, 1, 1])
    """
    probs = np.asarray(probs, np.float64)
    confidence, correct = probs.max(-1), probs.argmax(-1) == np.asarray(y_true, int)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    kept = [b for b in range(bins) if np.any(which == b)]
    return {"confidence": [round(float(confidence[which == b].mean()), 6) for b in kept],
            "accuracy": [round(float(correct[which == b].mean()), 6) for b in kept],
            "count": [int(np.sum(which == b)) for b in kept]}


def expected_calibration_error(y_true, probs, bins: int = 15) -> float:
    """Expected calibration error: over ``bins`` equal-width bins of the top probability, the gap between mean
    confidence and accuracy, weighted by the share of faces in the bin (0: probabilities that mean what they say).

    Example:
        >>> round(expected_calibration_error([0, 1, 1, 0], np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]]),
        ...                                  bins=10), 3)     # (0.1 + 0.8 + 0.3 + 0.4) / 4
        0.4
    """
    r = reliability(y_true, probs, bins)
    n = sum(r["count"])
    return float(sum(c * abs(p - a) for p, a, c in zip(r["confidence"], r["accuracy"], r["count"])) / n)


def regression_metrics(y_true, y_pred, names: Sequence[str] = (), ccc: bool = False) -> dict:
    """MAE and RMSE (per value when there are several), and CCC when asked.

    Example:
        >>> m = regression_metrics(np.array([[10.0], [20.0]]), np.array([[12.0], [16.0]]))
        >>> m["mae"], m["n"]
        (3.0, 2)
    """
    y_true = np.asarray(y_true, float).reshape(len(y_true), -1)
    y_pred = np.asarray(y_pred, float).reshape(len(y_pred), -1)
    names = list(names) or [f"v{i}" for i in range(y_true.shape[1])]
    out = {}
    err = y_pred - y_true
    for i, name in enumerate(names):
        prefix = "" if len(names) == 1 else f"{name}_"
        out[f"{prefix}mae"] = float(np.mean(np.abs(err[:, i])))
        out[f"{prefix}rmse"] = float(np.sqrt(np.mean(err[:, i] ** 2)))
        if ccc:
            out[f"{prefix}ccc"] = concordance_cc(y_true[:, i], y_pred[:, i])
    if ccc and len(names) > 1:
        out["mean_ccc"] = float(np.mean([out[f"{n}_ccc"] for n in names]))
    out["n"] = int(len(y_true))
    return out


def concordance_cc(x, y) -> float:
    """Lin's concordance correlation coefficient.

    Example:
        >>> concordance_cc(np.array([0.1, 0.5, 0.9]), np.array([0.1, 0.5, 0.9]))
        1.0
    """
    x, y = np.asarray(x, float), np.asarray(y, float)
    if len(x) < 2:
        return math.nan
    mx, my = x.mean(), y.mean()
    cov = np.mean((x - mx) * (y - my))
    denom = x.var() + y.var() + (mx - my) ** 2
    return float(2 * cov / denom) if denom > 0 else math.nan


def multilabel_metrics(y_true, probs, names: Sequence[str], threshold: float = 0.5) -> dict:
    """F1 per label at ``threshold`` and the mean over labels that occur (truth or prediction).

    Example:
        >>> m = multilabel_metrics(np.array([[1, 0], [1, 1]]), np.array([[0.9, 0.1], [0.7, 0.2]]), ["AU6", "AU12"])
        >>> round(m["f1_AU6"], 2), m["n"]
        (1.0, 2)
    """
    y_true = np.asarray(y_true) >= 0.5
    pred = np.asarray(probs) >= threshold
    out, used = {}, []
    for k, name in enumerate(names):
        tp = int(np.sum(y_true[:, k] & pred[:, k]))
        fp = int(np.sum(~y_true[:, k] & pred[:, k]))
        fn = int(np.sum(y_true[:, k] & ~pred[:, k]))
        out[f"f1_{name}"] = _f1(tp, fp, fn)
        if tp + fp + fn:
            used.append(out[f"f1_{name}"])
    out["mean_f1"] = float(np.mean(used)) if used else math.nan
    out["n"] = int(len(y_true))
    return out


def task_metrics(task: Task, y_true, y_pred) -> dict:
    """The metrics of one task on its labelled rows.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> task_metrics(get_task("gender"), np.array([0, 1]), np.array([[0.9, 0.1], [0.3, 0.7]]))["accuracy"]
        1.0
    """
    if task.kind == "classification":
        return classification_metrics(y_true, y_pred)
    if task.kind == "multilabel":
        return multilabel_metrics(y_true, y_pred, task.classes)
    return regression_metrics(y_true, y_pred, task.value_names, ccc=task.name == "valence_arousal" or task.dim > 1)


HEADLINE = {"classification": "accuracy", "multilabel": "mean_f1"}


def headline_metric(task: Task) -> str:
    """The one metric a summary table shows for a task.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> [headline_metric(get_task(t)) for t in ("expression", "action_units", "age", "valence_arousal")]
        ['accuracy', 'mean_f1', 'mae', 'mean_ccc']
    """
    if task.kind in HEADLINE:
        return HEADLINE[task.kind]
    return "mean_ccc" if task.dim > 1 else "mae"


def evaluate_sources(model, sources: Sequence[Source], tasks: Sequence[Task] | None = None,
                     batch_size: int = 128, image_size=None, predicted: Mapping[str, dict] | None = None,
                     tta: str | None = None) -> dict:
    """Predict every source and compute each task's metrics on its labelled rows.

    Tasks a source does not label are left out of its entry. ``predicted``: the sources'
    :func:`labelled_predictions` by source name, when they were already made (no second pass over the images).
    ``tta``: test-time augmentation, the answers averaged over views of each face (``"flip"``: the face and its
    mirror; ``"six"``: :data:`~kfacemtl.models.views.TTA_VIEWS`); default none.

    Returns:
        ``{source_name: {task_name: {metric: value, "n": count}}}`` (classification entries
        also hold ``confusion``).

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(32, 32, 3), widths=(8,), depths=1,
        ...                     embedding_dim=8, head_units=4)
        >>> results = evaluate_sources(model, [make_source("synthetic:portraits?split=test&n=8")])
        >>> sorted(results["portraits-test"]["gender"])
        ['accuracy', 'confusion', 'ece', 'macro_f1', 'n']
    """
    tasks = list(tasks or model_tasks(model))
    intervals = getattr(model, "intervals", {})
    results = {}
    for src in sources:
        entry = results[src.name] = {}
        for name, (task, y, p) in predictions_of(model, src, tasks, batch_size, image_size, predicted, tta).items():
            entry[name] = task_metrics(task, y, p)
            if name in intervals:  # how often the interval holds the truth, and how wide it is
                entry[name].update(interval_metrics(task, y, p, intervals[name]))
    return results


def predictions_of(model, source: Source, tasks=None, batch_size: int = 128, image_size=None,
                   predicted: Mapping[str, dict] | None = None, tta: str | None = None) -> dict:
    """``predicted[source.name]`` when given, else :func:`labelled_predictions` of the source: what the evaluations
    share, so that a command that reports several things about one model and one set predicts it once.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> source = make_source("synthetic:portraits?n=6")
        >>> once = {source.name: labelled_predictions(model, source)}
        >>> predictions_of(model, source, predicted=once) is once[source.name]
        True
    """
    if predicted is not None:
        return predicted[source.name]
    return labelled_predictions(model, source, tasks, batch_size, image_size, tta)


def interval_metrics(task: Task, y_true, y_pred, q) -> dict:
    """``interval_coverage`` (the share of faces whose true value lies in the head's interval) and
    ``interval_width`` (its mean width) of a regression head with interval ``q`` = (q_low, q_high).

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> interval_metrics(get_task("age"), np.array([20.0, 50.0]), np.array([[22.0], [30.0]]), (-0.2, 0.2))
        {'interval_coverage': 0.5, 'interval_width': 15.2}
    """
    pred = np.asarray(y_pred, np.float64).reshape(-1)
    scale = interval_scale(task, pred)
    low, high = np.clip(pred + q[0] * scale, *task.value_range), np.clip(pred + q[1] * scale, *task.value_range)
    y = np.asarray(y_true, np.float64).reshape(-1)
    return {"interval_coverage": float(np.mean((y >= low) & (y <= high))),
            "interval_width": round(float(np.mean(high - low)), 4)}


def labelled_predictions(model, source: Source, tasks: Sequence[Task] | None = None, batch_size: int = 128,
                         image_size=None, tta: str | None = None, keep_views: bool = False) -> dict:
    """``{task: (task, labels, predictions)}`` on the rows of ``source`` labelled for each task the model has;
    with ``tta`` (a name of :data:`~kfacemtl.models.views.TTA_VIEWS`, or a tuple of views), each prediction is the
    mean over its views, or with ``keep_views`` the views' own answers, ``(views, faces, ...)``: each image decoded
    once for all of them.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender", "expression"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> out = labelled_predictions(model, make_source("synthetic:portraits?n=6"))
        >>> {name: p.shape for name, (task, y, p) in out.items()}     # portraits label gender, not expression
        {'gender': (6, 2)}
        >>> flip = labelled_predictions(model, make_source("synthetic:portraits?n=6"), tta="flip")
        >>> bool(np.all(flip["gender"][2] != out["gender"][2]))        # the face and its mirror, averaged
        True
        >>> kept = labelled_predictions(model, make_source("synthetic:portraits?n=6"), tta="flip", keep_views=True)
        >>> kept["gender"][2].shape, bool(np.allclose(kept["gender"][2].mean(0), flip["gender"][2], atol=1e-6))
        ((2, 6, 2), True)
    """
    tasks = list(tasks or model_tasks(model))
    views = tta_views(tta)
    if keep_views and views is None:
        raise ValueError(f"keep_views: needs views to keep (tta is {tta!r})")
    image_size = image_size or tuple(model.input_shape[1:3])
    ds = make_dataset([source], tasks, batch_size=batch_size, image_size=image_size, training=False)
    images = ds.map(lambda x, y, w: x)
    if views is None:
        preds = model.predict(images, verbose=0)
        preds = preds if isinstance(preds, (list, tuple)) else [preds]
    else:
        preds = predict_batches(view_predictor(model, views, keep_views), images)
    by_name = dict(zip(model.output_names, preds))
    labels, weights = source.labels(tasks)
    out = {}
    for task in tasks:
        rows = weights[task.name] > 0
        if task.name in by_name and rows.any():
            p = by_name[task.name]
            out[task.name] = (task, labels[task.name][rows], p[:, rows] if keep_views else p[rows])
    return out


def format_table(results: dict, tasks: Sequence[Task]) -> str:
    """A plain-text table: one row per source, one column per task's headline metric.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> print(format_table({"lab": {"gender": {"accuracy": 0.5, "n": 2}}}, [get_task("gender")]))
        source  gender acc
        ------  ----------
        lab     0.500 (2)
    """
    short = {"accuracy": "acc", "mean_f1": "mean F1", "mae": "MAE", "mean_ccc": "mean CCC"}
    header = ["source"] + [f"{t.name} {short[headline_metric(t)]}" for t in tasks]
    rows = []
    for src, entry in results.items():
        row = [src]
        for t in tasks:
            m = entry.get(t.name)
            row.append("-" if m is None else f"{m[headline_metric(t)]:.3f} ({m['n']})")
        rows.append(row)
    return text_table(header, rows)


def compare_results(baseline: dict, results: dict, tasks: Sequence[Task]) -> list[dict]:
    """Line up two :func:`evaluate_sources` results on each task's headline metric.

    One row per task and source that both evaluated: ``baseline`` and ``model`` values, their
    ``delta`` (positive where ``results`` is better: higher accuracy, F1 or CCC, lower MAE),
    the metric's name and the number of labelled rows.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> single = {"utk": {"age": {"mae": 7.0, "n": 10}}, "fer": {"expression": {"accuracy": 0.50, "n": 20}}}
        >>> multi = {"utk": {"age": {"mae": 6.5, "n": 10}}, "fer": {"expression": {"accuracy": 0.45, "n": 20}}}
        >>> for r in compare_results(single, multi, [get_task("age"), get_task("expression")]):
        ...     print(r["task"], r["source"], r["metric"], round(r["delta"], 2))
        age utk mae 0.5
        expression fer accuracy -0.05
    """
    rows = []
    for task in tasks:
        metric = headline_metric(task)
        for source, entry in results.items():
            if task.name not in entry or task.name not in baseline.get(source, {}):
                continue
            base, value = baseline[source][task.name][metric], entry[task.name][metric]
            rows.append({"task": task.name, "source": source, "metric": metric, "n": entry[task.name]["n"],
                         "baseline": base, "model": value, "delta": base - value if metric == "mae" else value - base})
    return rows


def to_json(results: dict, drop_confusion: bool = True) -> str:
    """JSON text of results (confusion matrices dropped unless asked).

    Example:
        >>> print(to_json({"lab": {"gender": {"accuracy": 0.5, "n": 2, "confusion": [[1, 1], [0, 0]]}}}))
        {
          "lab": {
            "gender": {
              "accuracy": 0.5,
              "n": 2
            }
          }
        }
    """
    clean = {s: {t: {k: v for k, v in m.items() if not (drop_confusion and k == "confusion")}
                 for t, m in e.items()} for s, e in results.items()}
    return json.dumps(clean, indent=2, allow_nan=True)
