"""Data sources: images plus a label table, the tasks they label, and their domain.

Every source is one small class behind the :class:`Source` interface, so a new dataset
format is one new class registered in ``SOURCE_FORMATS``. Sources are named in configs
and on the command line as ``FORMAT:PATH``, with options as ``?key=value&key=value``:

- ``synthetic:DOMAIN`` — the built-in synthetic benchmark (options ``split``, ``n``, ``seed``).
- ``csv:FILE`` — a manifest with a ``path`` column and one column per task; an empty cell
  is a missing label; vector labels (action units, valence/arousal) are space-separated.
- ``folder:DIR`` — one sub-folder per class of one task (option ``task``).
- ``images:DIR`` — unlabelled images (recursively), pseudo-labelled by distillation (option ``limit``).
- ``utkface:DIR`` — UTKFace's file-name labels (options ``split``, ``test_fraction``, ``seed``, ``strict``).
- ``fer2013:FILE_OR_DIR`` — ``fer2013.csv`` or the ``train/``, ``test/`` class folders (option ``usage``).
- ``ckplus:DIR`` — CK+48 expression folders, subject-wise splits (options ``split``, ``contempt``).
- ``rafdb:DIR`` — RAF-DB basic's ``list_patition_label.txt`` and aligned images (``split``, ``images``).
- ``affectnet:FILE`` — AffectNet's CSV: expression, valence, arousal (``root``, ``contempt``).
- ``celeba:DIR`` — CelebA attributes: gender from ``Male``, more as tasks (``split``, ``attributes``).

Every format also takes ``sample=N``: a seeded random N of its rows (a slice for a quick run).

Example:
    >>> from kfacemtl.sources import make_source
    >>> src = make_source("synthetic:lab?n=16&split=train")
    >>> src.tasks, src.domain, len(src)
    (('expression', 'action_units'), 'lab', 16)
"""

from __future__ import annotations

import abc
import hashlib
import inspect
import os
import re
import urllib.parse
import warnings
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from kfacemtl import synthetic
from kfacemtl.errors import ConfigError, LabelError, SourceError, check_choice
from kfacemtl.tasks import EXPRESSION_CLASSES, EXPRESSION_CLASSES_WITH_CONTEMPT, Task

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
        domain: ``portraits``, ``lab``, ``webcam``, ``affect``, ``street`` or ``cctv``.
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


def _read_table(path: Path, fmt: str, **options) -> pd.DataFrame:
    """A CSV as text cells; an unreadable file is a SourceError naming the format and the file."""
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **options)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise SourceError(f"{fmt}: cannot read {str(path)!r}: {e}") from None


class CsvSource(Source):
    """A CSV manifest: a ``path`` column (relative to the CSV's folder or ``root``) plus task columns.

    An empty cell is a missing label. Classification cells hold a class id or class name;
    multilabel and multi-value regression cells hold space-separated numbers.

    Args:
        path: the CSV file.
        tasks: task columns to read (default: every column named after a known task).
        domain: the domain name (default: the CSV's file stem).
        root: folder that image paths are relative to (default: the CSV's folder); a path that leads outside it
            (``../``, an absolute path elsewhere, a symbolic link out) is an error naming its row.
        known_tasks: task names considered when ``tasks`` is None.
        duplicates: a file on several rows is an error naming the rows (``error``, default), or only its first
            row is kept (``first``; :attr:`dropped_duplicates` counts the others).

    Example:
        >>> # manifest.csv:  path,gender,age
        >>> #                img/0.png,1,23
        >>> # CsvSource("manifest.csv").tasks  ->  ('gender', 'age')
    """

    format = "csv"

    def __init__(self, path: str, tasks: Sequence[str] | None = None, domain: str | None = None,
                 root: str | None = None, name: str | None = None, known_tasks: Sequence[str] | None = None,
                 duplicates: str = "error"):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"csv: manifest file {str(self.path)!r} does not exist")
        self.table = _read_table(self.path, "csv", na_values=[""])
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
        if duplicates not in ("error", "first"):
            raise SourceError(f"csv: {str(self.path)!r}: duplicates must be 'error' or 'first', got {duplicates!r}")
        rel = self.table["path"].fillna("")
        self._paths = np.array([str(self.root / p) for p in rel])
        top, seen, self.dropped_duplicates = self.root.resolve(), {}, 0
        for i, (p, r) in enumerate(zip(self._paths, rel)):
            if not r or not os.path.isfile(p):
                raise SourceError(f"csv: {str(self.path)!r} row {i + 2}: image file {str(p)!r} does not exist")
            real = Path(p).resolve()
            if not real.is_relative_to(top):  # ../.., an absolute path, a symlink out: the manifest's data only
                raise SourceError(f"csv: {str(self.path)!r} row {i + 2}: image file {r!r} is outside the data root "
                                  f"{str(top)!r}; move it in, or give the source a root that holds it")
            seen.setdefault(real, []).append(i)
        repeated = {p: rows for p, rows in seen.items() if len(rows) > 1}
        if repeated and duplicates == "error":
            listed = "; ".join(f"rows {', '.join(str(i + 2) for i in rows)} ({str(p)!r})"
                               for p, rows in list(repeated.items())[:5])
            raise SourceError(f"csv: {str(self.path)!r}: {len(repeated)} image file(s) appear on several rows: "
                              f"{listed}; remove the repeats, or set the source option duplicates=first to keep "
                              "each file's first row")
        if repeated:
            keep = sorted(rows[0] for rows in seen.values())
            self.dropped_duplicates = len(self.table) - len(keep)
            self.table = self.table.iloc[keep].reset_index(drop=True)
            self._paths = self._paths[keep]

    def __len__(self):
        return len(self.table)

    def paths(self):
        return self._paths

    def row_names(self):
        return [f"{i + 2} ({p})" for i, p in enumerate(self.table["path"])]  # 1-based, after the header

    def describe(self) -> dict:
        out = super().describe()
        if self.dropped_duplicates:
            out["dropped_duplicates"] = self.dropped_duplicates
        return out

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


