"""Teacher-student data distillation rounds (Distill-2MD-MTL, Hosseini, Shabani & Cho, arXiv 1907.03402).

A multi-task teacher fills in what the datasets lack: at each round boundary the model as it
is then (the teacher) predicts every training source under a set of geometric transforms
(Radosavovic et al., "Data Distillation", CVPR 2018: flips, scales, shifts), the ensemble's
confident answers become pseudo-labels for the tasks a source does not label and for
unlabelled sources from other domains, and training goes on (the student) on real labels
plus pseudo-labels.

- **Where pseudo-labels live.** :class:`PseudoLabels` keeps one ``tf.Variable`` of values and
  one of weights per (source, task); the training pipeline
  (:func:`~kfacemtl.pipeline.make_dataset` with ``pseudo_labels=``) gathers them by row id
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
    >>> from kfacemtl.sources import make_source
    >>> from kfacemtl.tasks import resolve_tasks
    >>> from kfacemtl.model import build_model
    >>> from kfacemtl.training import compile_model
    >>> from kfacemtl.pipeline import make_dataset
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
import math
import time
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from kfacemtl.errors import ConfigError
from kfacemtl.files import atomic_write, atomic_write_text
from kfacemtl.sources import Source
from kfacemtl.tasks import Task

#: (flip, scale, dx, dy): scale > 1 zooms in; dx, dy shift the content by that fraction of the image
DEFAULT_TRANSFORMS = ((False, 1.0, 0.0, 0.0), (True, 1.0, 0.0, 0.0), (False, 1.1, 0.0, 0.0),
                      (True, 0.9, 0.0, 0.0), (False, 1.0, 0.05, 0.0), (True, 1.0, -0.05, 0.0))
DEFAULT_THRESHOLDS = {"classification": 0.7, "multilabel": 0.8}
REGRESSION_SPREAD = 0.05  # default regression threshold: this fraction of the task's value range


def transform_boxes(transforms: Sequence) -> np.ndarray:
    """``crop_and_resize`` boxes ``(T, 4)`` ``[y1, x1, y2, x2]`` of ``(flip, scale, dx, dy)`` transforms.

    Example:
        >>> transform_boxes([(False, 1.0, 0.0, 0.0), (True, 2.0, 0.0, 0.0)]).tolist()
        [[0.0, 0.0, 1.0, 1.0], [0.25, 0.75, 0.75, 0.25]]
    """
    boxes = []
    for i, t in enumerate(transforms):
        if len(t) != 4:
            raise ConfigError(f"distillation.transforms[{i}]", f"expected (flip, scale, dx, dy), got {t!r}")
        flip, scale, dx, dy = bool(t[0]), float(t[1]), float(t[2]), float(t[3])
        if not 0.25 <= scale <= 4 or abs(dx) >= 0.5 or abs(dy) >= 0.5:
            raise ConfigError(f"distillation.transforms[{i}]", f"expected a scale in [0.25, 4] and shifts below 0.5, "
                                                               f"got {t!r}")
        half = 0.5 / scale
        y1, y2, x1, x2 = 0.5 - dy - half, 0.5 - dy + half, 0.5 - dx - half, 0.5 - dx + half
        boxes.append([y1, x2, y2, x1] if flip else [y1, x1, y2, x2])
    return np.array(boxes, dtype="float32")


def transform_batch(images, boxes):
    """All T transformed copies of a batch in one op: ``(B, H, W, 3)`` → ``(T·B, H, W, 3)``, transform-major.

    Outside the image (zoom-out, shift) is filled with 0, as the training augmentation's padding.

    Example:
        >>> boxes = transform_boxes(DEFAULT_TRANSFORMS)             # T = 6 transforms
        >>> tuple(transform_batch(tf.zeros((2, 8, 8, 3)), boxes).shape)
        (12, 8, 8, 3)
    """
    images = tf.convert_to_tensor(images, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    b, t = tf.shape(images)[0], tf.shape(boxes)[0]
    size = tf.shape(images)[1:3]
    return tf.image.crop_and_resize(images, tf.repeat(boxes, b, axis=0), tf.tile(tf.range(b), [t]), size,
                                    extrapolation_value=0.0)


class PseudoLabels:
    """Pseudo-labels of every (source, task), read by the training pipeline by row id.

    Classification values are stored as class distributions ``(n, classes)`` (hard mode
    feeds their argmax); other tasks in their label shape. A weight of 0 means no
    pseudo-label. :meth:`assign` changes what the next batches see, with no dataset rebuild.

    Example:
        >>> from kfacemtl.sources import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> store = PseudoLabels([make_source("synthetic:street?n=4")], resolve_tasks(["gender"]))
        >>> store.assign("street-train", "gender", np.eye(2)[[0, 1, 1, 0]], np.array([0.5, 0.5, 0, 0]))
        >>> store.counts()
        {'street-train': {'gender': 2}}
    """

    def __init__(self, sources: Sequence[Source], tasks: Sequence[Task], soft: bool = False):
        self.soft = bool(soft)
        self.tasks = list(tasks)
        self._sizes = {s.name: len(s) for s in sources}
        if len(self._sizes) != len(sources):
            raise ConfigError("sources", "distillation needs distinct source names")
        self.values: dict[str, dict[str, tf.Variable]] = {}
        self.weights: dict[str, dict[str, tf.Variable]] = {}
        for name, n in self._sizes.items():
            self.values[name], self.weights[name] = {}, {}
            for t in self.tasks:
                shape = (n, len(t.classes)) if t.kind == "classification" else (n,) + t.label_shape
                init = t.placeholder(n).astype("float32") if t.kind == "regression" else np.zeros(shape, "float32")
                self.values[name][t.name] = tf.Variable(init, trainable=False, name=f"pseudo_{t.name}")
                self.weights[name][t.name] = tf.Variable(np.zeros(n, "float32"), trainable=False,
                                                         name=f"pseudo_weight_{t.name}")

    def assign(self, source_name: str, task_name: str, values, weights):
        """Replace one (source, task)'s pseudo-labels: ``values`` in the stored shape, ``weights`` ``(n,)``."""
        values, weights = np.asarray(values, "float32"), np.asarray(weights, "float32")
        if not (np.all(np.isfinite(values)) and np.all(np.isfinite(weights)) and np.all(weights >= 0)):
            raise ValueError(f"pseudo-labels of {source_name}/{task_name} must be finite with weights >= 0")
        self.values[source_name][task_name].assign(values.reshape(self.values[source_name][task_name].shape))
        self.weights[source_name][task_name].assign(weights)

    @tf.autograph.experimental.do_not_convert  # plain TF ops: no control flow to convert
    def merge(self, source_name: str, i, labels: dict, weights: dict) -> tuple[dict, dict]:
        """TF ops: row ``i``'s labels with its pseudo-labels filled in where the real label is missing.

        ``i`` is one row id (``labels`` and ``weights`` that row's) or a vector of them (and the
        labels and weights of those rows, stacked). In soft mode class ids become one-hot
        distributions, also for a source the store does not hold (every source's batches need the
        same label structure); labels that are class distributions already (co-annotation) get the
        pseudo-labels' distributions.
        """
        labels, weights = dict(labels), dict(weights)
        held = source_name in self._sizes
        rows = tf.convert_to_tensor(i).shape.rank  # 0: one row, 1: several
        for t in self.tasks:
            real, real_w = labels[t.name], weights[t.name]
            # class distributions already (co-annotation made them) or to be (soft mode)
            dist = t.kind == "classification" and real.shape.rank == 1 + rows
            soft = t.kind == "classification" and (self.soft or dist)
            if soft and not dist:
                real = tf.one_hot(tf.cast(real, tf.int32), len(t.classes))
            if not held:
                labels[t.name] = real
                continue
            pseudo_w = tf.gather(self.weights[source_name][t.name], i)
            value = tf.gather(self.values[source_name][t.name], i)
            if t.kind == "classification" and not self.soft:  # hard pseudo-labels: the top class
                value = tf.argmax(value, axis=-1)
                value = tf.one_hot(value, len(t.classes)) if dist else tf.cast(value, real.dtype)
            use = (real_w <= 0) & (pseudo_w > 0)
            use_value = tf.reshape(use, tf.concat([tf.shape(use), tf.ones([real.shape.rank - rows], tf.int32)], 0))
            labels[t.name] = tf.where(use_value, value, real)  # a row's choice spread over its label's values
            weights[t.name] = tf.where(use, pseudo_w, real_w)
        return labels, weights

    def counts(self) -> dict:
        """``{source: {task: rows with a pseudo-label}}``."""
        return {s: {t: int(np.count_nonzero(w.numpy())) for t, w in tw.items()} for s, tw in self.weights.items()}

    def save(self, path) -> Path:
        """Write every variable to an ``.npz`` file, atomically."""
        arrays = {f"{kind}/{s}/{t}": v.numpy() for kind, store in (("values", self.values), ("weights", self.weights))
                  for s, tv in store.items() for t, v in tv.items()}
        return atomic_write(path, lambda tmp: np.savez(tmp, **arrays))

    def load(self, path):
        """Read what :meth:`save` wrote (the sources and tasks must match)."""
        with np.load(path) as data:
            for kind, store in (("values", self.values), ("weights", self.weights)):
                for s, tv in store.items():
                    for t, v in tv.items():
                        key = f"{kind}/{s}/{t}"
                        if key not in data or data[key].shape != tuple(v.shape):
                            raise ConfigError("distillation", f"{str(path)!r} does not hold pseudo-labels of "
                                                              f"{s}/{t} with shape {tuple(v.shape)}")
                        v.assign(data[key])


