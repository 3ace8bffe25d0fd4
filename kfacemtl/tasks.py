"""Tasks: what one output head predicts, its label convention, loss and metrics.

A :class:`Task` is a small, serialisable description. The built-in face tasks follow the
label conventions of the shared data README (UTKFace gender/race order, FER2013 expression
order); a config can declare more.

Example:
    >>> from kfacemtl.tasks import get_task, Task
    >>> get_task("gender").classes
    ('male', 'female')
    >>> Task("smile", "classification", classes=("no", "yes")).output_dim
    2
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Mapping, Sequence

import numpy as np

from kfacemtl.errors import ConfigError, LabelError, expect_one_of, under_key

KINDS = ("classification", "regression", "multilabel")

GENDER_CLASSES = ("male", "female")
RACE_CLASSES = ("white", "black", "asian", "indian", "others")
EXPRESSION_CLASSES = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
EXPRESSION_CLASSES_WITH_CONTEMPT = EXPRESSION_CLASSES + ("contempt",)
# FACS action units modelled by the package (and rendered by the synthetic benchmark):
# brows (1, 2, 4), eyes (5, 6, 7), nose (9), mouth and chin (12, 15, 17, 20, 23, 25, 26).
ACTION_UNITS = (
    "AU1", "AU2", "AU4", "AU5", "AU6", "AU7", "AU9",
    "AU12", "AU15", "AU17", "AU20", "AU23", "AU25", "AU26",
)

_DEFAULT_LOSS = {"classification": "crossentropy", "multilabel": "binary_crossentropy",
                 "regression": "huber"}


@dataclasses.dataclass(frozen=True)
class Task:
    """One prediction target and its head.

    Args:
        name: the task's name; also the name of its output layer.
        kind: ``"classification"`` (one class id), ``"multilabel"`` (K independent 0/1
            labels) or ``"regression"`` (``dim`` real values).
        classes: class names (classification) or label names (multilabel).
        dim: number of values of a regression task.
        value_range: ``(low, high)`` of a regression task's labels; labels outside are an
            error, and predictions are produced on that scale.
        loss: ``crossentropy``, ``binary_crossentropy``, ``huber``, ``mse`` or ``mae``.
        loss_scale: regression errors are divided by this before the loss, so a task in
            years and one in [-1, 1] get comparable gradients.
        value_names: names of the values of a regression task (``valence``, ``arousal``).
        output_center, output_scale: a regression head predicts ``center + scale · z``;
            default the middle of ``value_range`` and half its width. Age uses 35 ± 20 years,
            so the head starts near typical ages and a unit of ``z`` is not 60 years.

    Example:
        >>> t = Task("age", "regression", value_range=(0, 120), loss_scale=10.0)
        >>> t.label_shape
        (1,)
    """

    name: str
    kind: str
    classes: tuple = ()
    dim: int = 1
    value_range: tuple | None = None
    loss: str = ""
    loss_scale: float = 1.0
    value_names: tuple = ()
    output_center: float | None = None
    output_scale: float | None = None

    def __post_init__(self):
        if not self.name or not str(self.name).isidentifier():
            raise ValueError(f"name: a task name must be an identifier, got {self.name!r}")
        expect_one_of("kind", self.kind, KINDS)
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        object.__setattr__(self, "value_names", tuple(str(c) for c in self.value_names))
        if self.kind in ("classification", "multilabel") and len(self.classes) < 2 \
                and not (self.kind == "multilabel" and len(self.classes) == 1):
            raise ValueError(f"classes: a {self.kind} task needs at least 2 classes")
        if self.kind == "regression":
            if int(self.dim) < 1:
                raise ValueError(f"dim: expected a positive integer, got {self.dim!r}")
            object.__setattr__(self, "dim", int(self.dim))
            if self.value_range is None or len(self.value_range) != 2 \
                    or not float(self.value_range[0]) < float(self.value_range[1]):
                raise ValueError(f"value_range: expected [low, high] with low < high, got {self.value_range!r}")
            object.__setattr__(self, "value_range", (float(self.value_range[0]),
                                                     float(self.value_range[1])))
        loss = self.loss or _DEFAULT_LOSS[self.kind]
        allowed = {"classification": ("crossentropy",), "multilabel": ("binary_crossentropy",),
                   "regression": ("huber", "mse", "mae")}[self.kind]
        if loss not in allowed:
            raise ValueError(f"loss: expected one of {allowed} for a {self.kind} task, got {loss!r}")
        object.__setattr__(self, "loss", loss)
        if not float(self.loss_scale) > 0:
            raise ValueError(f"loss_scale: expected a positive number, got {self.loss_scale!r}")
        object.__setattr__(self, "loss_scale", float(self.loss_scale))

    @property
    def output_affine(self) -> tuple[float, float]:
        """``(center, scale)`` of a regression head's output."""
        lo, hi = self.value_range
        center = 0.5 * (lo + hi) if self.output_center is None else float(self.output_center)
        scale = 0.5 * (hi - lo) if self.output_scale is None else float(self.output_scale)
        return center, scale

    @property
    def output_dim(self) -> int:
        """Width of the head's output."""
        return self.dim if self.kind == "regression" else len(self.classes)

    @property
    def label_shape(self) -> tuple:
        """Shape of one label: ``()`` for a class id, ``(K,)`` otherwise."""
        return () if self.kind == "classification" else (self.output_dim,)

    @property
    def label_dtype(self) -> str:
        return "int32" if self.kind == "classification" else "float32"

    def placeholder(self, n: int) -> np.ndarray:
        """``n`` finite placeholder labels for rows where this task is missing (weight 0)."""
        if self.kind == "regression":
            mid = 0.5 * (self.value_range[0] + self.value_range[1])
            return np.full((n,) + self.label_shape, mid, dtype=self.label_dtype)
        return np.zeros((n,) + self.label_shape, dtype=self.label_dtype)

    def check_labels(self, values: np.ndarray, present: np.ndarray, row_names: Sequence[str],
                     where: str) -> np.ndarray:
        """Validate labelled rows and return labels ready for the pipeline.

        Args:
            values: float array ``(n,) + label_shape``; rows not ``present`` are ignored.
            present: bool array ``(n,)``: which rows carry this task's label.
            row_names: a name per row (file path or row number) used in error messages.
            where: the source, used in error messages.

        Raises:
            LabelError: naming the source, the row and what was expected.
        """
        values = np.asarray(values, dtype="float64").reshape((len(present),) + self.label_shape)
        present = np.asarray(present, dtype=bool)
        flat = values.reshape(len(present), -1)
        bad = present & ~np.all(np.isfinite(flat), axis=1)
        self._raise_first(bad, flat, row_names, where, "is NaN or not a number")
        if self.kind == "classification":
            n = len(self.classes)
            bad = present & ((flat[:, 0] != np.round(flat[:, 0])) | (flat[:, 0] < 0) | (flat[:, 0] >= n))
            self._raise_first(bad, flat, row_names, where,
                              f"is not a class id in [0, {n - 1}] (classes: {', '.join(self.classes)})")
        elif self.kind == "multilabel":
            bad = present & np.any((flat < 0) | (flat > 1), axis=1)
            self._raise_first(bad, flat, row_names, where, "has values outside [0, 1]")
        else:
            lo, hi = self.value_range
            bad = present & np.any((flat < lo) | (flat > hi), axis=1)
            self._raise_first(bad, flat, row_names, where, f"is outside the range [{lo:g}, {hi:g}]")
        out = self.placeholder(len(present))
        out[present] = values[present].astype(self.label_dtype)
        return out

    def _raise_first(self, bad, flat, row_names, where, what):
        if np.any(bad):
            i = int(np.flatnonzero(bad)[0])
            shown = float(flat[i, 0]) if flat.shape[1] == 1 else flat[i].tolist()
            raise LabelError(f"{where}: row {row_names[i]}: task '{self.name}' label {shown!r} {what}"
                             f" ({int(bad.sum())} bad row(s) in all)")

    def to_config(self) -> dict:
        """A plain dict that :meth:`from_config` turns back into the task."""
        cfg = dataclasses.asdict(self)
        cfg["classes"] = list(self.classes)
        cfg["value_names"] = list(self.value_names)
        cfg["value_range"] = list(self.value_range) if self.value_range else None
        return cfg

    @classmethod
    def from_config(cls, config: Mapping) -> "Task":
        cfg = dict(config)
        for key in ("classes", "value_names"):
            cfg[key] = tuple(cfg.get(key) or ())
        if cfg.get("value_range") is not None:
            cfg["value_range"] = tuple(cfg["value_range"])
        return cls(**cfg)


