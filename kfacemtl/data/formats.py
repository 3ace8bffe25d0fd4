"""The generic formats: CSV manifests, class folders and unlabelled image folders.

- ``csv:FILE``: a ``path`` column and one column per task; an empty cell is a missing label; vector labels (action
  units, valence/arousal) are space-separated.
- ``folder:DIR``: one sub-folder per class of one task (option ``task``).
- ``images:DIR``: unlabelled images (recursively), pseudo-labelled by distillation (option ``limit``).

Example:
    >>> import pathlib, tempfile
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> for name in ("happy", "sad"):
    ...     (root / name).mkdir()
    ...     _ = (root / name / "1.png").write_bytes(b"")
    >>> FolderSource(str(root)).tasks, len(FolderSource(str(root)))
    (('expression',), 2)
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from kfacemtl.data.registry import register_source
from kfacemtl.data.source import IMAGE_EXTENSIONS, Source
from kfacemtl.errors import LabelError, SourceError
from kfacemtl.tasks import FACE_TASKS, Task


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


def read_table(path: Path, fmt: str, **options) -> pd.DataFrame:
    """A CSV as text cells; an unreadable file is a SourceError naming the format and the file.

    Example:
        >>> _ = open("t.csv", "w").write("path,age\\na.jpg,31\\n")
        >>> read_table(Path("t.csv"), "csv")["age"].tolist()
        ['31']
    """
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **options)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as e:
        raise SourceError(f"{fmt}: cannot read {str(path)!r}: {e}") from None


@register_source
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
        >>> import os
        >>> os.makedirs("img", exist_ok=True); open("img/0.png", "wb").close(); open("img/1.png", "wb").close()
        >>> _ = open("manifest.csv", "w").write("path,gender,age\\nimg/0.png,1,23\\nimg/1.png,,41\\n")
        >>> from kfacemtl.tasks import get_task
        >>> src = CsvSource("manifest.csv")
        >>> src.tasks, src.labels([get_task("gender")])[1]["gender"].tolist()   # row 2: no gender label
        (('gender', 'age'), [1.0, 0.0])
    """

    format = "csv"

    def __init__(self, path: str, tasks: Sequence[str] | None = None, domain: str | None = None,
                 root: str | None = None, name: str | None = None, known_tasks: Sequence[str] | None = None,
                 duplicates: str = "error"):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"csv: manifest file {str(self.path)!r} does not exist")
        self.table = read_table(self.path, "csv", na_values=[""])
        if "path" not in self.table.columns:
            raise SourceError(f"csv: {str(self.path)!r} has no 'path' column (columns: {list(self.table.columns)})")
        if tasks is None:
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


@register_source
class FolderSource(Source):
    """Class folders: ``DIR/<class>/*.jpg`` labels one classification task.

    Folder names are matched to the task's class names (case-insensitive) or class ids.

    Args:
        path: the folder holding one sub-folder per class.
        task: the task the folders label (default ``expression``).
        domain: the domain name (default: the folder's name).
        classes: the class names, when the task is not known to the model.

    Example:
        >>> import os
        >>> for name in ("happy", "sad"):
        ...     os.makedirs(f"faces/{name}", exist_ok=True); open(f"faces/{name}/1.png", "wb").close()
        >>> from kfacemtl.tasks import get_task
        >>> src = FolderSource("faces", task="expression")
        >>> src.raw_labels(get_task("expression"))[0].tolist()   # happy 3, sad 4 (FER2013 order)
        [3.0, 4.0]
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


@register_source
class ImagesSource(Source):
    """Unlabelled images: every image file under ``DIR`` (recursively), for distillation's
    pseudo-labelling of domains without labels.

    Args:
        path: the folder.
        domain: the domain name (default: the folder's name).
        limit: use only the first ``limit`` files (sorted by path); 0 = all.

    Example:
        >>> import os
        >>> os.makedirs("street_cams/cam1", exist_ok=True); open("street_cams/cam1/0.jpg", "wb").close()
        >>> src = ImagesSource("street_cams")                  # images:street_cams in a config
        >>> len(src), src.tasks
        (1, ())
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
