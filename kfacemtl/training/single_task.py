"""Single-task models matched to a multi-task config: the baselines a multi-task model is compared with, and the
teachers that teacher annealing distils into it.

A single-task model of task T trains on only the sources that label T, for the same number of optimizer steps as
the multi-task model, with batches of exactly as many faces of T as a multi-task batch holds on average (the batch
times the mixing share of those sources), mixed between them in the multi-task model's proportions; everything else
(backbone, optimizer, schedule, augmentation, seed) is the multi-task config's. So each task gets the same steps and
labelled faces on both sides; all the multi-task model adds is the other tasks.

Example:
    >>> from kfacemtl.training.config import resolve_config
    >>> from kfacemtl.training.run import build_sources
    >>> cfg = resolve_config({"tasks": ["gender", "expression"], "training": {"mixing": "balanced"},
    ...                       "sources": ["synthetic:portraits?n=8", "synthetic:lab?n=8"]})
    >>> {t: c["training"]["batch_size"] for t, c in single_task_configs(cfg, build_sources(cfg["sources"])).items()}
    {'gender': 32, 'expression': 32}
"""
from __future__ import annotations

import copy
from typing import Sequence

from kfacemtl.data import Source, mixing_weights
from kfacemtl.training.config import OWN_TEACHERS


def single_task_configs(cfg: dict, sources: Sequence[Source]) -> dict:
    """``{task: config}``, one single-task config per task of ``cfg`` (see the module docstring); ``sources`` are
    ``cfg``'s training sources, built.

    Raises:
        ValueError: a task that no source labels.

    Example:
        >>> from kfacemtl.training.config import resolve_config
        >>> from kfacemtl.training.run import build_sources
        >>> cfg = resolve_config({"tasks": ["age", "expression"], "sources": ["synthetic:portraits?n=8",
        ...                       "synthetic:lab?n=8"], "training": {"mixing": {"portraits-train": 3, "lab-train": 1},
        ...                                                          "loss_weights": {"expression": 2.0}}})
        >>> age, expression = single_task_configs(cfg, build_sources(cfg["sources"])).values()
        >>> age["sources"], age["training"]["batch_size"], expression["training"]["batch_size"]
        (['synthetic:portraits?n=8'], 48, 16)
        >>> expression["training"]["loss_weights"] is None  # one task: its loss is not weighed
        True
    """
    tasks = cfg["tasks"]
    share = mixing_weights(sources, cfg["training"]["mixing"])
    out = {}
    for name in tasks:  # task names, whether the config lists them or maps them to overrides
        keep = [i for i, s in enumerate(sources) if name in s.tasks]
        if not keep:
            raise ValueError(f"tasks.{name}: no training source labels it")
        single = copy.deepcopy(cfg)
        single["tasks"] = {name: tasks[name]} if isinstance(tasks, dict) else [name]
        single["sources"] = [cfg["sources"][i] for i in keep]
        single["training"]["batch_size"] = max(1, int(round(cfg["training"]["batch_size"] * share[keep].sum())))
        single["training"]["mixing"] = ({sources[i].name: float(share[i]) for i in keep} if len(keep) > 1
                                        else "proportional")
        single["training"]["loss_weights"] = None  # one task: nothing to weigh it against
        if single.get("distillation", {}).get("anneal"):  # a single-task model is a teacher, not a student
            single["distillation"] = {**single["distillation"], "anneal": False, "teachers": None,
                                     "anneal_unlabelled": 0.0, "teacher_views": "none", **OWN_TEACHERS}
        if single["model"].get("branch_at") is not None or single["model"].get("branches"):
            single["model"] = {**single["model"], "branch_at": None, "branches": None}  # one task: nothing to branch
        out[name] = single
    return out
