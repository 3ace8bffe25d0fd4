"""The :class:`Source` interface: images plus a label table, the tasks they label, and their domain.

Every dataset format is one small class behind this interface, registered by name
(:func:`~kfacemtl.data.registry.register_source`), so a new format is one new file. File-based formats whose labels
are read when the source is built derive :class:`FileTableSource`.

Example:
    >>> src = FileTableSource("faces", "studio", ["a.jpg", "b.jpg"], {"gender": [0, 1]})
    >>> src.tasks, src.domain, len(src)
    (('gender',), 'studio', 2)
"""
from __future__ import annotations

import abc
from typing import Mapping, Sequence

import numpy as np

from kfacemtl.errors import LabelError
from kfacemtl.tasks import EXPRESSION_CLASSES_WITH_CONTEMPT, Task


CONTEMPT = EXPRESSION_CLASSES_WITH_CONTEMPT.index("contempt")  # the eighth expression class
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class Source(abc.ABC):
    """A set of face images, labelled for some tasks, from one domain.

    Subclasses provide images either in memory (:meth:`images`) or as files
    (:meth:`paths`), and their labels through :meth:`raw_labels`.

    Example:
        >>> class TwoFaces(Source):                      # a new format is one small class
        ...     format = "two"
        ...     def __init__(self):
        ...         super().__init__("two-faces", "studio", ["gender"])
        ...     def __len__(self):
        ...         return 2
        ...     def images(self):
        ...         return np.zeros((2, 8, 8, 3), "uint8")
        ...     def raw_labels(self, task):
        ...         return np.array([0.0, 1.0]), np.array([True, False])
        >>> from kfacemtl.tasks import resolve_tasks
        >>> labels, weights = TwoFaces().labels(resolve_tasks(["gender", "age"]))
        >>> weights["gender"].tolist(), weights["age"].tolist()          # age: not labelled, weight 0
        ([1.0, 0.0], [0.0, 0.0])
    """

    #: short format name used in ``FORMAT:PATH`` specs
    format = ""
    #: True once every image file of this source object decoded (the bad-image check runs once per object)
    images_checked = False

    def __init__(self, name: str, domain: str, tasks: Sequence[str]):
        self.name = name
        self.domain = domain
        self.tasks = tuple(tasks)

    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of samples."""

    def images(self) -> np.ndarray | None:
        """In-memory ``uint8`` images ``(n, H, W, C)``, or None for file-based sources."""
        return None

    def paths(self) -> np.ndarray | None:
        """Image file paths (one per row), or None for in-memory sources."""
        return None

    @abc.abstractmethod
    def raw_labels(self, task: Task) -> tuple[np.ndarray, np.ndarray]:
        """``(values, present)`` for a task this source labels: float values with the task's
        label shape per row and a bool mask of labelled rows. Not yet validated."""

    def row_names(self) -> list[str]:
        """Names for rows in error messages: the file path, or the row number."""
        paths = self.paths()
        if paths is not None:
            return [f"{i} ({p})" for i, p in enumerate(paths)]
        return [str(i) for i in range(len(self))]

    def labels(self, tasks: Sequence[Task]) -> tuple[dict, dict]:
        """Validated labels and weights for every task of a model.

        Tasks this source does not label get finite placeholder labels and weight 0.

        Returns:
            ``(labels, weights)``: dicts keyed by task name; labels have shape
            ``(n,) + task.label_shape``, weights ``(n,)`` float32 (0 = missing).

        Raises:
            LabelError: a label is NaN, not a number or out of range (names source and row).
        """
        n = len(self)
        labels, weights = {}, {}
        names = None
        for task in tasks:
            if task.name in self.tasks:
                values, present = self.raw_labels(task)
                names = names or self.row_names()
                labels[task.name] = task.check_labels(values, present, names, where=f"source {self.name}")
                weights[task.name] = np.asarray(present, dtype="float32")
            else:
                labels[task.name] = task.placeholder(n)
                weights[task.name] = np.zeros(n, dtype="float32")
        return labels, weights

    def describe(self) -> dict:
        """A JSON-able summary for reports."""
        return {"name": self.name, "format": self.format, "domain": self.domain,
                "tasks": list(self.tasks), "samples": len(self)}

    def __repr__(self):
        return f"{type(self).__name__}(name={self.name!r}, domain={self.domain!r}, tasks={self.tasks}, n={len(self)})"


class FileTableSource(Source):
    """Base of file-based sources whose labels are all read when the source is built.

    Subclasses parse their format and call ``super().__init__(name, domain, paths, labels, present)``
    with ``labels = {task: values}`` and, for tasks some rows lack, ``present = {task: mask}``.
    Every row of a task without a mask is labelled (a NaN there is reported, never trained on).

    Example:
        >>> src = FileTableSource("faces", "studio", ["a.jpg", "b.jpg"], {"age": [31, 0]},
        ...                       present={"age": [True, False]})
        >>> src.tasks, src.paths().tolist()
        (('age',), ['a.jpg', 'b.jpg'])
    """

    def __init__(self, name: str, domain: str, paths: Sequence[str], labels: Mapping[str, np.ndarray],
                 present: Mapping[str, np.ndarray] | None = None):
        super().__init__(name, domain, tuple(labels))
        self._paths = np.array([str(p) for p in paths])
        self._labels = {t: np.asarray(v, "float64") for t, v in labels.items()}
        present = present or {}
        self._present = {t: np.asarray(present.get(t, np.ones(len(v), bool)), bool) for t, v in self._labels.items()}

    def __len__(self):
        return len(self._paths)

    def paths(self):
        return self._paths

    def raw_labels(self, task):
        values, present = self._labels[task.name], self._present[task.name]
        if task.name == "expression" and len(task.classes) <= CONTEMPT:
            n = int(np.sum(present & (values == CONTEMPT)))
            if n:
                raise LabelError(f"source {self.name}: {n} image(s) are labelled contempt, a class the model's "
                                 "expression task lacks; declare it (tasks: {expression: {contempt: true}}) "
                                 "or leave them out with the source option contempt=drop")
        return values, present