def _builtin() -> dict:
    return {
        "age": Task("age", "regression", value_range=(0.0, 120.0), loss="huber", loss_scale=10.0,
                    value_names=("age",), output_center=35.0, output_scale=20.0),
        "gender": Task("gender", "classification", classes=GENDER_CLASSES),
        "race": Task("race", "classification", classes=RACE_CLASSES),
        "expression": Task("expression", "classification", classes=EXPRESSION_CLASSES),
        "action_units": Task("action_units", "multilabel", classes=ACTION_UNITS),
        "valence_arousal": Task("valence_arousal", "regression", dim=2, value_range=(-1.0, 1.0),
                                loss="mse", loss_scale=0.5, value_names=("valence", "arousal")),
    }


BUILTIN_TASKS = _builtin()
FACE_TASKS = tuple(BUILTIN_TASKS) + ("identity",)
_TASK_FIELDS = {f.name for f in dataclasses.fields(Task)}


def get_task(name: str, **overrides) -> Task:
    """A built-in face task by name, optionally with fields overridden.

    ``identity`` needs its classes: ``get_task("identity", classes=40)`` (a count or names).
    ``get_task("expression", contempt=True)`` adds the eighth class, contempt.

    Example:
        >>> get_task("identity", classes=3).classes
        ('id0', 'id1', 'id2')
    """
    overrides = dict(overrides)
    if name == "expression" and overrides.pop("contempt", False):
        overrides.setdefault("classes", EXPRESSION_CLASSES_WITH_CONTEMPT)
    if name == "identity":
        classes = overrides.pop("classes", None)
        if classes is None:
            raise ValueError("classes: identity needs its number of people or their names")
        if isinstance(classes, int):
            classes = tuple(f"id{i}" for i in range(classes))
        return Task("identity", "classification", classes=tuple(classes), **overrides)
    if name not in BUILTIN_TASKS:
        raise ValueError(f"name: unknown built-in task {name!r}; built-in tasks are {FACE_TASKS} (declare a new "
                         f"task with its 'kind')")
    unknown = set(overrides) - _TASK_FIELDS
    if unknown:
        raise ValueError(f"{sorted(unknown)[0]}: unknown key; expected one of {sorted(_TASK_FIELDS)}")
    if not overrides:
        return BUILTIN_TASKS[name]
    return dataclasses.replace(BUILTIN_TASKS[name], **{k: (tuple(v) if isinstance(v, list) else v)
                                                       for k, v in overrides.items()})