class ImagesSource(Source):
    """Unlabelled images: every image file under ``DIR`` (recursively), for distillation's
    pseudo-labelling of domains without labels.

    Args:
        path: the folder.
        domain: the domain name (default: the folder's name).
        limit: use only the first ``limit`` files (sorted by path); 0 = all.

    Example:
        >>> # images:data/street_cams  →  ImagesSource("data/street_cams"); no task is labelled
    """

    format = "images"

    def __init__(self, path: str, domain: str | None = None, name: str | None = None, limit: int = 0):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"images: {str(self.path)!r} is not a folder")
        super().__init__(name or self.path.name, domain or self.path.name, ())
        files = sorted(str(f) for f in self.path.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
        if int(limit) < 0:
            raise SourceError(f"images: limit must be >= 0, got {limit!r}")
        files = files[:int(limit)] if int(limit) else files
        if not files:
            raise SourceError(f"images: {str(self.path)!r} holds no images ({', '.join(IMAGE_EXTENSIONS)})")
        self._paths = np.array(files)

    def __len__(self):
        return len(self._paths)

    def paths(self):
        return self._paths

    def raw_labels(self, task):
        raise LabelError(f"images: {str(self.path)!r} is unlabelled; it has no '{task.name}' labels")


class WithoutLabels(Source):
    """Another source's images with its labels hidden from training (``unlabelled_sources``).

    The hidden labels (:attr:`hidden`) are never trained on; distillation uses them only to
    score its pseudo-labels (e.g. a target domain's held-out labels).

    Example:
        >>> src = WithoutLabels(make_source("synthetic:lab?n=4"))
        >>> src.tasks, src.hidden.tasks[:1], len(src)
        ((), ('expression',), 4)
    """

    def __init__(self, source: Source):
        super().__init__(source.name, source.domain, ())
        self.hidden = source
        self.format = source.format

    def __len__(self):
        return len(self.hidden)

    def images(self):
        return self.hidden.images()

    def paths(self):
        return self.hidden.paths()

    def row_names(self):
        return self.hidden.row_names()

    def raw_labels(self, task):
        raise LabelError(f"source {self.name}: its labels are hidden (an unlabelled source)")


class RowSubset(Source):
    """Some rows of another source (the others left out, e.g. image files that cannot be decoded).

    Example:
        >>> sub = RowSubset(make_source("synthetic:lab?n=6"), [0, 2, 5])
        >>> len(sub), sub.name, sub.images().shape[0]
        (3, 'lab-train', 3)
    """

    def __init__(self, source: Source, rows: Sequence[int]):
        super().__init__(source.name, source.domain, source.tasks)
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)
        self.format = source.format

    def __len__(self):
        return len(self.rows)

    def images(self):
        images = self.source.images()
        return None if images is None else images[self.rows]

    def paths(self):
        paths = self.source.paths()
        return None if paths is None else paths[self.rows]

    def row_names(self):
        names = self.source.row_names()
        return [names[i] for i in self.rows]

    def raw_labels(self, task):
        values, present = self.source.raw_labels(task)
        return np.asarray(values)[self.rows], np.asarray(present)[self.rows]

    def describe(self) -> dict:
        return dict(self.source.describe(), rows=len(self.rows), left_out=len(self.source) - len(self.rows))

    @property
    def hidden(self):
        """The same rows of the wrapped source's hidden labels (:class:`WithoutLabels`), else None."""
        hidden = getattr(self.source, "hidden", None)
        return None if hidden is None else RowSubset(hidden, self.rows)


