"""Plots written into a run directory: loss curves and confusion matrices.

Example:
    >>> plot_confusion([[8, 2], [1, 9]], ["male", "female"], "gender on lab-test", "plots/confusion.png").name
    'confusion.png'
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kfacemtl.files import atomic_write


def subplots(nrows: int = 1, ncols: int = 1, figsize=None, squeeze: bool = True):
    """``pyplot.subplots`` without pyplot: a figure that belongs to no backend, so writing plots never
    switches a notebook's backend (its inline figures keep showing) and needs no display.

    Example:
        >>> fig, axes = subplots(1, 2, figsize=(4, 2))
        >>> len(axes), fig.get_size_inches().tolist()
        (2, [4.0, 2.0])
    """
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze)


def save_figure(fig, out_png, dpi: int = 90) -> Path:
    """Lay out and write a figure atomically (a temporary file renamed into place); returns its path.

    Example:
        >>> fig, ax = subplots(figsize=(2, 2))
        >>> _ = ax.plot([0, 1], [1, 0])
        >>> save_figure(fig, "line.png").name
        'line.png'
    """
    fig.tight_layout()
    return atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=dpi))


def read_history(path) -> pd.DataFrame:
    """``history.csv`` as a table, one row per epoch (a resumed epoch's last row wins).

    Example:
        >>> _ = open("history.csv", "w").write("epoch,loss\\n0,2.0\\n1,1.5\\n1,1.4\\n")   # epoch 1 redone after a resume
        >>> read_history("history.csv")["loss"].tolist()
        [2.0, 1.4]
    """
    df = pd.read_csv(path)
    return df.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def plot_history(history_csv, out_png) -> Path:
    """Total loss and each task's loss against epochs.

    Example:
        >>> _ = open("history.csv", "w").write("epoch,loss,age_loss,gender_loss\\n0,2.0,1.2,0.8\\n1,1.5,0.9,0.6\\n")
        >>> plot_history("history.csv", "plots/loss.png").name
        'loss.png'
    """
    df = read_history(history_csv)
    cols = [c for c in df.columns if (c.endswith("loss") or c.startswith("match_")) and not c.startswith("val_")]
    fig, axes = subplots(1, 2, figsize=(11, 4))
    if "loss" in df:
        axes[0].plot(df["epoch"] + 1, df["loss"], marker="o", label="total")
    axes[0].set(title="total training loss", xlabel="epoch", ylabel="loss")
    for c in cols:
        if c != "loss":
            axes[1].plot(df["epoch"] + 1, df[c], marker=".", label=c.replace("_loss", ""))
    axes[1].set(title="per-task loss (mean over labelled samples)", xlabel="epoch")
    if len(cols) > ("loss" in cols):  # a run of one task logs no per-task loss
        axes[1].legend(fontsize=8)
    return save_figure(fig, out_png)


def plot_confusion(cm, class_names: Sequence[str], title: str, out_png) -> Path:
    """A row-normalised confusion matrix with counts.

    Example:
        >>> plot_confusion([[5, 1], [2, 7]], ["male", "female"], "gender on lab-test", "confusion.png").name
        'confusion.png'
    """
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.55 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return save_figure(fig, out_png)


def plot_reliability(curves: dict, title: str, out_png) -> Path:
    """Reliability diagram: accuracy against confidence per bin (:func:`~kfacemtl.analysis.evaluation.reliability`)
    for each curve of ``curves`` (``{label: curve}``, e.g. before and after calibration), beside the diagonal of
    perfect calibration; each point's area follows its number of faces.

    Example:
        >>> curve = {"confidence": [0.55, 0.75, 0.95], "accuracy": [0.5, 0.6, 0.8], "count": [10, 30, 60]}
        >>> plot_reliability({"before (ECE 0.12)": curve}, "gender on utkface-val", "reliability.png").name
        'reliability.png'
    """
    fig, ax = subplots(figsize=(4.2, 4))
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for label, curve in curves.items():
        sizes = 200 * np.asarray(curve["count"]) / max(1, max(curve["count"], default=1))
        line, = ax.plot(curve["confidence"], curve["accuracy"], marker="", label=label)
        ax.scatter(curve["confidence"], curve["accuracy"], s=np.maximum(sizes, 4), color=line.get_color(), alpha=0.6)
    ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence (top probability)", ylabel="accuracy", title=title)
    ax.legend(fontsize=7, loc="upper left")
    return save_figure(fig, out_png)


def plot_lr_range(result: dict, out_png) -> Path:
    """Smoothed loss against learning rate (log axis) from :func:`~kfacemtl.training.lr_range_test`.

    Example:
        >>> result = {"learning_rates": [1e-5, 1e-4, 1e-3, 1e-2], "losses": [2.0, 1.8, 1.2, 3.0], "suggestion": 1e-3}
        >>> plot_lr_range(result, "lr_range.png").name
        'lr_range.png'
    """
    fig, ax = subplots(figsize=(6, 4))
    ax.plot(result["learning_rates"], result["losses"])
    ax.axvline(result["suggestion"], color="tab:red", linestyle="--",
               label=f"suggested {result['suggestion']:.2g} (steepest fall)")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed training loss", title="LR range test")
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)


def plot_task_weights(history_csv, out_png) -> Path | None:
    """Each task's mean weight per epoch (the ``weight_<task>`` columns); None when there are none.

    Example:
        >>> _ = open("history.csv", "w").write("epoch,loss,weight_age,weight_gender\\n0,2.0,1.2,0.8\\n1,1.5,1.1,0.9\\n")
        >>> plot_task_weights("history.csv", "weights.png").name
        'weights.png'
    """
    df = read_history(history_csv)
    cols = [c for c in df.columns if c.startswith("weight_")]
    if not cols:
        return None
    fig, ax = subplots(figsize=(6, 4))
    for c in cols:
        ax.plot(df["epoch"] + 1, df[c], marker=".", label=c[len("weight_"):])
    ax.set(title="task weights (mean over the epoch's batches with the task)", xlabel="epoch", ylabel="weight")
    ax.legend(fontsize=8)
    return save_figure(fig, out_png)


def plot_relative_change(results: Sequence[dict], out_png, title: str = "") -> Path:
    """Mean relative change against single-task models per variant (bars: mean over seeds, whiskers: std).

    ``results`` are dicts with ``variant`` and ``relative_change`` (a fraction), one per run, as
    written by ``benchmarks/ablation_weighting_lr.py``.

    Example:
        >>> rows = [{"variant": "equal", "relative_change": -0.018}, {"variant": "dynamic", "relative_change": -0.006}]
        >>> plot_relative_change(rows, "ablation.png", title="synthetic").name
        'ablation.png'
    """
    variants = list(dict.fromkeys(r["variant"] for r in results))
    values = [[100 * r["relative_change"] for r in results if r["variant"] == v] for v in variants]
    means = [float(np.mean(v)) for v in values]
    stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
    fig, ax = subplots(figsize=(7, 0.8 + 0.45 * len(variants)))
    ax.barh(range(len(variants)), means, xerr=stds, color=["tab:green" if m >= 0 else "tab:red" for m in means])
    ax.set_yticks(range(len(variants)), variants, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel="mean relative change vs single-task (%, higher is better)", title=title)
    return save_figure(fig, out_png)


def plot_distillation(log: Sequence[dict], tasks, out_png) -> Path:
    """Per distillation round and task: the share of candidates accepted as pseudo-labels and,
    where ground truth exists, their accuracy (classification, action units) or MAE (regression).

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> log = [{"round": r, "sources": {"street": {"gender": {"candidates": 100, "accepted": 50 + 10 * r,
        ...                                                       "quality_accepted": 0.8}}}} for r in (1, 2)]
        >>> plot_distillation(log, [get_task("gender")], "distillation.png").name
        'distillation.png'
    """
    kinds = {t.name: t.kind for t in tasks}
    panels = [("accepted share of candidates", None)]
    if any(k != "regression" for k in kinds.values()):
        panels.append(("accuracy of accepted pseudo-labels", False))
    if any(k == "regression" for k in kinds.values()):
        panels.append(("MAE of accepted pseudo-labels", True))
    fig, axes = subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    rounds = [e["round"] for e in log]
    for ax, (title, regression) in zip(axes[0], panels):
        for task, kind in kinds.items():
            if regression is not None and (kind == "regression") != regression:
                continue
            ys = []
            for e in log:
                stats = [s[task] for s in e["sources"].values() if task in s]
                if regression is None:
                    cand = sum(s["candidates"] for s in stats)
                    ys.append(sum(s["accepted"] for s in stats) / cand if cand else np.nan)
                else:
                    scored = [s for s in stats if "quality_accepted" in s]
                    n = sum(s["accepted"] for s in scored)
                    ys.append(sum(s["quality_accepted"] * s["accepted"] for s in scored) / n if n else np.nan)
            ax.plot(rounds, ys, marker="o", label=task)
        ax.set(xlabel="round", title=title)
        ax.set_xticks(rounds)
        ax.legend(fontsize=7)
    return save_figure(fig, out_png)


def plot_relatedness(relation, out_png) -> Path:
    """A :class:`~kfacemtl.training.coupling.Relatedness` as a heat map: one row per class, its value per label.

    Example:
        >>> from kfacemtl.training.coupling import Relatedness
        >>> from kfacemtl.tasks import get_task
        >>> rel = Relatedness.du_2014(get_task("expression"), get_task("action_units"))
        >>> plot_relatedness(rel, "relatedness.png").name
        'relatedness.png'
    """
    m, t = relation.matrix, relation.target
    names = list(relation.label_names)
    fig, ax = subplots(figsize=(1.0 + 0.55 * len(names), 1.2 + 0.45 * len(m)))
    shown = np.where(relation.known[:, None], m, np.nan)
    ax.imshow(shown, cmap="Blues" if t.kind == "multilabel" else "coolwarm", aspect="auto",
              vmin=0 if t.kind == "multilabel" else t.value_range[0], vmax=1 if t.kind == "multilabel" else t.value_range[1])
    for i in range(len(m)):
        for j in range(len(names)):
            text = "-" if not relation.known[i] else "" if t.kind == "multilabel" and m[i, j] == 0 else f"{m[i, j]:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=7,
                    color="white" if relation.known[i] and t.kind == "multilabel" and m[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=60, fontsize=8)
    ax.set_yticks(range(len(m)), relation.source.classes, fontsize=8)
    ax.set_title(f"{relation.source.name} -> {t.name}: {relation.origin}", fontsize=8)
    return save_figure(fig, out_png)
