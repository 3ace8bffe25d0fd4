"""Teacher-student data distillation rounds (Distill-2MD-MTL, Hosseini, Shabani & Cho, arXiv 1907.03402).

A multi-task teacher fills in what the datasets lack: at each round boundary the model as it
is then (the teacher) predicts every training source under a set of geometric transforms
(Radosavovic et al., "Data Distillation", CVPR 2018: flips, scales, shifts), the ensemble's
confident answers become pseudo-labels for the tasks a source does not label and for
unlabelled sources from other domains, and training goes on (the student) on real labels
plus pseudo-labels.

- **Where pseudo-labels live.** :class:`PseudoLabels` keeps one ``tf.Variable`` of values and
  one of weights per (source, task); the training pipeline
  (:func:`~kfacemtl.data.make_dataset` with ``pseudo_labels=``) gathers them by row id
  next to the real labels, so a round only assigns variables: the dataset is never rebuilt
  (the few batches already prefetched still carry the labels of before).
  A real label always wins over a pseudo-label of the same row. Memory is one row of
  numbers per image and task; images are streamed through the teacher in batches.
- **The ensemble** is one batched pass: :func:`transform_batch` makes all T transformed
  copies of a batch with one ``crop_and_resize`` (a flip is a box with its x-coordinates
  swapped), the teacher runs once on the T·B images, and the outputs are averaged over T.
- **Selection.** Classification: the ensemble's top probability ≥ the task's threshold
  (hard labels: the class id; soft: the averaged distribution). Multilabel (action units):
  the mean over units of max(p, 1 − p) ≥ threshold (targets are the averaged
  probabilities, or them rounded). Regression (age, valence/arousal): the spread (standard
  deviation over the T transforms, mean over values) ≤ threshold, in the task's units.
  Optional class-balanced selection keeps at most the median per-class count of the most
  confident rows per class. Accepted rows carry ``pseudo_weight`` (< 1) as sample weight.

Example:
    >>> from kfacemtl.data import make_dataset, make_source
    >>> from kfacemtl.tasks import resolve_tasks
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.training import compile_model
    >>> tasks = resolve_tasks(["gender", "expression"])
    >>> sources = [make_source("synthetic:portraits?n=64"), make_source("synthetic:lab?n=64"),
    ...            make_source("synthetic:street?n=64")]           # street: no labels at all
    >>> model = build_model(tasks, input_shape=(32, 32, 3), widths=(8, 16), depths=1)
    >>> model = compile_model(model)
    >>> distill = DataDistillation(sources, tasks, rounds=1, epochs_per_round=1, verbose=0)
    >>> ds = make_dataset(sources, tasks, batch_size=16, image_size=(32, 32),
    ...                   pseudo_labels=distill.pseudo_labels)
    >>> _ = model.fit(ds, epochs=distill.total_epochs, steps_per_epoch=2, callbacks=[distill], verbose=0)
    >>> [r["round"] for r in distill.log]
    [1]
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np

from kfacemtl.analysis.plots import plot_distillation
from kfacemtl.data import Source, make_dataset
from kfacemtl.data import steps_per_epoch as one_pass
from kfacemtl.errors import ConfigError
from kfacemtl.files import atomic_write_text
from kfacemtl.models import model_tasks
from kfacemtl.tasks import Task
from kfacemtl.training.distillation.pseudo_labels import PseudoLabels
from kfacemtl.models.views import DEFAULT_TRANSFORMS, transform_boxes
from kfacemtl.training.distillation.teacher import (DEFAULT_THRESHOLDS, REGRESSION_SPREAD, EnsembleTeacher,
                                                    pseudo_label_quality, select)


class DataDistillation(keras.callbacks.Callback):
    """Data distillation rounds inside ``model.fit``.

    Training runs ``epochs_per_round × (rounds + 1)`` epochs (:attr:`total_epochs`): the
    first ``epochs_per_round`` on real labels only, then at each round boundary the teacher
    pseudo-labels every source and the student trains on labels plus pseudo-labels.

    Args:
        sources: every source the training dataset reads (labelled and unlabelled ones), in
            any order; build the dataset with ``pseudo_labels=self.pseudo_labels``.
        tasks: the model's tasks.
        rounds: pseudo-labelling rounds.
        epochs_per_round: epochs between round boundaries.
        teacher: None (the model being trained, as it is at the boundary), a model, or
            ``{task: model}`` (e.g. single-task teachers) or ``{task: [model, ...]}`` (their answers averaged);
            models other than the student stay fixed.
        transforms: the ensemble's ``(flip, scale, dx, dy)`` transforms.
        soft: soft classification targets (the ensemble's distribution) instead of class ids.
        thresholds: ``{task: value}``: minimum confidence (classification, multilabel) or
            maximum spread in the task's units (regression); defaults 0.7, 0.8 and 5 % of the
            value range (6 years of age, 0.1 of valence/arousal).
        balance: class-balanced selection (classification tasks).
        pseudo_weight: sample weight of a pseudo-label, in (0, 1].
        reinit: re-initialise the student (weights and optimizer state) after each round's
            labelling instead of continuing it.
        batch_size: images per teacher batch (each becomes T·batch_size transformed images).
        ground_truth: ``{source: {task: labels}}`` (NaN: unknown) used only to score accepted
            pseudo-labels; synthetic sources and the hidden labels of
            :class:`~kfacemtl.data.WithoutLabels` sources are used without asking.
        state_dir: where the pseudo-labels (``pseudo_labels.npz``), the round log
            (``distillation.json``) and its plot go; a resumed run reloads them.
        verbose: print a line per task and source at each round.

    Example:
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> rounds = DataDistillation([make_source("synthetic:lab?n=8")], resolve_tasks(["expression"]), rounds=2,
        ...                           epochs_per_round=3)
        >>> rounds.total_epochs, rounds.thresholds
        (9, {'expression': 0.7})
    """

    def __init__(self, sources: Sequence[Source], tasks: Sequence[Task], rounds: int = 2, epochs_per_round: int = 1,
                 teacher=None, transforms: Sequence = DEFAULT_TRANSFORMS, soft: bool = False,
                 thresholds: Mapping[str, float] | None = None, balance: bool = False, pseudo_weight: float = 0.5,
                 reinit: bool = False, batch_size: int = 128, ground_truth: Mapping | None = None,
                 state_dir=None, verbose: int = 1):
        super().__init__()
        if int(rounds) < 1 or int(epochs_per_round) < 1:
            raise ValueError(f"expected rounds >= 1 and epochs_per_round >= 1, got {rounds!r} and {epochs_per_round!r}")
        if not 0 < float(pseudo_weight) <= 1:
            raise ValueError(f"pseudo_weight: expected a weight in (0, 1], got {pseudo_weight!r}")
        self.sources, self.tasks = list(sources), list(tasks)
        names = {t.name for t in self.tasks}
        unknown = set(thresholds or {}) - names
        if unknown:
            raise ValueError(f"thresholds.{sorted(unknown)[0]}: not a task of the model {sorted(names)}")
        if isinstance(teacher, Mapping) and set(teacher) - names:
            raise ValueError(f"teacher.{sorted(set(teacher) - names)[0]}: not a task of the model {sorted(names)}")
        self.rounds, self.epochs_per_round = int(rounds), int(epochs_per_round)
        self.transforms, self.soft, self.balance = tuple(transforms), bool(soft), bool(balance)
        transform_boxes(self.transforms)  # validates them now, not at the first round
        self.thresholds = {t.name: self._default_threshold(t) for t in self.tasks}
        self.thresholds.update({k: float(v) for k, v in (thresholds or {}).items()})
        self.pseudo_weight, self.reinit = float(pseudo_weight), bool(reinit)
        self.batch_size, self.verbose = int(batch_size), verbose
        self.external_teacher = teacher
        self.ground_truth = {s.name: self._truth(s) for s in self.sources}
        for s, gt in (ground_truth or {}).items():
            self.ground_truth.setdefault(s, {}).update(gt)
        self.pseudo_labels = PseudoLabels(self.sources, self.tasks, soft=self.soft)
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.log: list[dict] = []
        self._real = {s.name: s.labels(self.tasks)[1] for s in self.sources}  # real-label weights per task
        self._initial = None
        self._teacher = None

    def _truth(self, source: Source) -> dict:
        """Labels that only score pseudo-labels: a synthetic source's latent labels, or the hidden
        labels of an unlabelled source (float, NaN where a row has none)."""
        hidden = getattr(source, "hidden", None)
        for s in (source, hidden):
            if hasattr(s, "ground_truth"):
                return dict(s.ground_truth())
        if hidden is None:
            return {}
        tasks = [t for t in self.tasks if t.name in hidden.tasks]
        labels, weights = hidden.labels(tasks)
        return {t.name: np.where((weights[t.name] > 0).reshape((-1,) + (1,) * (labels[t.name].ndim - 1)),
                                 labels[t.name].astype("float64"), np.nan) for t in tasks}

    @staticmethod
    def _default_threshold(task: Task) -> float:
        if task.kind == "regression":
            return REGRESSION_SPREAD * (task.value_range[1] - task.value_range[0])
        return DEFAULT_THRESHOLDS[task.kind]

    @property
    def total_epochs(self) -> int:
        """Epochs of a run with every round: ``epochs_per_round × (rounds + 1)``."""
        return self.epochs_per_round * (self.rounds + 1)

    # -- the round ---------------------------------------------------------------------------
    def run_round(self, model, round_index: int | None = None) -> dict:
        """Pseudo-label every source with the teacher (``model`` unless a teacher was given).

        Returns the round's log entry: per source and task, the candidate rows (no real
        label), the accepted ones and, where ground truth exists, the accuracy (MAE for
        regression) of the accepted pseudo-labels and of all candidates.
        """
        round_index = len(self.log) + 1 if round_index is None else int(round_index)
        models = self.external_teacher if self.external_teacher is not None else model
        if self._teacher is None or self._teacher.models is not models:  # kept across rounds: traced once
            self._teacher = EnsembleTeacher(models, self.transforms)
        teacher = self._teacher
        image_size = tuple(model.input_shape[1:3])
        for m in teacher.model_list:
            if tuple(m.input_shape[1:3]) != image_size:
                raise ConfigError("distillation.teachers", f"a teacher takes {tuple(m.input_shape[1:3])} images, "
                                                           f"the student {image_size}; they must match")
        tasks = [t for t in self.tasks if t.name in teacher.tasks]
        entry = {"round": round_index, "transforms": teacher.T, "sources": {}}
        images_done, start = 0, time.perf_counter()
        for src in self.sources:
            needed = [t for t in tasks if (self._real[src.name][t.name] <= 0).any()]
            if not needed:
                continue  # every row of every task the teacher answers has a real label
            ds = make_dataset([src], self.tasks, batch_size=self.batch_size, image_size=image_size, training=False)
            parts = {t.name: ([], []) for t in needed}
            for images, _, _ in ds:  # streamed: one batch of images in memory at a time
                out = teacher(images, [t.name for t in needed])
                images_done += int(images.shape[0])
                for t in needed:
                    parts[t.name][0].append(out[t.name][0])
                    parts[t.name][1].append(out[t.name][1])
            per_task = {}
            for t in needed:
                mean, spread = (np.concatenate(p) for p in parts[t.name])
                candidates = self._real[src.name][t.name] <= 0  # real labels always win
                accepted = select(t, mean, spread, candidates, self.thresholds[t.name], self.balance)
                values = mean if (self.soft or t.kind != "multilabel") else np.round(mean)
                self.pseudo_labels.assign(src.name, t.name, values, accepted * self.pseudo_weight)
                stats = {"candidates": int(candidates.sum()), "accepted": int(accepted.sum())}
                truth = self.ground_truth.get(src.name, {}).get(t.name)
                if truth is not None:
                    truth = np.asarray(truth, "float64").reshape(len(src), -1)
                    known = np.all(np.isfinite(truth), axis=1)
                    if (accepted & known).any():
                        stats["quality_accepted"] = pseudo_label_quality(t, mean[accepted & known],
                                                                         truth[accepted & known])
                        stats["quality_candidates"] = pseudo_label_quality(t, mean[candidates & known],
                                                                           truth[candidates & known])
                        stats["scored"] = int((accepted & known).sum())
                if stats["candidates"]:
                    per_task[t.name] = stats
            entry["sources"][src.name] = per_task
        seconds = time.perf_counter() - start
        entry["seconds"] = round(seconds, 2)
        entry["images_per_second"] = round(images_done / max(seconds, 1e-9), 1)
        self.log = [e for e in self.log if e["round"] != round_index] + [entry]
        if self.verbose:
            print(format_round(entry, self.tasks))
        self._save_state()
        return entry

    def reinitialise(self, model):
        """Put the student back to its weights and optimizer state at the start of training."""
        if self._initial is None:
            raise RuntimeError("reinitialise needs the weights recorded at train begin")
        model.set_weights(self._initial)
        lr = model.optimizer.learning_rate  # a variable when it is a number (kept); a schedule's value is no variable
        for v in model.optimizer.variables:
            if v is not lr:
                v.assign(np.zeros(v.shape, v.dtype))

    def _save_state(self):
        if self.state_dir is None:
            return
        self.pseudo_labels.save(self.state_dir / "pseudo_labels.npz")
        atomic_write_text(self.state_dir / "distillation.json", json.dumps({"rounds": self.log}, indent=2))
        plot_distillation(self.log, self.tasks, self.state_dir / "plots" / "distillation.png")

    # -- Keras hooks -------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        self._initial = [w.copy() for w in self.model.get_weights()]
        if self.state_dir is not None and (self.state_dir / "distillation.json").exists():
            self.log = json.loads((self.state_dir / "distillation.json").read_text())["rounds"]
            self.pseudo_labels.load(self.state_dir / "pseudo_labels.npz")  # a resumed run keeps its rounds

    def on_epoch_begin(self, epoch, logs=None):
        round_index, boundary = divmod(int(epoch), self.epochs_per_round)
        if boundary or not 1 <= round_index <= self.rounds or any(e["round"] == round_index for e in self.log):
            return
        self.run_round(self.model, round_index)
        if self.reinit:
            self.reinitialise(self.model)

    def on_epoch_end(self, epoch, logs=None):
        if logs is None:
            return
        counts = self.pseudo_labels.counts()
        for t in self.tasks:
            logs[f"pseudo_{t.name}"] = float(sum(c[t.name] for c in counts.values()))


def format_round(entry: dict, tasks: Sequence[Task]) -> str:
    """A plain-text table of one round: per source and task, accepted / candidates and quality.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> entry = {"round": 1, "transforms": 6, "images_per_second": 850.0,
        ...          "sources": {"street-train": {"gender": {"candidates": 100, "accepted": 60}}}}
        >>> print(format_round(entry, [get_task("gender")]))
        distillation round 1 (6 transforms, 850 images/s)
          street-train           gender                60 / 100
    """
    lines = [f"distillation round {entry['round']} ({entry['transforms']} transforms, "
             f"{entry['images_per_second']:.0f} images/s)"]
    kinds = {t.name: t.kind for t in tasks}
    for src, per_task in entry["sources"].items():
        for task, s in per_task.items():
            q = ""
            if "quality_accepted" in s:
                what = "MAE" if kinds[task] == "regression" else "acc"
                q = f"  {what} accepted {s['quality_accepted']:.3f} (all candidates {s['quality_candidates']:.3f})"
            lines.append(f"  {src:<22} {task:<16} {s['accepted']:>7} / {s['candidates']:<7}{q}")
    return "\n".join(lines)


def distill(model, sources: Sequence[Source], tasks: Sequence[Task] | None = None, rounds: int = 2,
            epochs_per_round: int = 1, steps_per_epoch: int | None = None, batch_size: int = 64, mixing="proportional",
            augment: bool = True, seed: int = 0, callbacks: Sequence = (), verbose: int = 1, **options):
    """The plain-Python round loop: train, pseudo-label, train the student, … (no callback needed).

    Args:
        model: a compiled multi-task model (the student; also the teacher unless
            ``teacher=`` is among ``options``).
        sources: labelled and unlabelled training sources.
        options: the :class:`DataDistillation` options (``teacher``, ``soft``, ``thresholds``, …).

    Returns:
        The :class:`DataDistillation` holding the round log and the pseudo-labels.

    Example:
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> from kfacemtl.training import compile_model
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(32, 32, 3), widths=(8,), depths=1)
        >>> model = compile_model(model)
        >>> sources = [make_source("synthetic:portraits?n=32"), make_source("synthetic:street?n=32")]  # street: unlabelled
        >>> rounds = distill(model, sources, rounds=1, epochs_per_round=1, steps_per_epoch=2, batch_size=16,
        ...                  verbose=0)
        >>> [entry["round"] for entry in rounds.log], sorted(rounds.log[0]["sources"]["street-train"])
        ([1], ['gender'])
    """
    tasks = list(tasks or model_tasks(model))
    rounds_ = DataDistillation(sources, tasks, rounds=rounds, epochs_per_round=epochs_per_round, verbose=verbose,
                               **options)
    ds = make_dataset(sources, tasks, batch_size=batch_size, image_size=tuple(model.input_shape[1:3]),
                      mixing=mixing, augment=augment, seed=seed, pseudo_labels=rounds_.pseudo_labels)
    steps = steps_per_epoch or one_pass(sources, batch_size)
    rounds_.set_model(model)
    rounds_.on_train_begin()
    for r in range(rounds + 1):
        if r:
            rounds_.run_round(model, r)
            if rounds_.reinit:
                rounds_.reinitialise(model)
        model.fit(ds, epochs=epochs_per_round, steps_per_epoch=steps, callbacks=list(callbacks), verbose=verbose)
    return rounds_
