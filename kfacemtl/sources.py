"""Data sources: images plus a label table, the tasks they label, and their domain.

Every source is one small class behind the :class:`Source` interface, so a new dataset
format is one new class registered in ``SOURCE_FORMATS``. Sources are named in configs
and on the command line as ``FORMAT:PATH``, with options as ``?key=value&key=value``:

- ``synthetic:DOMAIN`` — the built-in synthetic benchmark (options ``split``, ``n``, ``seed``).
- ``csv:FILE`` — a manifest with a ``path`` column and one column per task; an empty cell
  is a missing label; vector labels (action units, valence/arousal) are space-separated.
- ``folder:DIR`` — one sub-folder per class of one task (option ``task``).

Example:
    >>> from kfacemtl.sources import make_source
    >>> src = make_source("synthetic:lab?n=16&split=train")
    >>> src.tasks, src.domain, len(src)
    (('expression', 'action_units'), 'lab', 16)
"""

from __future__ import annotations

import abc
import inspect
import os
import urllib.parse
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kfacemtl import synthetic
from kfacemtl.errors import ConfigError, LabelError, SourceError
from kfacemtl.tasks import Task

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")


class Source(abc.ABC):
    """A set of face images, labelled for some tasks, from one domain.

    Subclasses provide images either in memory (:meth:`images`) or as files
    (:meth:`paths`), and their labels through :meth:`raw_labels`.
    """

    #: short format name used in ``FORMAT:PATH`` specs
    format = ""

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


class SyntheticSource(Source):
    """One split of one domain of the synthetic benchmark (see :mod:`kfacemtl.synthetic`).

    Args:
        domain: ``portraits``, ``lab``, ``webcam``, ``affect`` or ``street``.
        split: ``train`` or ``test``; test splits are labelled for every task by default.
        n: number of faces.
        seed: rendering seed.
        tasks: the tasks to expose as labelled (default: the domain's labels for train,
            all tasks for test).
        cache_dir: where rendered splits are cached (default ``~/.cache/kfacemtl``).

    Example:
        >>> SyntheticSource("street", split="test", n=8).tasks[:3]
        ('age', 'gender', 'race')
    """

    format = "synthetic"
    ALL_TASKS = ("age", "gender", "race", "expression", "action_units", "valence_arousal")

    def __init__(self, domain: str, split: str = "train", n: int = 2000, seed: int = 0,
                 tasks: Sequence[str] | None = None, cache_dir: str | None = None, name: str | None = None):
        if domain not in synthetic.DOMAINS:
            raise SourceError(f"synthetic: unknown domain {domain!r}; domains are {sorted(synthetic.DOMAINS)}")
        if split not in ("train", "test"):
            raise SourceError(f"synthetic:{domain}: split must be 'train' or 'test', got {split!r}")
        if int(n) < 1:
            raise SourceError(f"synthetic:{domain}: n must be a positive number of faces, got {n!r}")
        dom = synthetic.DOMAINS[domain]
        if tasks is None:
            tasks = dom.labels if split == "train" else self.ALL_TASKS
        unknown = set(tasks) - set(self.ALL_TASKS) - {"identity"}
        if unknown:
            raise SourceError(f"synthetic:{domain}: it has no ground truth for {sorted(unknown)}")
        super().__init__(name or f"{domain}-{split}", domain, tasks)
        self.split, self.n, self.seed = split, int(n), int(seed)
        self._images, self._labels = synthetic.load_split(domain, self.n, split, self.seed, cache_dir)

    def __len__(self):
        return self.n

    def images(self):
        return self._images

    def raw_labels(self, task):
        values = self._labels[task.name].astype("float64")
        return values, np.ones(self.n, dtype=bool)

    def ground_truth(self) -> dict:
        """All latent labels of the split (including identity), whatever ``tasks`` exposes."""
        return dict(self._labels)