def _flag(value) -> bool:
    """A boolean option that may arrive as text from a query string."""
    return value.strip().lower() in ("1", "true", "yes", "on") if isinstance(value, str) else bool(value)


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


def split_rows(groups: Sequence, strata: Sequence, split: str, test_fraction: float = 0.2, seed: int = 0,
               where: str = "split") -> np.ndarray:
    """Indices of the rows on one side of a deterministic, stratified, group-wise split.

    Every group (a person, a subject, a file) lands wholly on one side; within each stratum
    (e.g. gender × race) the groups are ordered by a seeded hash of their name and the first
    ``test_fraction`` go to ``test``. Adding files never moves an existing group across.

    Args:
        groups: a group name per row.
        strata: a stratum per row (the stratum of a group is that of its first row).
        split: ``train``, ``test`` or ``all``.

    Example:
        >>> rows = split_rows(["a", "b", "c", "d", "e"], [0, 0, 0, 0, 0], "test", 0.4)
        >>> len(rows)
        2
    """
    if split not in ("train", "test", "all"):
        raise ConfigError(f"{where}", f"expected train, test or all, got {split!r}")
    if not 0 < float(test_fraction) < 1:
        raise ConfigError("test_fraction", f"expected a number in (0, 1), got {test_fraction!r}")
    groups = [str(g) for g in groups]
    if split == "all":
        return np.arange(len(groups))
    first = {}
    for g, s in zip(groups, strata):
        first.setdefault(g, s)
    by_stratum = {}
    for g, s in first.items():
        by_stratum.setdefault(s, []).append(g)
    test = set()
    for members in by_stratum.values():
        members.sort(key=lambda g: hashlib.sha256(f"{seed}/{g}".encode()).hexdigest())
        test.update(members[:int(round(float(test_fraction) * len(members)))])
    keep = [(g in test) == (split == "test") for g in groups]
    return np.flatnonzero(keep)


class UTKFaceSource(FileTableSource):
    """UTKFace: labels in the file name ``<age>_<gender>_<race>_<datetime>.jpg[.chip.jpg]``.

    Age in years, gender 0 male / 1 female, race 0..4 (white, black, asian, indian, others).
    Malformed names (a missing field, a value out of range) are skipped with a warning giving
    their count and the first few in lenient mode (default), and are an error in strict mode.
    Each face is its own identity (UTKFace has no person ids): the split is by face, stratified
    by gender × race.

    Args:
        path: the folder of images (``UTKFace/``).
        split: ``train``, ``test`` or ``all``; ``test_fraction`` and ``seed`` define it.
        strict: malformed file names are an error.

    Example:
        >>> # make_source("utkface:data/utkface/UTKFace?split=train")
    """

    format = "utkface"
    _NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.jpg(\.chip\.jpg)?$", re.IGNORECASE)

    def __init__(self, path: str, split: str = "all", test_fraction: float = 0.2, seed: int = 0,
                 strict: bool = False, domain: str = "utkface", name: str | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"utkface: {str(self.path)!r} is not a folder")
        strict = _flag(strict)
        rows, bad = [], []
        for f in sorted(self.path.iterdir()):
            if not f.is_file() or f.suffix.lower() not in IMAGE_EXTENSIONS:
                continue
            m = self._NAME.match(f.name)
            if not m or not (0 <= int(m.group(1)) <= 120 and int(m.group(2)) in (0, 1) and int(m.group(3)) <= 4):
                bad.append(f.name)
                continue
            rows.append((str(f), int(m.group(1)), int(m.group(2)), int(m.group(3))))
        if bad:
            msg = (f"utkface: {len(bad)} file name(s) in {str(self.path)!r} do not follow "
                   f"<age 0-120>_<gender 0|1>_<race 0-4>_<datetime>.jpg[.chip.jpg], e.g. {bad[:3]}")
            if strict:
                raise SourceError(msg)
            warnings.warn(msg + "; skipped", stacklevel=2)
        if not rows:
            raise SourceError(f"utkface: {str(self.path)!r} has no images named like UTKFace's")
        keep = split_rows([r[0] for r in rows], [(r[2], r[3]) for r in rows], split, test_fraction, seed,
                          where="utkface.split")
        rows = [rows[i] for i in keep]
        super().__init__(name or f"utkface-{split}", domain, [r[0] for r in rows],
                         {"age": np.array([r[1] for r in rows], "float64")[:, None],
                          "gender": np.array([r[2] for r in rows], "float64"),
                          "race": np.array([r[3] for r in rows], "float64")})
        self.skipped = bad


