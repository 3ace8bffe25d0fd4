"""Teacher annealing (BAM, Clark et al. 2019, arXiv 1907.04829): single-task teachers distilled into the multi-task
student, the target of each labelled row moving from the teacher's soft answer to the real label over training.

For a row with a real label ``y`` of a task the teachers answer, the student's target is
``λ · y + (1 − λ) · teacher(x)``, where ``λ`` grows linearly from ``start`` (0 by default: pure distillation) to 1
over the run's optimizer steps (pure supervision at the end). Class labels become distributions (the one-hot label
mixed with the teacher's probabilities), action units probabilities, regression values a weighted mean. Rows without
a real label are left as they are (weight 0): the teachers only re-describe what is labelled, unless ``unlabelled``
gives a task a weight ``w``: then its rows without a label take the teacher's answer as their target with weight
``w · (1 − λ)``, so the teachers also speak about the other datasets' faces (the expression teacher about UTKFace's,
say), their voice fading with λ as on the labelled rows (the data distillation of Distill-2MD-MTL, annealed).
The teachers answer every image once, before the first step (unaugmented, as the pipeline decodes it, or as the mean
over ``views``, e.g. the image and its mirror); their
answers are kept in ``tf.Variable`` s that the training pipeline reads by row id, as distillation's pseudo-labels
are, and in ``teacher_targets.npz`` of the run, so a resumed run does not ask them again.

Example:
    >>> from kfacemtl.data import make_source
    >>> from kfacemtl.tasks import resolve_tasks
    >>> store = AnnealedTargets([make_source("synthetic:lab?n=2")], resolve_tasks(["expression"]), ["expression"])
    >>> store.assign("lab-train", "expression", np.full((2, 7), 1 / 7))
    >>> _ = store.mix.assign(0.5)                                  # half way through training
    >>> labels, _ = store.merge("lab-train", tf.range(2), {"expression": tf.constant([3, 0])},
    ...                         {"expression": tf.constant([1.0, 0.0])})   # row 1 has no label
    >>> [round(float(v), 3) for v in labels["expression"].numpy()[:, 3]]   # 0.5 x 1 + 0.5 x 1/7
    [0.571, 0.0]
    >>> store = AnnealedTargets([make_source("synthetic:lab?n=2")], resolve_tasks(["expression"]), ["expression"],
    ...                         unlabelled={"expression": 0.5})   # the teacher also speaks about unlabelled rows
    >>> store.assign("lab-train", "expression", np.full((2, 7), 1 / 7))
    >>> _ = store.mix.assign(0.5)
    >>> labels, weights = store.merge("lab-train", tf.range(2), {"expression": tf.constant([3, 0])},
    ...                               {"expression": tf.constant([1.0, 0.0])})
    >>> [round(float(v), 3) for v in labels["expression"].numpy()[:, 3]], weights["expression"].numpy().tolist()
    ([0.571, 0.143], [1.0, 0.25])
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from kfacemtl.data import Source, make_dataset
from kfacemtl.errors import ConfigError
from kfacemtl.files import atomic_write
from kfacemtl.models.views import tta_views
from kfacemtl.tasks import Task
from kfacemtl.training.distillation.teacher import EnsembleTeacher, pseudo_label_quality

STATE_FILE = "teacher_targets.npz"
SINGLE_TASK = "single-task"  # distillation.teachers: train a matched single-task teacher per task first


class AnnealedTargets:
    """The teachers' answers for every row of every training source, mixed into the real labels by :meth:`merge`.

    Args:
        sources: the training sources (distinct names).
        tasks: the model's tasks (every batch has the same label structure: the annealed classification tasks'
            labels are distributions in every source's batches).
        annealed: the names of the tasks the teachers answer.
        unlabelled: ``{task: w}``: that task's rows without a real label learn the teachers' answer with weight
            ``w · (1 − λ)`` (none by default).

    Example:
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> store = AnnealedTargets([make_source("synthetic:lab?n=3")], resolve_tasks(["expression"]), ["expression"])
        >>> float(store.mix.numpy()), store.values["lab-train"]["expression"].shape
        (0.0, TensorShape([3, 7]))
    """

    def __init__(self, sources: Sequence[Source], tasks: Sequence[Task], annealed: Sequence[str],
                 unlabelled: Mapping[str, float] | None = None):
        self.tasks = [t for t in tasks if t.name in set(annealed)]
        self.unlabelled = {t: float(w) for t, w in (unlabelled or {}).items() if float(w) > 0}
        unknown = sorted(set(self.unlabelled) - {t.name for t in self.tasks})
        if unknown:
            raise ValueError(f"unlabelled.{unknown[0]}: not a task the teachers answer {[t.name for t in self.tasks]}")
        sizes = {s.name: len(s) for s in sources}
        if len(sizes) != len(sources):
            raise ValueError(f"sources: teacher annealing needs distinct source names, got {[s.name for s in sources]}")
        self.mix = tf.Variable(0.0, trainable=False, name="teacher_annealing_mix")  # λ: the real label's share
        self.values = {name: {t.name: tf.Variable(np.zeros((n,) + _shape(t), "float32"), trainable=False,
                                                  name=f"teacher_{t.name}") for t in self.tasks}
                       for name, n in sizes.items()}

    def assign(self, source_name: str, task_name: str, values):
        """Set the teachers' answers for one (source, task): ``(n, classes)`` probabilities, ``(n, d)`` values."""
        variable = self.values[source_name][task_name]
        values = np.asarray(values, "float32").reshape(variable.shape)
        if not np.all(np.isfinite(values)):
            raise ValueError(f"values: the teacher's answers for {source_name}/{task_name} are not all finite")
        variable.assign(values)

    @tf.autograph.experimental.do_not_convert  # plain TF ops: no control flow to convert
    def merge(self, source_name: str, i, labels: dict, weights: dict) -> tuple[dict, dict]:
        """TF ops: the labels of row(s) ``i`` mixed with the teachers' answers where a real label exists (the
        pipeline's label-store interface, as :class:`~kfacemtl.training.distillation.PseudoLabels`)."""
        labels, weights = dict(labels), (dict(weights) if self.unlabelled else weights)
        rows = tf.convert_to_tensor(i).shape.rank  # 0: one row, 1: several
        held = self.values.get(source_name, {})
        for t in self.tasks:
            taught = t.name in self.unlabelled and t.name in held  # unlabelled rows learn the teacher's answer
            real = labels[t.name]
            if t.kind == "classification" and real.shape.rank == rows:  # class ids: as distributions
                real = tf.one_hot(tf.cast(real, tf.int32), len(t.classes))
            real = tf.cast(real, tf.float32)
            if t.name in held:
                teacher = tf.gather(held[t.name], i)
                labelled = tf.cast(weights[t.name] > 0, tf.float32)
                labelled = tf.reshape(labelled, tf.concat([tf.shape(labelled),
                                                           tf.ones([real.shape.rank - rows], tf.int32)], 0))
                lam = labelled * self.mix + (0.0 if taught else 1.0 - labelled)  # else the placeholder stays
                real = lam * real + (1.0 - lam) * tf.reshape(teacher, tf.shape(real))
            if taught:
                share = tf.cast(self.unlabelled[t.name] * (1.0 - self.mix), weights[t.name].dtype)
                weights[t.name] = tf.where(weights[t.name] > 0, weights[t.name], share)
            labels[t.name] = real
        return labels, weights

    def save(self, path) -> Path:
        """Write the teachers' answers to an ``.npz`` file, atomically."""
        arrays = {f"{s}/{t}": v.numpy() for s, tv in self.values.items() for t, v in tv.items()}
        return atomic_write(path, lambda tmp: np.savez(tmp, **arrays))

    def load(self, path) -> bool:
        """Read what :meth:`save` wrote; False when it does not hold every (source, task) with its shape."""
        with np.load(path) as data:
            if any(f"{s}/{t}" not in data or data[f"{s}/{t}"].shape != tuple(v.shape)
                   for s, tv in self.values.items() for t, v in tv.items()):
                return False
            for s, tv in self.values.items():
                for t, v in tv.items():
                    v.assign(data[f"{s}/{t}"])
        return True