class EnsembleTeacher:
    """One or several models predicting batches under T transforms in one pass each.

    Args:
        models: a model (it answers all its tasks) or ``{task: model}`` (e.g. single-task
            teachers; each answers the task it is named for).
        transforms: ``(flip, scale, dx, dy)`` tuples (default :data:`DEFAULT_TRANSFORMS`).

    Example:
        >>> from kfacemtl.model import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> teacher = EnsembleTeacher(build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1))
        >>> mean, spread = teacher(np.zeros((2, 16, 16, 3), "float32"))["age"]
        >>> mean.shape, spread.shape
        ((2, 1), (2,))
    """

    def __init__(self, models, transforms: Sequence = DEFAULT_TRANSFORMS):
        self.models = models
        self.boxes = tf.constant(transform_boxes(transforms))
        self.T = int(self.boxes.shape[0])
        if isinstance(models, Mapping):
            self._plan = [(m, [task]) for task, m in models.items()]
        else:
            self._plan = [(models, list(models.output_names))]
        self._fns = [self._compile(m) for m, _ in self._plan]

    def _compile(self, model):
        boxes, T = self.boxes, self.T

        @tf.function(reduce_retracing=True)
        def predict(images):
            outs = model(transform_batch(images, boxes), training=False)
            outs = outs if isinstance(outs, (list, tuple)) else [outs]
            b = tf.shape(images)[0]
            result = []
            for o in outs:
                o = tf.reshape(tf.cast(o, tf.float32), tf.concat([[T, b], tf.shape(o)[1:]], 0))
                result.append((tf.reduce_mean(o, 0), tf.reduce_mean(tf.math.reduce_std(o, 0), -1)))
            return result
        return predict

    @property
    def tasks(self) -> list[str]:
        """The task names the teacher answers."""
        return [t for _, tasks in self._plan for t in tasks]

    def __call__(self, images, tasks: Sequence[str] | None = None) -> dict:
        """``{task: (ensemble mean (B, ...), spread (B,))}`` as numpy arrays, for ``tasks`` (default all)
        and whatever else the models that answer them give."""
        out = {}
        for (model, answers), fn in zip(self._plan, self._fns):
            if tasks is not None and not set(answers) & set(tasks):
                continue  # a single-task teacher whose task needs no answer here
            results = fn(tf.convert_to_tensor(images, tf.float32))
            names = list(model.output_names)
            for task in answers:
                mean, spread = results[names.index(task)]
                out[task] = (mean.numpy(), spread.numpy())
        return out