class FER2013Source(Source):
    """FER2013: the original ``fer2013.csv`` (``emotion,pixels,Usage``) or the image-folder layout.

    - ``PATH`` a CSV file: 48×48 grayscale pixel strings, kept in memory; ``usage`` selects
      ``Training``, ``PublicTest``, ``PrivateTest`` or ``all``.
    - ``PATH`` a folder with ``train/<class>/`` and ``test/<class>/``: ``usage`` ``Training``
      reads ``train/``, ``PublicTest`` reads ``test/`` (the Kaggle layout's test folder holds
      PublicTest), ``all`` both.

    Expression in FER2013 order: 0..6 angry, disgust, fear, happy, sad, surprise, neutral.

    Example:
        >>> # make_source("fer2013:data/fer2013?usage=Training")
        >>> # make_source("fer2013:fer2013.csv?usage=PublicTest")
    """

    format = "fer2013"
    USAGES = ("Training", "PublicTest", "PrivateTest", "all")

    def __init__(self, path: str, usage: str = "Training", domain: str = "fer2013", name: str | None = None):
        self.path = Path(path)
        check_choice("fer2013.usage", usage, self.USAGES)
        self._images, self._paths = None, None
        if self.path.is_file():
            self._read_csv(usage)
        elif self.path.is_dir():
            folders = {"Training": ["train"], "PublicTest": ["test"], "all": ["train", "test"]}.get(usage)
            if folders is None:
                raise ConfigError("fer2013.usage", f"the image-folder layout has no {usage} split "
                                                   f"(train/ is Training, test/ is PublicTest)")
            paths, labels = [], []
            for folder in folders:
                root = self.path / folder
                if not root.is_dir():
                    raise SourceError(f"fer2013: {str(root)!r} is missing (expected train/<class>/ and test/<class>/)")
                for sub in sorted(p for p in root.iterdir() if p.is_dir()):
                    if sub.name.lower() not in EXPRESSION_CLASSES:
                        raise LabelError(f"fer2013: {str(sub)!r} is not an expression class "
                                         f"(classes: {', '.join(EXPRESSION_CLASSES)})")
                    for f in sorted(sub.iterdir()):
                        if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                            paths.append(str(f))
                            labels.append(EXPRESSION_CLASSES.index(sub.name.lower()))
            if not paths:
                raise SourceError(f"fer2013: no images under {str(self.path)!r} for usage {usage}")
            self._paths, self._expr = np.array(paths), np.array(labels, "float64")
        else:
            raise SourceError(f"fer2013: {str(self.path)!r} is neither fer2013.csv nor a folder")
        super().__init__(name or f"fer2013-{usage}", domain, ("expression",))

    def _read_csv(self, usage):
        table = _read_table(self.path, "fer2013")
        missing = {"emotion", "pixels"} - set(table.columns)
        if missing:
            raise SourceError(f"fer2013: {str(self.path)!r} lacks column(s) {sorted(missing)} "
                              f"(expected emotion,pixels,Usage)")
        if usage != "all":
            if "Usage" not in table.columns:
                raise SourceError(f"fer2013: {str(self.path)!r} has no Usage column; use usage=all")
            table = table[table["Usage"] == usage]
        if len(table) == 0:
            raise SourceError(f"fer2013: {str(self.path)!r} has no rows with Usage {usage}")
        images = np.zeros((len(table), 48, 48, 1), np.uint8)
        for i, (row, cell) in enumerate(zip(table.index, table["pixels"])):
            try:
                px = np.array(cell.split(), dtype=np.int64)
            except ValueError:
                raise SourceError(f"fer2013: {str(self.path)!r} row {row + 2}: pixels are not integers") from None
            if px.size != 48 * 48 or px.min() < 0 or px.max() > 255:
                raise SourceError(f"fer2013: {str(self.path)!r} row {row + 2}: expected 2304 values in 0..255, "
                                  f"got {px.size} in {px.min()}..{px.max()}")
            images[i, ..., 0] = px.reshape(48, 48)
        self._images = images
        self._csv_rows = [str(r + 2) for r in table.index]
        try:
            self._expr = table["emotion"].astype("float64").to_numpy()
        except ValueError:
            self._expr = np.array([float(v) if v.strip().lstrip("-").isdigit() else np.nan
                                   for v in table["emotion"]])

    def __len__(self):
        return len(self._expr)

    def images(self):
        return self._images

    def paths(self):
        return self._paths

    def row_names(self):
        if self._images is not None:
            return [f"{r} of {self.path}" for r in self._csv_rows]
        return super().row_names()

    def raw_labels(self, task):
        return self._expr, np.ones(len(self), dtype=bool)