def _parse_cell(cell, task: Task, where: str):
    """One manifest cell → (values, present). Empty = missing."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)) or (isinstance(cell, str) and not cell.strip()):
        return None
    if task.kind == "classification":
        if isinstance(cell, str) and cell.strip() in task.classes:
            return [float(task.classes.index(cell.strip()))]
        parts = [cell]
    else:
        parts = str(cell).replace(";", " ").replace(",", " ").split() if isinstance(cell, str) else [cell]
    try:
        vals = [float(p) for p in parts]
    except (TypeError, ValueError):
        raise LabelError(f"{where}: task '{task.name}' cell {cell!r} is not a number"
                         + (f" or a class name ({', '.join(task.classes)})" if task.kind == "classification" else "")
                         ) from None
    expected = int(np.prod(task.label_shape)) if task.label_shape else 1
    if len(vals) != expected:
        raise LabelError(f"{where}: task '{task.name}' cell {cell!r} has {len(vals)} value(s), expected {expected}")
    return vals


class CsvSource(Source):
    """A CSV manifest: a ``path`` column (relative to the CSV's folder or ``root``) plus task columns.

    An empty cell is a missing label. Classification cells hold a class id or class name;
    multilabel and multi-value regression cells hold space-separated numbers.

    Args:
        path: the CSV file.
        tasks: task columns to read (default: every column named after a known task).
        domain: the domain name (default: the CSV's file stem).
        root: folder that image paths are relative to (default: the CSV's folder).
        known_tasks: task names considered when ``tasks`` is None.

    Example:
        >>> # manifest.csv:  path,gender,age
        >>> #                img/0.png,1,23
        >>> # CsvSource("manifest.csv").tasks  ->  ('gender', 'age')
    """

    format = "csv"

    def __init__(self, path: str, tasks: Sequence[str] | None = None, domain: str | None = None,
                 root: str | None = None, name: str | None = None, known_tasks: Sequence[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"csv: manifest file {str(self.path)!r} does not exist")
        try:
            self.table = pd.read_csv(self.path, dtype=str, keep_default_na=False, na_values=[""])
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
            raise SourceError(f"csv: cannot read {str(self.path)!r}: {e}") from None
        if "path" not in self.table.columns:
            raise SourceError(f"csv: {str(self.path)!r} has no 'path' column (columns: {list(self.table.columns)})")
        if tasks is None:
            from kfacemtl.tasks import FACE_TASKS
            known = set(known_tasks or FACE_TASKS)
            tasks = [c for c in self.table.columns if c in known]
        missing = [t for t in tasks if t not in self.table.columns]
        if missing:
            raise SourceError(f"csv: {str(self.path)!r} has no column for task(s) {missing} "
                              f"(columns: {list(self.table.columns)})")
        if len(self.table) == 0:
            raise SourceError(f"csv: {str(self.path)!r} has no rows")
        super().__init__(name or self.path.stem, domain or self.path.stem, tasks)
        self.root = Path(root) if root else self.path.parent
        rel = self.table["path"].fillna("")
        self._paths = np.array([str(self.root / p) for p in rel])
        for i, (p, r) in enumerate(zip(self._paths, rel)):
            if not r or not os.path.isfile(p):
                raise SourceError(f"csv: {str(self.path)!r} row {i + 2}: image file {p!r} does not exist")

    def __len__(self):
        return len(self.table)

    def paths(self):
        return self._paths

    def row_names(self):
        return [f"{i + 2} ({p})" for i, p in enumerate(self.table["path"])]  # 1-based, after the header

    def raw_labels(self, task):
        shape = (len(self),) + task.label_shape
        values = np.zeros(shape, dtype="float64")
        present = np.zeros(len(self), dtype=bool)
        col = self.table[task.name]
        for i, cell in enumerate(col):
            parsed = _parse_cell(cell, task, f"source {self.name}: row {i + 2} ({self.table['path'].iloc[i]})")
            if parsed is not None:
                values[i] = np.reshape(parsed, task.label_shape)
                present[i] = True
        return values, present


class FolderSource(Source):
    """Class folders: ``DIR/<class>/*.jpg`` labels one classification task.

    Folder names are matched to the task's class names (case-insensitive) or class ids.

    Args:
        path: the folder holding one sub-folder per class.
        task: the task the folders label (default ``expression``).
        domain: the domain name (default: the folder's name).
        classes: the class names, when the task is not known to the model.

    Example:
        >>> # faces/happy/1.png, faces/sad/2.png ...
        >>> # FolderSource("faces", task="expression")
    """

    format = "folder"

    def __init__(self, path: str, task: str = "expression", domain: str | None = None, name: str | None = None,
                 classes: Sequence[str] | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"folder: {str(self.path)!r} is not a folder")
        super().__init__(name or self.path.name, domain or self.path.name, (task,))
        self.task_name = task
        self.class_names = tuple(classes) if classes else None
        entries = []
        for sub in sorted(p for p in self.path.iterdir() if p.is_dir()):
            for f in sorted(sub.iterdir()):
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file():
                    entries.append((str(f), sub.name))
        if not entries:
            raise SourceError(f"folder: {str(self.path)!r} has no class sub-folders with images "
                              f"({', '.join(IMAGE_EXTENSIONS)})")
        self._paths = np.array([e[0] for e in entries])
        self._folders = [e[1] for e in entries]

    def __len__(self):
        return len(self._paths)

    def paths(self):
        return self._paths

    def raw_labels(self, task):
        classes = [c.lower() for c in (self.class_names or task.classes)]
        ids = {}
        for folder in sorted(set(self._folders)):
            key = folder.lower()
            if key in classes:
                ids[folder] = classes.index(key)
            elif key.isdigit():
                ids[folder] = int(key)  # range-checked with the other labels
            else:
                raise LabelError(f"folder: {str(self.path / folder)!r} is not a class of task '{task.name}' "
                                 f"(classes: {', '.join(classes)})")
        values = np.array([ids[f] for f in self._folders], dtype="float64")
        return values, np.ones(len(self), dtype=bool)


SOURCE_FORMATS = {cls.format: cls for cls in (SyntheticSource, CsvSource, FolderSource)}


def parse_spec(spec: str) -> tuple[str, str, dict]:
    """Split ``FORMAT:PATH?key=value&...`` into ``(format, path, options)``.

    Example:
        >>> parse_spec("synthetic:lab?n=100&split=test")
        ('synthetic', 'lab', {'n': '100', 'split': 'test'})
    """
    if not isinstance(spec, str) or ":" not in spec:
        raise ConfigError("sources", f"expected FORMAT:PATH (formats: {sorted(SOURCE_FORMATS)}), got {spec!r}")
    fmt, rest = spec.split(":", 1)
    path, _, query = rest.partition("?")
    options = dict(urllib.parse.parse_qsl(query, keep_blank_values=True))
    return fmt, path, options


def _coerce(key_path, value, default):
    """Query-string values arrive as text: integers where the option's default is one."""
    if isinstance(value, str) and isinstance(default, int) and not isinstance(default, bool):
        try:
            return int(value)
        except ValueError:
            raise ConfigError(key_path, f"expected an integer, got {value!r}") from None
    return value


def make_source(spec: str | Mapping, key_path: str = "sources", **options) -> Source:
    """Build a source from ``FORMAT:PATH`` (or ``{"spec": ..., **options}``).

    Options not accepted by the format raise a :class:`ConfigError` naming the key.

    Example:
        >>> make_source("synthetic:webcam", n=4).domain
        'webcam'
    """
    if isinstance(spec, Mapping):
        options = {**{k: v for k, v in spec.items() if k != "spec"}, **options}
        if "spec" not in spec:
            raise ConfigError(f"{key_path}.spec", "missing: each source needs spec: FORMAT:PATH")
        spec = spec["spec"]
    fmt, path, query = parse_spec(spec)
    if fmt not in SOURCE_FORMATS:
        raise ConfigError(key_path, f"unknown source format {fmt!r} in {spec!r}; formats are {sorted(SOURCE_FORMATS)}")
    cls = SOURCE_FORMATS[fmt]
    params = inspect.signature(cls.__init__).parameters
    allowed = list(params)[2:]  # after self and the PATH argument
    merged = {**query, **options}
    for key in merged:
        if key not in allowed:
            raise ConfigError(f"{key_path}.{key}", f"not an option of {fmt} sources; options are {allowed}")
    kwargs = {k: _coerce(f"{key_path}.{k}", v, params[k].default) for k, v in merged.items()}
    if isinstance(kwargs.get("tasks"), str):
        kwargs["tasks"] = [t for t in kwargs["tasks"].split(",") if t]
    return cls(path, **kwargs)