def resolve_tasks(spec: Iterable | Mapping | None) -> list[Task]:
    """Tasks from a config: names of built-ins, ``Task`` objects, or ``{name: overrides}``.

    A name that is not built in needs at least ``kind`` (and classes or a value range).

    Example:
        >>> [t.name for t in resolve_tasks(["age", "gender"])]
        ['age', 'gender']
        >>> resolve_tasks({"smile": {"kind": "classification", "classes": ["no", "yes"]}})[0].kind
        'classification'
    """
    if spec is None:
        return [BUILTIN_TASKS[n] for n in BUILTIN_TASKS]
    items = spec.items() if isinstance(spec, Mapping) else [(s, None) for s in spec]
    tasks = []
    for name, overrides in items:
        if isinstance(name, Task):
            tasks.append(name)
            continue
        overrides = dict(overrides or {})
        if name in BUILTIN_TASKS or name == "identity":
            with under_key(f"tasks.{name}"):  # Task's and get_task's plain errors name this task's keys
                tasks.append(get_task(name, **overrides))
        else:
            if "kind" not in overrides:
                raise ConfigError(f"tasks.{name}", "not a built-in task; a new task needs 'kind' "
                                                   f"(one of {KINDS}) and its classes or value_range")
            unknown = set(overrides) - _TASK_FIELDS
            if unknown:
                raise ConfigError(f"tasks.{name}.{sorted(unknown)[0]}",
                                  f"unknown key; expected one of {sorted(_TASK_FIELDS - {'name'})}")
            with under_key(f"tasks.{name}"):
                tasks.append(Task.from_config({"name": name, **overrides}))
    names = [t.name for t in tasks]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise ConfigError("tasks", f"task(s) declared twice: {sorted(dupes)}")
    return tasks