# Expression names used by datasets, mapped onto the expression task's classes (FER2013 order, contempt 7).
EXPRESSION_ALIASES = {
    "angry": "angry", "anger": "angry", "disgust": "disgust", "disgusted": "disgust", "fear": "fear",
    "fearful": "fear", "happy": "happy", "happiness": "happy", "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise", "neutral": "neutral", "contempt": "contempt",
}
CONTEMPT = EXPRESSION_CLASSES_WITH_CONTEMPT.index("contempt")


def _expression_id(name: str) -> int | None:
    """Class id (FER2013 order, contempt 7) of a dataset's expression name, or None."""
    canonical = EXPRESSION_ALIASES.get(name.strip().lower())
    return None if canonical is None else EXPRESSION_CLASSES_WITH_CONTEMPT.index(canonical)


def _contempt_option(value, where: str) -> str:
    if value not in ("keep", "drop"):
        raise ConfigError(where, f"expected keep (needs the expression task's contempt class) or drop, got {value!r}")
    return value


def _first_existing(*candidates: Path) -> Path | None:
    return next((c for c in candidates if c.exists()), None)


def _missing_files(paths: Sequence[str], where: str, what: str = "image file"):
    """Raise a SourceError naming the first few listed files that do not exist."""
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise SourceError(f"{where}: {len(missing)} {what}(s) listed do not exist, e.g. {missing[:3]}")


class CKPlusSource(FileTableSource):
    """CK+ in the CK+48 layout: ``DIR/<expression>/S005_001_00000011.png``.

    Folders anger, contempt, disgust, fear, happy (or happiness), sadness, surprise (and
    neutral when present) map onto the expression task's classes. The subject id (``S005``)
    is read from the file name, so the split is subject-wise: a person's images all land on
    one side, stratified by expression.

    Args:
        path: the folder holding one sub-folder per expression.
        split: ``train``, ``test`` or ``all`` (default), with ``test_fraction`` and ``seed``.
        contempt: ``keep`` (default: the model's expression task needs the contempt class,
            ``get_task("expression", contempt=True)``) or ``drop`` (contempt images are left out).

    Example:
        >>> # make_source("ckplus:data/CK+48?split=test&contempt=drop")
    """

    format = "ckplus"
    _SUBJECT = re.compile(r"^(S\d+)_", re.IGNORECASE)

    def __init__(self, path: str, split: str = "all", test_fraction: float = 0.2, seed: int = 0,
                 contempt: str = "keep", domain: str = "ckplus", name: str | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"ckplus: {str(self.path)!r} is not a folder")
        contempt = _contempt_option(contempt, "ckplus.contempt")
        rows = []
        for sub in sorted(p for p in self.path.iterdir() if p.is_dir()):
            label = _expression_id(sub.name)
            if label is None:
                raise LabelError(f"ckplus: {str(sub)!r} is not an expression folder "
                                 f"(expected one of {', '.join(sorted(EXPRESSION_ALIASES))})")
            if label == CONTEMPT and contempt == "drop":
                continue
            for f in sorted(sub.iterdir()):
                if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS:
                    m = self._SUBJECT.match(f.name)
                    rows.append((str(f), label, m.group(1).upper() if m else f.stem))
        if not rows:
            raise SourceError(f"ckplus: no images in expression folders under {str(self.path)!r}")
        self.unnamed = sum(1 for r in rows if not self._SUBJECT.match(Path(r[0]).name))
        if self.unnamed:
            warnings.warn(f"ckplus: {self.unnamed} file(s) under {str(self.path)!r} have no subject id "
                          "(S<number>_...); each is split as its own subject", stacklevel=2)
        keep = split_rows([r[2] for r in rows], [r[1] for r in rows], split, test_fraction, seed, where="ckplus.split")
        rows = [rows[i] for i in keep]
        super().__init__(name or f"ckplus-{split}", domain, [r[0] for r in rows],
                         {"expression": np.array([r[1] for r in rows], "float64")})
        self.subjects = np.array([r[2] for r in rows])


