"""The teachers a run trains before its student: matched single-task models (``distillation.teachers: single-task``)
and earlier generations of the student itself (``distillation.born_again``).

Both are runs in folders of the student's run (``RUN/teachers/<task>``, ``RUN/generations/<g>``), trained with the
function that trains the student (passed in as ``train``, so this module does not import the run that calls it). A
finished one is reused and an interrupted one resumes, so the student's ``--resume`` resumes them too.

Born-again networks (Furlanello et al. 2018, arXiv 1805.04770): a student taught by a trained model of its own
architecture often ends ahead of it. With ``born_again: {generations: 1, views: flip}`` the run trains the student its
config describes first (generation 1, from the config's teachers), then its model: the same settings, every task
taught by generation 1 (teacher annealing), whose answers are the mean over ``views`` of each face.

Example:
    >>> from kfacemtl.training.config import resolve_config
    >>> cfg = resolve_config({"tasks": ["expression"], "sources": ["synthetic:lab?n=32"],
    ...                       "distillation": {"anneal": True, "teachers": {"expression": "runs/stl"},
    ...                                        "born_again": {"generations": 2}}})
    >>> generation_config(cfg, 2, "runs/student/generations/1")["distillation"]["teachers"]
    'runs/student/generations/1'
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Sequence

from kfacemtl.data import Source
from kfacemtl.errors import under_key
from kfacemtl.training.config import OWN_TEACHERS
from kfacemtl.training.single_task import single_task_configs


def _train_or_reuse(train: Callable, cfg: dict, folder: Path, verbose: int, what: str) -> dict:
    """The report of the run in ``folder``: read when it finished, else trained (resumed when it began), saying so."""
    finished = folder / "report.json"
    if finished.is_file():
        return json.loads(finished.read_text())
    if verbose:
        print(f"{what} in {folder}", flush=True)
    return train(cfg, folder, resume=(folder / "config.yaml").is_file(), verbose=verbose)


def train_teachers(cfg: dict, sources: Sequence[Source], out_dir, train: Callable, verbose: int = 1) -> dict:
    """``distillation.teachers: single-task``: train (or reuse, or resume) one single-task model per task, matched to
    the run's budget (:func:`~kfacemtl.training.single_task.single_task_configs`; ``distillation.teacher_epochs``
    epochs when given, ``distillation.teacher_training``'s training keys and ``teacher_model``'s model keys over the
    run's), in ``out_dir/teachers/<task>``; returns ``{task: {"run": folder, "train_seconds": s}}``.

    Example:
        >>> from kfacemtl.training import resolve_config, train_run
        >>> from kfacemtl.training.run import build_sources
        >>> cfg = resolve_config({"tasks": ["expression"], "sources": ["synthetic:lab?n=32"],
        ...                       "model": {"widths": [8], "depths": [1], "embedding_dim": 8},
        ...                       "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16}})
        >>> runs = train_teachers(cfg, build_sources(cfg["sources"]), "runs/student", train_run, verbose=0)
        >>> runs["expression"]["run"]
        'runs/student/teachers/expression'
    """
    runs = {}
    with under_key("distillation.teachers"):
        configs = single_task_configs(cfg, sources)
    for task, single in configs.items():
        if cfg["distillation"]["teacher_epochs"] is not None:  # a budget of their own
            single["training"]["epochs"] = cfg["distillation"]["teacher_epochs"]
        single["training"].update(cfg["distillation"]["teacher_training"] or {})  # settings of their own
        single["model"].update(cfg["distillation"]["teacher_model"] or {})  # and a network of their own
        folder = Path(out_dir) / "teachers" / task
        report = _train_or_reuse(train, single, folder, verbose,
                                 f"teacher annealing: training the single-task teacher of {task}")
        runs[task] = {"run": str(folder), "train_seconds": report.get("train_seconds_this_session")}
    return runs


def generation_config(cfg: dict, generation: int, teachers) -> dict:
    """The config of the student's generation ``generation`` (1: the one the config's own teachers teach), taught by
    ``teachers`` (model paths: ``{task: path}`` or one path), without evaluation (only the last generation is
    evaluated).

    Example:
        >>> from kfacemtl.training.config import resolve_config
        >>> cfg = resolve_config({"tasks": ["expression"], "sources": ["synthetic:lab?n=32"],
        ...                       "distillation": {"anneal": True, "teachers": {"expression": "runs/stl"},
        ...                                        "born_again": {"generations": 1, "views": "flip"}}})
        >>> first = generation_config(cfg, 1, cfg["distillation"]["teachers"])["distillation"]
        >>> first["teachers"], first["teacher_views"], first["born_again"]
        ({'expression': 'runs/stl'}, 'none', None)
    """
    d = cfg["distillation"]
    views = d["teacher_views"] if generation == 1 else d["born_again"]["views"]
    return {**cfg, "eval_sources": [],
            "distillation": {**d, "teachers": teachers, "teacher_views": views, **OWN_TEACHERS}}


def train_generations(cfg: dict, teachers, out_dir, train: Callable, verbose: int = 1) -> tuple:
    """``distillation.born_again``: train (or reuse, or resume) the student's earlier generations in
    ``out_dir/generations/<g>``, the first taught by ``teachers`` (model paths) and each later one by the one before;
    returns ``(the last one's folder, {"generation-<g>": {"run": folder, "train_seconds": s}})``: the teacher of the
    run's own model, and what the report counts.

    Example:
        >>> from kfacemtl.training import resolve_config, train_run
        >>> tiny = {"tasks": ["expression"], "sources": ["synthetic:lab?n=32"],
        ...         "model": {"widths": [8], "depths": [1], "embedding_dim": 8},
        ...         "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16}}
        >>> _ = train_run(tiny, "runs/stl", verbose=0)
        >>> cfg = resolve_config({**tiny, "distillation": {"anneal": True, "teachers": {"expression": "runs/stl"},
        ...                                                "born_again": {"generations": 1}}})
        >>> teacher, runs = train_generations(cfg, {"expression": "runs/stl"}, "runs/student", train_run, verbose=0)
        >>> teacher, list(runs)
        ('runs/student/generations/1', ['generation-1'])
    """
    runs = {}
    for g in range(1, cfg["distillation"]["born_again"]["generations"] + 1):
        folder = Path(out_dir) / "generations" / str(g)
        report = _train_or_reuse(train, generation_config(cfg, g, teachers), folder, verbose,
                                 f"born again: training generation {g} of the student")
        runs[f"generation-{g}"] = {"run": str(folder), "train_seconds": report.get("train_seconds_this_session")}
        teachers = str(folder)
    return teachers, runs
