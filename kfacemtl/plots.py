"""Plots written into a run directory: loss curves and confusion matrices.

Example:
    >>> # plot_history("runs/demo/history.csv", "runs/demo/plots/loss.png")
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out_png) -> Path:
    """Lay out, write atomically (a temporary file renamed into place) and close a figure."""
    from kfacemtl.files import atomic_write
    fig.tight_layout()
    out = atomic_write(out_png, lambda tmp: fig.savefig(tmp, dpi=90))
    _pyplot().close(fig)
    return out


def read_history(path) -> pd.DataFrame:
    """``history.csv`` as a table, one row per epoch (a resumed epoch's last row wins)."""
    df = pd.read_csv(path)
    return df.drop_duplicates("epoch", keep="last").sort_values("epoch").reset_index(drop=True)


def plot_history(history_csv, out_png) -> Path:
    """Total loss and each task's loss against epochs."""
    plt = _pyplot()
    df = read_history(history_csv)
    cols = [c for c in df.columns if (c.endswith("loss") or c.startswith("match_")) and not c.startswith("val_")]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    if "loss" in df:
        axes[0].plot(df["epoch"] + 1, df["loss"], marker="o", label="total")
    axes[0].set(title="total training loss", xlabel="epoch", ylabel="loss")
    for c in cols:
        if c != "loss":
            axes[1].plot(df["epoch"] + 1, df[c], marker=".", label=c.replace("_loss", ""))
    axes[1].set(title="per-task loss (mean over labelled samples)", xlabel="epoch")
    axes[1].legend(fontsize=8)
    return _save(fig, out_png)


def plot_confusion(cm, class_names: Sequence[str], title: str, out_png) -> Path:
    """A row-normalised confusion matrix with counts."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=float)
    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    k = len(class_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * k, 0.8 + 0.55 * k))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(k), class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), class_names, fontsize=8)
    for i in range(k):
        for j in range(k):
            ax.text(j, i, int(cm[i, j]), ha="center", va="center", fontsize=7,
                    color="white" if norm[i, j] > 0.5 else "black")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return _save(fig, out_png)


def plot_lr_range(result: dict, out_png) -> Path:
    """Smoothed loss against learning rate (log axis) from :func:`~kfacemtl.callbacks.lr_range_test`."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result["learning_rates"], result["losses"])
    ax.axvline(result["suggestion"], color="tab:red", linestyle="--",
               label=f"suggested {result['suggestion']:.2g} (steepest fall)")
    ax.set(xscale="log", xlabel="learning rate", ylabel="smoothed training loss", title="LR range test")
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def plot_task_weights(history_csv, out_png) -> Path | None:
    """Each task's mean weight per epoch (the ``weight_<task>`` columns); None when there are none."""
    df = read_history(history_csv)
    cols = [c for c in df.columns if c.startswith("weight_")]
    if not cols:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for c in cols:
        ax.plot(df["epoch"] + 1, df[c], marker=".", label=c[len("weight_"):])
    ax.set(title="task weights (mean over the epoch's batches with the task)", xlabel="epoch", ylabel="weight")
    ax.legend(fontsize=8)
    return _save(fig, out_png)


def plot_relative_change(results: Sequence[dict], out_png, title: str = "") -> Path:
    """Mean relative change against single-task models per variant (bars: mean over seeds, whiskers: std).

    ``results`` are dicts with ``variant`` and ``relative_change`` (a fraction), one per run, as
    written by ``benchmarks/ablation_weighting_lr.py``.
    """
    plt = _pyplot()
    variants = list(dict.fromkeys(r["variant"] for r in results))
    values = [[100 * r["relative_change"] for r in results if r["variant"] == v] for v in variants]
    means = [float(np.mean(v)) for v in values]
    stds = [float(np.std(v, ddof=1)) if len(v) > 1 else 0.0 for v in values]
    fig, ax = plt.subplots(figsize=(7, 0.8 + 0.45 * len(variants)))
    ax.barh(range(len(variants)), means, xerr=stds, color=["tab:green" if m >= 0 else "tab:red" for m in means])
    ax.set_yticks(range(len(variants)), variants, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set(xlabel="mean relative change vs single-task (%, higher is better)", title=title)
    return _save(fig, out_png)


def plot_distillation(log: Sequence[dict], tasks, out_png) -> Path:
    """Per distillation round and task: the share of candidates accepted as pseudo-labels and,
    where ground truth exists, their accuracy (classification, action units) or MAE (regression)."""
    plt = _pyplot()
    kinds = {t.name: t.kind for t in tasks}
    panels = [("accepted share of candidates", None)]
    if any(k != "regression" for k in kinds.values()):
        panels.append(("accuracy of accepted pseudo-labels", False))
    if any(k == "regression" for k in kinds.values()):
        panels.append(("MAE of accepted pseudo-labels", True))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
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
    return _save(fig, out_png)


def plot_relatedness(relation, out_png) -> Path:
    """A :class:`~kfacemtl.coupling.Relatedness` as a heat map: one row per class, its value per label."""
    plt = _pyplot()
    m, t = relation.matrix, relation.target
    names = list(relation.label_names)
    fig, ax = plt.subplots(figsize=(1.0 + 0.55 * len(names), 1.2 + 0.45 * len(m)))
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
    return _save(fig, out_png)