class RAFDBSource(FileTableSource):
    """RAF-DB (basic): ``EmoLabel/list_patition_label.txt`` (``train_00001.jpg 5``) and its images.

    RAF-DB's labels 1..7 (surprise, fear, disgust, happiness, sadness, anger, neutral) are
    mapped onto the expression task's FER2013 order. The split is RAF-DB's own, from the file
    names (``train_``, ``test_``); RAF-DB publishes no identities.

    Args:
        path: the RAF-DB basic folder (holding ``EmoLabel/`` and ``Image/``) or the label file.
        split: ``train``, ``test`` or ``all``.
        images: ``aligned`` (default: ``Image/aligned/<name>_aligned.jpg``) or ``original``
            (``Image/original/<name>``).

    Example:
        >>> # make_source("rafdb:data/RAF-DB/basic?split=test")
    """

    format = "rafdb"
    LABELS = ("surprise", "fear", "disgust", "happy", "sad", "angry", "neutral")  # RAF-DB ids 1..7
    LABEL_FILE = "list_patition_label.txt"  # sic: RAF-DB's spelling

    def __init__(self, path: str, split: str = "all", images: str = "aligned", domain: str = "rafdb",
                 name: str | None = None):
        path = Path(path)
        label_file = path if path.is_file() else _first_existing(path / "EmoLabel" / self.LABEL_FILE,
                                                                 path / self.LABEL_FILE)
        if label_file is None:
            raise SourceError(f"rafdb: no {self.LABEL_FILE} in {str(path)!r} or {str(path / 'EmoLabel')!r}")
        if split not in ("train", "test", "all"):
            raise ConfigError("rafdb.split", f"expected train, test or all, got {split!r}")
        if images not in ("aligned", "original"):
            raise ConfigError("rafdb.images", f"expected aligned or original, got {images!r}")
        root = label_file.parent.parent if label_file.parent.name == "EmoLabel" else label_file.parent
        image_dir = _first_existing(root / "Image" / images, root / images)
        if image_dir is None:
            raise SourceError(f"rafdb: no {images} image folder ({str(root / 'Image' / images)!r})")
        paths, labels = [], []
        for n, line in enumerate(label_file.read_text().splitlines(), 1):
            if not line.strip():
                continue
            parts = line.split()
            where = f"rafdb: {str(label_file)!r} line {n}"
            if len(parts) != 2 or not parts[1].isdigit():
                raise SourceError(f"{where}: expected '<file name> <label 1-7>', got {line.strip()!r}")
            if not 1 <= int(parts[1]) <= 7:
                raise LabelError(f"{where}: label {parts[1]} is not a RAF-DB expression id 1-7")
            if split != "all" and not parts[0].startswith(split + "_"):
                continue
            stem, ext = os.path.splitext(parts[0])
            paths.append(str(image_dir / (f"{stem}_aligned{ext}" if images == "aligned" else parts[0])))
            labels.append(EXPRESSION_CLASSES.index(self.LABELS[int(parts[1]) - 1]))
        if not paths:
            raise SourceError(f"rafdb: {str(label_file)!r} lists no {split} images")
        _missing_files(paths, f"rafdb: {str(image_dir)!r}")
        super().__init__(name or f"rafdb-{split}", domain, paths, {"expression": np.array(labels, "float64")})