def select(task: Task, mean: np.ndarray, spread: np.ndarray, candidates: np.ndarray, threshold: float,
           balance: bool = False) -> np.ndarray:
    """Which candidate rows' ensemble predictions are confident enough to become pseudo-labels.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> probs = np.array([[0.9, 0.1], [0.55, 0.45], [0.2, 0.8]])
        >>> select(get_task("gender"), probs, np.zeros(3), np.array([True, True, False]), 0.7).tolist()
        [True, False, False]
    """
    if task.kind == "regression":
        ok = spread <= threshold
        confidence = -spread
    else:
        confidence = mean.max(-1) if task.kind == "classification" else np.maximum(mean, 1 - mean).mean(-1)
        ok = confidence >= threshold
    accepted = candidates & ok
    if balance and task.kind == "classification" and accepted.any():
        cls = mean.argmax(-1)
        counts = np.bincount(cls[accepted], minlength=mean.shape[-1])
        cap = int(math.ceil(np.median(counts[counts > 0])))
        for c in np.flatnonzero(counts > cap):
            rows = np.flatnonzero(accepted & (cls == c))
            drop = rows[np.argsort(-confidence[rows], kind="stable")[cap:]]
            accepted[drop] = False
    return accepted


def pseudo_label_quality(task: Task, mean: np.ndarray, truth: np.ndarray) -> float:
    """Accuracy of pseudo-labels against ground truth: accuracy (classification), per-unit
    accuracy (multilabel) or mean absolute error (regression).

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> pseudo_label_quality(get_task("gender"), np.array([[0.9, 0.1], [0.2, 0.8]]), np.array([0, 0]))
        0.5
    """
    if task.kind == "classification":
        return float(np.mean(mean.argmax(-1) == truth.reshape(-1).astype(int)))
    if task.kind == "multilabel":
        return float(np.mean((mean >= 0.5) == (truth >= 0.5)))
    return float(np.mean(np.abs(mean.reshape(len(mean), -1) - truth.reshape(len(truth), -1))))


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
            ``{task: model}`` (e.g. single-task teachers); models other than the student stay fixed.
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
            :class:`~kfacemtl.sources.WithoutLabels` sources are used without asking.
        state_dir: where the pseudo-labels (``pseudo_labels.npz``), the round log
            (``distillation.json``) and its plot go; a resumed run reloads them.
        verbose: print a line per task and source at each round.

    Example:
        >>> # rounds = DataDistillation(sources, model.tasks, rounds=2, epochs_per_round=3, state_dir="runs/x")
        >>> # ds = make_dataset(sources, model.tasks, pseudo_labels=rounds.pseudo_labels)
        >>> # model.fit(ds, epochs=rounds.total_epochs, steps_per_epoch=300, callbacks=[rounds])
        >>> from kfacemtl.sources import make_source
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
            raise ConfigError("distillation", f"expected rounds >= 1 and epochs_per_round >= 1, "
                                              f"got {rounds!r} and {epochs_per_round!r}")
        if not 0 < float(pseudo_weight) <= 1:
            raise ConfigError("distillation.pseudo_weight", f"expected a weight in (0, 1], got {pseudo_weight!r}")
        self.sources, self.tasks = list(sources), list(tasks)
        names = {t.name for t in self.tasks}
        unknown = set(thresholds or {}) - names
        if unknown:
            raise ConfigError(f"distillation.thresholds.{sorted(unknown)[0]}", f"not a task of the model {sorted(names)}")
        if isinstance(teacher, Mapping) and set(teacher) - names:
            raise ConfigError(f"distillation.teachers.{sorted(set(teacher) - names)[0]}",
                              f"not a task of the model {sorted(names)}")
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
        from kfacemtl.pipeline import make_dataset
        round_index = len(self.log) + 1 if round_index is None else int(round_index)
        models = self.external_teacher if self.external_teacher is not None else model
        if self._teacher is None or self._teacher.models is not models:  # kept across rounds: traced once
            self._teacher = EnsembleTeacher(models, self.transforms)
        teacher = self._teacher
        image_size = tuple(model.input_shape[1:3])
        for m in (models.values() if isinstance(models, Mapping) else [models]):
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
        lr = getattr(model.optimizer, "_learning_rate", None)
        for v in model.optimizer.variables:
            if v is not lr:
                v.assign(np.zeros(v.shape, v.dtype))

    def _save_state(self):
        if self.state_dir is None:
            return
        self.pseudo_labels.save(self.state_dir / "pseudo_labels.npz")
        atomic_write_text(self.state_dir / "distillation.json", json.dumps({"rounds": self.log}, indent=2))
        from kfacemtl.plots import plot_distillation
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
        >>> # rounds = distill(model, sources, rounds=2, epochs_per_round=3, steps_per_epoch=200)
        >>> # rounds.log[-1]["sources"]["street-train"]["expression"]["accepted"]
    """
    from kfacemtl.model import model_tasks
    from kfacemtl.pipeline import make_dataset, steps_per_epoch as one_pass
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
