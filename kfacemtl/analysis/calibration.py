"""Answers you can trust: temperature scaling of the classification heads, fitted on validation data.

A network trained with cross-entropy is often over-confident: of the faces it calls "happy" with probability 0.9,
fewer than 90 % are happy. Temperature scaling (Guo et al. 2017, "On Calibration of Modern Neural Networks") divides
each head's logits by one number T, fitted to minimise the negative log-likelihood on validation faces; accuracy does
not change (the largest logit stays the largest). :func:`calibrate` fits T per classification head on the given
sources and sets it on the model (:meth:`~kfacemtl.models.MultiTaskModel.set_temperatures`), which saves and exports
it. The expected calibration error (:func:`~kfacemtl.analysis.evaluation.expected_calibration_error`) measures what
it changed.

Example:
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> logits = rng.normal(0, 1.5, (4000, 3))
    >>> truth = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)      # the classes' real probabilities
    >>> labels = np.array([rng.choice(3, p=p) for p in truth])
    >>> probs = rescaled(truth, 1 / 3)                                        # a head three times too sure
    >>> t = fit_temperature(labels, probs)
    >>> before = expected_calibration_error(labels, probs)
    >>> after = expected_calibration_error(labels, rescaled(probs, t))
    >>> 2.8 < t < 3.2, before > 0.1, after < 0.03                           # T found, and the error gone
    (True, True, True)
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from kfacemtl.analysis.evaluation import (expected_calibration_error, interval_metrics, labelled_predictions,
                                          predictions_of, reliability)
from kfacemtl.analysis.plots import plot_reliability
from kfacemtl.data import Source
from kfacemtl.files import atomic_write, atomic_write_text
from kfacemtl.models import model_tasks
from kfacemtl.models.answers import interval_scale
from kfacemtl.models.views import tta_views
from kfacemtl.tables import text_table

#: Temperatures searched (log-spaced), then refined around the best.
SEARCH = (0.05, 20.0)


def rescaled(probs, temperature: float) -> np.ndarray:
    """Class probabilities at another temperature: ``softmax(log(probs) / temperature)``.

    Example:
        >>> rescaled(np.array([[0.8, 0.2]]), 1e9).round(3).tolist()
        [[0.5, 0.5]]
    """
    logp = np.log(np.maximum(np.asarray(probs, np.float64), 1e-30)) / temperature
    logp -= logp.max(-1, keepdims=True)
    p = np.exp(logp)
    return p / p.sum(-1, keepdims=True)


def averaged(probs) -> np.ndarray:
    """The answer of ``(V, N, ...)`` views: their mean over V; ``(N, C)`` probabilities as they are.

    Example:
        >>> averaged(np.array([[[1.0, 0.0]], [[0.5, 0.5]]])).tolist()
        [[0.75, 0.25]]
    """
    probs = np.asarray(probs)
    return probs.mean(0) if probs.ndim == 3 else probs


def nll(y_true, probs) -> float:
    """Mean negative log-likelihood of the true classes.

    Example:
        >>> round(nll([0, 1], np.array([[0.5, 0.5], [0.5, 0.5]])), 4)
        0.6931
    """
    p = np.asarray(probs, np.float64)[np.arange(len(y_true)), np.asarray(y_true, int)]
    return float(-np.mean(np.log(np.maximum(p, 1e-30))))


def fit_temperature(y_true, probs) -> float:
    """The temperature T that minimises the negative log-likelihood of ``softmax(log(probs) / T)`` (``probs`` at
    T = 1, as the head gives them uncalibrated): a log-spaced search over :data:`SEARCH`, then a golden-section
    refinement. ``probs`` ``(N, C)``, or ``(V, N, C)``: each face under V views (test-time augmentation), whose
    answer is the mean of the V rescaled views, so T is fitted to the answers as they are averaged.

    Example:
        >>> fit_temperature([0, 0, 1], np.array([[0.99, 0.01], [0.98, 0.02], [0.97, 0.03]])) > 1   # over-confident
        True
    """
    y_true = np.asarray(y_true, int)
    if len(y_true) == 0:
        raise ValueError("y_true: no labelled faces to fit a temperature on")
    loss = lambda t: nll(y_true, averaged(rescaled(probs, t)))  # noqa: E731
    grid = np.geomspace(*SEARCH, 61)
    k = int(np.argmin([loss(t) for t in grid]))
    lo, hi = np.log(grid[max(k - 1, 0)]), np.log(grid[min(k + 1, len(grid) - 1)])
    golden = (np.sqrt(5) - 1) / 2
    for _ in range(40):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        if loss(np.exp(a)) < loss(np.exp(b)):
            hi = b
        else:
            lo = a
    return float(np.exp((lo + hi) / 2))


def fit_interval(task, y_true, y_pred, coverage: float = 0.9) -> tuple:
    """``(q_low, q_high)`` such that value + q × :func:`~kfacemtl.models.answers.interval_scale` holds the true
    value of a ``coverage`` share of faces like these (split conformal prediction: the quantiles of the scaled
    errors, with the finite-sample correction; each end leaves out (1 − coverage) / 2).

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> rng = np.random.default_rng(0)
        >>> pred = rng.uniform(5, 70, 5000); truth = pred + rng.normal(0, 0.15, 5000) * (pred + 12)
        >>> q = fit_interval(get_task("age"), truth, pred)
        >>> -0.27 < q[0] < -0.22, 0.22 < q[1] < 0.27                  # about ±1.645 × 0.15
        (True, True)
    """
    if not 0 < coverage < 1:
        raise ValueError(f"coverage: expected a share between 0 and 1; got {coverage}")
    pred = np.asarray(y_pred, np.float64).reshape(-1)
    scaled = (np.asarray(y_true, np.float64).reshape(-1) - pred) / interval_scale(task, pred)
    n = len(scaled)
    if n < 20:
        raise ValueError(f"y_true: {n} labelled faces are too few to fit an interval (at least 20)")
    tail = (1 - coverage) / 2
    level = min(1.0, np.ceil((n + 1) * (1 - tail)) / n)  # conformal: a little wider than the sample's quantile
    return float(np.quantile(scaled, 1 - level)), float(np.quantile(scaled, level))


def calibrate(model, sources: Sequence[Source], batch_size: int = 128, image_size=None, coverage: float = 0.9,
              tta: str | None = None) -> dict:
    """Fit a temperature for each classification head of ``model``, and an interval holding ``coverage`` of the
    true values for each single-value regression head (age), on the rows of ``sources`` labelled for it (all sources
    pooled); set them on the model and return per task what changed. A class head: ``temperature``, ``n``, ``ece``
    and ``nll`` ``before`` and ``after``, ``accuracy`` (unchanged) and the reliability curves ``before`` and
    ``after``; a regression head: ``interval`` (q_low, q_high), ``coverage_target``, ``n``, and the
    ``interval_coverage`` and ``interval_width`` on these faces.

    Use validation data (for example a source's ``...&val_fraction=0.1&part=val``), never the test set that reports
    the result. Heads already calibrated are fitted again from their uncalibrated outputs. With ``tta`` (a name of
    :data:`~kfacemtl.models.views.TTA_VIEWS`) everything is fitted to the answers as test-time augmentation gives them
    (the views' mean, each view at the temperature), for a model that will answer so (``evaluate --tta``,
    ``export --tta``): averaged views are less sure than one, and a temperature fitted without them leaves them
    under-confident.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> report = calibrate(model, [make_source("synthetic:portraits?n=32")])
        >>> sorted(report), model.temperatures["gender"] == report["gender"]["temperature"], "age" in model.intervals
        (['age', 'gender'], True, True)
        >>> calibrate(model, [make_source("synthetic:portraits?n=32")], tta="flip")["gender"]["tta"]
        'flip'
    """
    heads = [t for t in model_tasks(model) if t.kind == "classification" or (t.kind == "regression" and t.dim == 1)]
    if not heads:
        raise ValueError("model: it has no classification or single-value regression head to calibrate")
    current = model.temperatures
    views = tta_views(tta)
    pooled = {t.name: (t, [], []) for t in heads}
    for source in sources:
        answers = labelled_predictions(model, source, heads, batch_size, image_size, tta=views,
                                       keep_views=views is not None)
        for name, (task, y, p) in answers.items():
            pooled[name][1].append(np.asarray(y, int if task.kind == "classification" else np.float64))
            p = p if views else p[None]  # (views, faces, ...): the views kept apart
            # a class head back on its own scale (T = 1); a value head's answer is the views' mean
            pooled[name][2].append(rescaled(p, 1 / current[name]) if task.kind == "classification" else p.mean(0))
    report, fitted, intervals = {}, {}, {}
    for name, (task, ys, ps) in pooled.items():
        if not ys:
            continue
        y, p = np.concatenate(ys), np.concatenate(ps, axis=-2 if task.kind == "classification" else 0)
        if task.kind == "regression":
            q = intervals[name] = fit_interval(task, y, p, coverage)
            report[name] = {"interval": list(q), "coverage_target": coverage, "n": int(len(y)), "tta": tta or "none",
                            **interval_metrics(task, y, p, q)}
            continue
        t = fitted[name] = fit_temperature(y, p)
        p, after = averaged(p), averaged(rescaled(p, t))
        report[name] = {"temperature": t, "n": int(len(y)), "tta": tta or "none",
                        "accuracy": float(np.mean(p.argmax(1) == y)),
                        "ece_before": expected_calibration_error(y, p),
                        "ece_after": expected_calibration_error(y, after),
                        "nll_before": nll(y, p), "nll_after": nll(y, after),
                        "reliability_before": reliability(y, p), "reliability_after": reliability(y, after)}
    if not report:
        raise ValueError(f"sources: none labels a head to calibrate ({', '.join(t.name for t in heads)})")
    model.set_temperatures(fitted)
    model.set_intervals(intervals)
    return report


def calibration_table(report: dict) -> str:
    """:func:`calibrate`'s report as a table: per head the faces, temperature, ECE and NLL before and after, and
    the accuracy (which temperature scaling leaves as it was).

    Example:
        >>> r = {"gender": {"n": 10, "temperature": 1.5, "ece_before": 0.1, "ece_after": 0.02, "nll_before": 0.5,
        ...                 "nll_after": 0.4, "accuracy": 0.9}}
        >>> print(calibration_table(r).splitlines()[2])
        gender  10     1.500        0.1000      0.0200     0.5000      0.4000     0.9000
    """
    classes = {n: r for n, r in report.items() if "temperature" in r}
    values = {n: r for n, r in report.items() if "interval" in r}
    blocks = []
    if classes:
        blocks.append(text_table(["task", "faces", "temperature", "ECE before", "ECE after", "NLL before", "NLL after",
                                  "accuracy"],
                                 [(n, r["n"], f"{r['temperature']:.3f}", f"{r['ece_before']:.4f}",
                                   f"{r['ece_after']:.4f}", f"{r['nll_before']:.4f}", f"{r['nll_after']:.4f}",
                                   f"{r['accuracy']:.4f}") for n, r in classes.items()]))
    if values:
        blocks.append(text_table(["task", "faces", "interval for", "q low", "q high", "coverage here", "mean width"],
                                 [(n, r["n"], f"{r['coverage_target']:.0%}", f"{r['interval'][0]:+.3f}",
                                   f"{r['interval'][1]:+.3f}", f"{r['interval_coverage']:.3f}",
                                   f"{r['interval_width']:.2f}") for n, r in values.items()]))
    return "\n\n".join(blocks)


def save_calibrated(model, report: dict, out, sources: Sequence = ()) -> dict:
    """Save the calibrated ``model`` at ``out`` (atomically), ``calibration.json`` beside it (the ``sources`` and the
    report) and a reliability diagram per head (before and after) in ``plots/`` beside it; returns the paths.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> report = calibrate(model, [make_source("synthetic:portraits?n=16")])
        >>> sorted(p.name for p in save_calibrated(model, report, "run/model.keras").values())
        ['calibration.json', 'model.keras', 'reliability_gender.png']
    """
    out = Path(out)
    paths = {"model": atomic_write(out, lambda tmp: model.save(tmp)),
             "json": atomic_write_text(out.with_name("calibration.json"),
                                       json.dumps({"sources": [str(s) for s in sources], "tasks": report}, indent=2))}
    for name, r in report.items():
        if "temperature" not in r:  # an interval: no reliability diagram
            continue
        paths[f"plot_{name}"] = plot_reliability(
            {f"before (ECE {r['ece_before']:.3f})": r["reliability_before"],
             f"after (ECE {r['ece_after']:.3f})": r["reliability_after"]},
            f"{name}: T = {r['temperature']:.2f}, {r['n']} validation faces",
            out.parent / "plots" / f"reliability_{name}.png")
    return paths


def ece_table(results: dict, temperatures: dict) -> str:
    """The expected calibration error of each classification head on each source of
    :func:`~kfacemtl.analysis.evaluation.evaluate_sources`'s ``results``, beside the head's temperature.

    Example:
        >>> print(ece_table({"lab": {"gender": {"ece": 0.031, "accuracy": 0.9, "n": 5}}}, {"gender": 1.4}))
        calibration (expected calibration error, 15 bins; temperature 1: not calibrated)
        source  task    ECE    temperature
        ------  ------  -----  -----------
        lab     gender  0.031  1.400
    """
    rows = [(src, task, f"{m['ece']:.3f}", f"{temperatures.get(task, 1.0):.3f}")
            for src, entry in results.items() for task, m in entry.items() if "ece" in m]
    return ("calibration (expected calibration error, 15 bins; temperature 1: not calibrated)\n"
            + text_table(["source", "task", "ECE", "temperature"], rows))


def plot_source_reliability(model, sources: Sequence[Source], out_dir, batch_size: int = 128,
                            predicted=None) -> list[Path]:
    """A reliability diagram per source and classification head of ``model`` in ``out_dir``
    (``reliability_<source>_<task>.png``); returns the paths. ``predicted``: the sources' predictions by name, when
    already made (:func:`~kfacemtl.analysis.evaluation.predictions_of`).

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> [p.name for p in plot_source_reliability(model, [make_source("synthetic:portraits?n=8")], "plots")]
        ['reliability_portraits-train_gender.png']
    """
    written = []
    for source in sources:
        for name, (task, y, p) in predictions_of(model, source, None, batch_size, None, predicted).items():
            if task.kind == "classification":
                written.append(plot_reliability({f"ECE {expected_calibration_error(y, p):.3f}": reliability(y, p)},
                                                f"{name} on {source.name}",
                                                Path(out_dir) / f"reliability_{source.name}_{name}.png"))
    return written