class AffectNetSource(FileTableSource):
    """AffectNet's annotation CSV (``training.csv``, ``validation.csv``): expression, valence, arousal.

    Columns ``subDirectory_filePath`` (or ``path``), ``expression`` (AffectNet's ids: 0 neutral,
    1 happy, 2 sad, 3 surprise, 4 fear, 5 disgust, 6 anger, 7 contempt; 8 none, 9 uncertain
    and 10 no-face), ``valence`` and ``arousal`` in [-1, 1] (-2: not annotated). Expression ids
    8 and 9 and valence/arousal -2 are missing labels; no-face rows are left out. Images are
    read whole: use the cropped face images (or crop them with the ``face_*`` columns first).

    Args:
        path: the CSV file.
        root: the folder image paths are relative to (default: ``Manually_Annotated_Images``
            beside the CSV when it exists, else the CSV's folder).
        contempt: ``keep`` (the expression task needs the contempt class) or ``drop``
            (contempt becomes a missing expression label; the row still trains valence/arousal).

    Example:
        >>> # make_source("affectnet:data/affectnet/validation.csv?contempt=drop")
    """

    format = "affectnet"
    LABELS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt")  # AffectNet ids 0..7

    def __init__(self, path: str, root: str | None = None, contempt: str = "keep", domain: str = "affectnet",
                 name: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"affectnet: annotation file {str(self.path)!r} does not exist")
        contempt = _contempt_option(contempt, "affectnet.contempt")
        table = _read_table(self.path, "affectnet")
        path_col = next((c for c in ("subDirectory_filePath", "path") if c in table.columns), None)
        missing = {"expression", "valence", "arousal"} - set(table.columns)
        if path_col is None or missing:
            raise SourceError(f"affectnet: {str(self.path)!r} lacks column(s) "
                              f"{sorted(missing | ({'subDirectory_filePath'} if path_col is None else set()))}")
        root = Path(root) if root else (_first_existing(self.path.parent / "Manually_Annotated_Images")
                                        or self.path.parent)
        numbers = {}
        for col in ("expression", "valence", "arousal"):
            values = pd.to_numeric(table[col], errors="coerce").to_numpy("float64")
            bad = np.flatnonzero(np.isnan(values))
            if bad.size:
                raise LabelError(f"affectnet: {str(self.path)!r} row {bad[0] + 2}: {col} "
                                 f"{table[col].iloc[bad[0]]!r} is not a number")
            numbers[col] = values
        expr = numbers["expression"]
        bad = np.flatnonzero((expr != np.round(expr)) | (expr < 0) | (expr > 10))
        if bad.size:
            raise LabelError(f"affectnet: {str(self.path)!r} row {bad[0] + 2}: expression {expr[bad[0]]!r} "
                             "is not an AffectNet id 0-10")
        keep = expr != 10  # no face
        expr_present = expr <= (7 if contempt == "keep" else 6)
        va = np.stack([numbers["valence"], numbers["arousal"]], axis=1)
        va_present = (va != -2).all(axis=1)
        mapping = np.array([EXPRESSION_CLASSES_WITH_CONTEMPT.index(c) for c in self.LABELS] + [0, 0, 0], "float64")
        keep &= expr_present | va_present
        rows = np.flatnonzero(keep)
        if not rows.size:
            raise SourceError(f"affectnet: {str(self.path)!r} has no labelled face rows")
        paths = [str(root / table[path_col].iloc[i]) for i in rows]
        _missing_files(paths, f"affectnet: {str(self.path)!r} (images under {str(root)!r})")
        self._csv_rows = [str(i + 2) for i in rows]
        super().__init__(name or self.path.stem, domain, paths,
                         {"expression": mapping[expr[rows].astype(int)], "valence_arousal": va[rows]},
                         {"expression": expr_present[rows], "valence_arousal": va_present[rows]})

    def row_names(self):
        return [f"{r} of {self.path} ({p})" for r, p in zip(self._csv_rows, self._paths)]


def celeba_attribute_task(attribute: str) -> Task:
    """The binary task a CelebA attribute becomes: lower-case name, classes ``no``, ``yes``.

    Example:
        >>> celeba_attribute_task("Eyeglasses").classes
        ('no', 'yes')

    In a config: ``tasks: {eyeglasses: {kind: classification, classes: [no, yes]}}``.
    """
    return Task(attribute.lower(), "classification", classes=("no", "yes"))