def _shape(task: Task) -> tuple:
    return (len(task.classes),) if task.kind == "classification" else tuple(task.label_shape)


class TeacherAnnealing(keras.callbacks.Callback):
    """Distil teachers into the student with teacher annealing (see the module docstring).

    Args:
        sources: the training sources (cached, as the run decodes them).
        tasks: the model's tasks.
        teachers: ``{task: model}`` (e.g. single-task models, each answering the task it is named for; or
            ``{task: [model, ...]}``, their answers averaged) or one model answering all its tasks.
        start: ``λ`` at the first step (0: the teacher's answer alone; 1 would be no distillation).
        unlabelled: the weight of the teachers' answers on rows without a real label (their target there), one
            number for every task the teachers answer or ``{task: weight}``; faded by ``1 − λ``; 0 (default): off.
        batch_size: images per teacher call.
        state_dir: where ``teacher_targets.npz`` is kept (None: nowhere).
        teacher_runs: ``{task: {"run": folder, "train_seconds": s}}`` of teachers trained for this run (the log
            carries them, so the student's report counts their time).
        views: the views each teacher answers with, averaged (``"none"``: the image alone; ``"flip"``: the image
            and its mirror; ``"six"``; or a tuple of ``(flip, scale, dx, dy)`` views): the teachers' test-time
            augmentation, in the same batched pass.

    :attr:`pseudo_labels` is the :class:`AnnealedTargets` store the training pipeline reads; :attr:`log` what the
    report shows (the teachers' agreement with the real labels, per source and task, and their time).

    Example:
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> tasks = resolve_tasks(["expression"])
        >>> teacher = build_model(tasks, input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> annealing = TeacherAnnealing([make_source("synthetic:lab?n=8")], tasks, {"expression": teacher})
        >>> annealing.annealed, annealing.lambda_at(0, 100), annealing.lambda_at(50, 100)
        (['expression'], 0.0, 0.5)
    """

    def __init__(self, sources: Sequence[Source], tasks: Sequence[Task], teachers, start: float = 0.0,
                 batch_size: int = 128, state_dir=None, verbose: int = 1, teacher_runs: Mapping | None = None,
                 unlabelled: float | Mapping[str, float] = 0.0, views="none"):
        super().__init__()
        if not 0 <= float(start) < 1:
            raise ValueError(f"start: expected the real label's first share in [0, 1), got {start!r}")
        names = [t.name for t in tasks]
        if isinstance(teachers, Mapping):
            unknown = sorted(set(teachers) - set(names))
            if unknown:
                raise ValueError(f"teachers.{unknown[0]}: not a task of the model {names}")
        elif teachers is None:
            raise ValueError("teachers: teacher annealing needs teachers ({task: model} or one model)")
        self.sources, self.tasks, self.start = list(sources), list(tasks), float(start)
        self.views = views
        self.teacher = EnsembleTeacher(teachers, tta_views(views) or ((False, 1.0, 0.0, 0.0),))
        self.annealed = [n for n in names if n in self.teacher.tasks]
        if not self.annealed:
            raise ValueError(f"teachers: they answer none of the model's tasks {names}")
        if not isinstance(unlabelled, Mapping):
            unlabelled = dict.fromkeys(self.annealed, unlabelled)
        bad = {t: w for t, w in unlabelled.items()
               if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1}
        if bad:
            task, w = next(iter(bad.items()))
            raise ValueError(f"unlabelled.{task}: expected a weight in [0, 1], got {w!r}")
        self.pseudo_labels = AnnealedTargets(self.sources, self.tasks, self.annealed, unlabelled)
        self.pseudo_labels.mix.assign(self.start)
        self.batch_size, self.verbose = int(batch_size), verbose
        self.state_dir = Path(state_dir) if state_dir is not None else None
        self.log: list[dict] = []
        self.teacher_runs = dict(teacher_runs or {})

    def lambda_at(self, step: int, total: int) -> float:
        """The real label's share at optimizer step ``step`` of ``total``: linear from ``start`` to 1."""
        return float(min(1.0, self.start + (1.0 - self.start) * step / max(int(total), 1)))

    def teach(self, image_size) -> dict:
        """Ask the teachers about every training image once; returns the log entry. Each teacher is asked about the
        images at its own input size (``teacher_sizes`` in the entry where it is not ``image_size``, the student's):
        a 64×64 teacher can teach an 80×80 student."""
        start, entry = time.perf_counter(), {"annealing": True, "sources": {}}
        if self.views != "none":
            entry["views"] = self.views if isinstance(self.views, str) else [list(v) for v in self.views]
        sizes = self.teacher.input_sizes(self.annealed)
        if set(sizes) != {tuple(image_size)}:
            entry["teacher_sizes"] = {task: list(size) for size, names in sizes.items() for task in names}
        tasks = [t for t in self.tasks if t.name in self.annealed]
        for src in self.sources:
            answers = {t.name: [] for t in tasks}
            for size, names in sizes.items():
                ds = make_dataset([src], self.tasks, batch_size=self.batch_size, image_size=size, training=False)
                for images, _, _ in ds:
                    out = self.teacher(images, names)
                    for name in names:
                        answers[name].append(out[name][0])
            labels, weights = src.labels(self.tasks)
            entry["sources"][src.name] = {}
            for t in tasks:
                values = np.concatenate(answers[t.name])
                if values.shape[1:] != _shape(t):
                    raise ConfigError(f"distillation.teachers.{t.name}", f"the teacher answers {t.name} with shape "
                                                                         f"{values.shape[1:]}, the student's task has "
                                                                         f"{_shape(t)} (the same classes?)")
                self.pseudo_labels.assign(src.name, t.name, values)
                labelled = weights[t.name] > 0
                if labelled.any():  # how well the teacher fits the real labels it will be mixed with
                    truth = np.asarray(labels[t.name], "float64")[labelled].reshape(int(labelled.sum()), -1)
                    entry["sources"][src.name][t.name] = {
                        "labelled": int(labelled.sum()),
                        "teacher_agreement": pseudo_label_quality(t, values[labelled], truth)}
        entry["seconds"] = round(time.perf_counter() - start, 2)
        return entry

    def on_train_begin(self, logs=None):
        path = None if self.state_dir is None else self.state_dir / STATE_FILE
        if path is not None and path.is_file() and self.pseudo_labels.load(path):
            self.log = [{"annealing": True, "resumed_from": str(path)}]
        else:
            self.log = [self.teach(tuple(self.model.input_shape[1:3]))]
            if path is not None:
                self.pseudo_labels.save(path)
        if self.pseudo_labels.unlabelled:
            self.log[0]["unlabelled"] = dict(self.pseudo_labels.unlabelled)
        if self.teacher_runs:
            self.log[0]["teacher_runs"] = self.teacher_runs
            self.log[0]["teachers_train_seconds"] = round(sum(r.get("train_seconds") or 0.0
                                                              for r in self.teacher_runs.values()), 1)
        if self.verbose:
            agreement = {f"{s}/{t}": v["teacher_agreement"] for s, tv in self.log[0].get("sources", {}).items()
                         for t, v in tv.items()}
            print(f"teacher annealing: {', '.join(self.annealed)}; the teachers on the training labels {agreement}")

    def on_train_batch_begin(self, batch, logs=None):
        total = self.params.get("epochs", 1) * (self.params.get("steps") or 1)
        self.pseudo_labels.mix.assign(self.lambda_at(int(self.model.optimizer.iterations.numpy()), total))

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["teacher_lambda"] = float(self.pseudo_labels.mix.numpy())