class CelebASource(FileTableSource):
    """CelebA: ``list_attr_celeba.txt`` and ``img_align_celeba/``; gender from the ``Male`` attribute.

    Gender is 0 male / 1 female (``Male`` = 1 / -1). Other attributes become binary tasks
    (``attributes=Smiling,Eyeglasses`` → tasks ``smiling``, ``eyeglasses``; see
    :func:`celeba_attribute_task`). The split is CelebA's own ``list_eval_partition.txt``
    (identity-disjoint) when present, else a group-wise split by ``identity_CelebA.txt``
    (or by file when that is absent too), stratified by gender.

    Args:
        path: the CelebA folder (files may sit in it or in ``Anno/``, ``Eval/``, ``Img/``).
        split: ``train``, ``valid``, ``test`` or ``all``.
        attributes: comma-separated attribute names to expose as tasks besides gender.

    Example:
        >>> # make_source("celeba:data/celeba?split=valid&attributes=Smiling")
    """

    format = "celeba"
    PARTITIONS = {"train": 0, "valid": 1, "test": 2}

    def __init__(self, path: str, split: str = "all", attributes: str | Sequence[str] = (),
                 test_fraction: float = 0.1, seed: int = 0, domain: str = "celeba", name: str | None = None):
        root = Path(path)
        if not root.is_dir():
            raise SourceError(f"celeba: {str(root)!r} is not a folder")
        if split not in (*self.PARTITIONS, "all"):
            raise ConfigError("celeba.split", f"expected train, valid, test or all, got {split!r}")
        attr_file = _first_existing(root / "list_attr_celeba.txt", root / "Anno" / "list_attr_celeba.txt")
        image_dir = _first_existing(root / "img_align_celeba", root / "Img" / "img_align_celeba")
        if attr_file is None or image_dir is None:
            raise SourceError(f"celeba: {str(root)!r} needs list_attr_celeba.txt and img_align_celeba/ "
                              "(in it or in Anno/ and Img/)")
        if isinstance(attributes, str):
            attributes = [a for a in attributes.split(",") if a]
        names, files, values = self._read_attributes(attr_file)
        unknown = [a for a in attributes if a not in names]
        if unknown or "Male" not in names:
            raise ConfigError("celeba.attributes", f"{unknown or ['Male']} not in {str(attr_file)!r} "
                                                   f"(attributes: {', '.join(names)})")
        gender = (values[:, names.index("Male")] == -1).astype("float64")  # Male 1 → 0 male, -1 → 1 female
        rows = np.arange(len(files))
        partition_file = _first_existing(root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt")
        if split != "all" and partition_file is not None:
            part = dict(line.split()[:2] for line in partition_file.read_text().splitlines() if line.strip())
            rows = np.array([i for i, f in enumerate(files) if part.get(f) == str(self.PARTITIONS[split])], int)
        elif split != "all":
            if split == "valid":
                raise ConfigError("celeba.split", f"no list_eval_partition.txt in {str(root)!r}: "
                                                  "only train / test (split by identity) are available")
            id_file = _first_existing(root / "identity_CelebA.txt", root / "Anno" / "identity_CelebA.txt")
            ids = dict(line.split()[:2] for line in id_file.read_text().splitlines() if line.strip()) if id_file else {}
            rows = split_rows([ids.get(f, f) for f in files], gender, split, test_fraction, seed, where="celeba.split")
        if not len(rows):
            raise SourceError(f"celeba: no images in the {split} split of {str(root)!r}")
        paths = [str(image_dir / files[i]) for i in rows]
        _missing_files(paths, f"celeba: {str(image_dir)!r}")
        labels = {"gender": gender[rows]}
        for a in attributes:
            labels[a.lower()] = (values[rows, names.index(a)] == 1).astype("float64")
        super().__init__(name or f"celeba-{split}", domain, paths, labels)

    @staticmethod
    def _read_attributes(attr_file: Path):
        lines = [line for line in attr_file.read_text().splitlines() if line.strip()]
        if len(lines) < 3:
            raise SourceError(f"celeba: {str(attr_file)!r} is too short (count, attribute names, then rows)")
        names = lines[1].split()
        files, values = [], []
        for n, line in enumerate(lines[2:], 3):
            parts = line.split()
            if len(parts) != len(names) + 1 or any(v not in ("1", "-1") for v in parts[1:]):
                raise LabelError(f"celeba: {str(attr_file)!r} line {n}: expected a file name and "
                                 f"{len(names)} values of 1 or -1, got {line.strip()[:80]!r}")
            files.append(parts[0])
            values.append([int(v) for v in parts[1:]])
        if lines[0].strip().isdigit() and int(lines[0]) != len(files):
            warnings.warn(f"celeba: {str(attr_file)!r} announces {lines[0].strip()} rows but has {len(files)}",
                          stacklevel=3)
        return names, files, np.array(values, "int8")


SOURCE_FORMATS = {cls.format: cls for cls in (SyntheticSource, CsvSource, FolderSource, ImagesSource, UTKFaceSource,
                                              FER2013Source, CKPlusSource, RAFDBSource, AffectNetSource, CelebASource)}


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

    Options not accepted by the format raise a :class:`ConfigError` naming the key. Every
    format also takes ``sample=N``: a random N of its rows (the same N for the same source,
    seeded; in their original order), e.g. a slice of a large dataset for a quick run.

    Example:
        >>> make_source("synthetic:webcam", n=4).domain
        'webcam'
        >>> len(make_source("synthetic:lab?n=10&sample=3"))
        3
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
    sample = merged.pop("sample", None)
    for key in merged:
        if key not in allowed:
            raise ConfigError(f"{key_path}.{key}", f"not an option of {fmt} sources; options are {allowed}")
    kwargs = {k: _coerce(f"{key_path}.{k}", v, params[k].default) for k, v in merged.items()}
    if isinstance(kwargs.get("tasks"), str):
        kwargs["tasks"] = [t for t in kwargs["tasks"].split(",") if t]
    source = cls(path, **kwargs)
    return source if sample is None else sample_rows(source, _coerce(f"{key_path}.sample", sample, 0), key_path)


def sample_rows(source: Source, n: int, key_path: str = "sources") -> Source:
    """``n`` rows of ``source`` drawn at random with a fixed seed, kept in their order (all rows if it has fewer).

    Example:
        >>> sub = sample_rows(make_source("synthetic:lab?n=8"), 3)
        >>> len(sub), sub.name, list(sub.rows) == sorted(sub.rows)
        (3, 'lab-train', True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{key_path}.sample", f"expected a positive number of rows, got {n!r}")
    if n >= len(source):
        return source
    rows = np.sort(np.random.default_rng(0).choice(len(source), size=n, replace=False))
    return RowSubset(source, rows)
