"""CK+: the CK+48 layout (expression folders) or a manifest with FACS action units; subject-wise splits.

Example:
    >>> from kfacemtl.data.registry import SOURCE_FORMATS
    >>> SOURCE_FORMATS["ckplus"].__name__
    'CKPlusSource'
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from kfacemtl.data.datasets.common import EXPRESSION_ALIASES, contempt_option, expression_id, missing_files
from kfacemtl.data.formats import read_table
from kfacemtl.data.registry import register_source
from kfacemtl.data.source import CONTEMPT, IMAGE_EXTENSIONS, FileTableSource
from kfacemtl.data.splits import split_rows
from kfacemtl.errors import LabelError, SourceError, expect_one_of
from kfacemtl.tasks import ACTION_UNITS

FRAMES = ("all", "peak", "first")


@register_source
class CKPlusSource(FileTableSource):
    """CK+ in one of two layouts.

    - **CK+48**: ``DIR/<expression>/S005_001_00000011.png``. Folders anger, contempt, disgust, fear, happy (or
      happiness), sadness, surprise (and neutral when present) map onto the expression task's classes; the subject
      id (``S005``) is read from the file name.
    - **With action units**: ``DIR/labels.csv`` (or ``PATH`` the CSV itself) with columns ``path,subject,frame,
      expression`` and one 0/1 column per FACS action unit (``AU1`` ... ``AU26``; extra AUs are ignored). Rows are
      the peak frames (``frame=peak``, expression in FER2013 order, contempt 7, and the AUs coded at the peak) and
      each sequence's first, neutral frame (``frame=first``); the source labels ``expression`` and
      ``action_units``.

    The split is subject-wise: a person's images all land on one side (stratified by expression in the CK+48 layout).

    Args:
        path: the folder holding one sub-folder per expression, or the folder of ``labels.csv`` (or the CSV).
        split: ``train``, ``test`` or ``all`` (default), with ``test_fraction`` and ``seed``.
        contempt: ``keep`` (default: the model's expression task needs the contempt class,
            ``get_task("expression", contempt=True)``) or ``drop`` (contempt images are left out).
        frames: with action units: ``all`` (default), ``peak`` or ``first`` (the neutral first frames, every AU
            absent: CK+ sequences start neutral, an assumption rather than a coding).

    Example:
        >>> import os
        >>> from kfacemtl.data import make_source
        >>> for folder, name in (("happy", "S005_001_00000011.png"), ("contempt", "S010_002_00000014.png")):
        ...     os.makedirs(f"CK+48/{folder}", exist_ok=True); open(f"CK+48/{folder}/{name}", "wb").close()
        >>> src = make_source("ckplus:CK+48?contempt=drop")   # split=train / test: by subject (S005)
        >>> len(src), src.subjects.tolist()
        (1, ['S005'])
    """

    format = "ckplus"
    _SUBJECT = re.compile(r"^(S\d+)_", re.IGNORECASE)

    def __init__(self, path: str, split: str = "all", test_fraction: float = 0.2, seed: int = 0,
                 contempt: str = "keep", frames: str = "all", domain: str = "ckplus", name: str | None = None):
        self.path = Path(path)
        contempt = contempt_option(contempt)
        expect_one_of("frames", frames, FRAMES)
        manifest = self.path if self.path.is_file() else self.path / "labels.csv"
        if manifest.is_file():
            paths, labels, subjects = self._read_manifest(manifest, contempt, frames)
            keep = split_rows(subjects, [0] * len(subjects), split, test_fraction, seed)
            super().__init__(name or f"ckplus-{split}", domain, paths[keep],
                             {task: values[keep] for task, values in labels.items()})
            self.subjects = subjects[keep]
            return
        if not self.path.is_dir():
            raise SourceError(f"ckplus: {str(self.path)!r} is not a folder")
        if frames != "all":
            raise ValueError(f"frames: the CK+48 layout has no frame column (only a labels.csv with action units "
                             f"has); got {frames!r}")
        rows = []
        for sub in sorted(p for p in self.path.iterdir() if p.is_dir()):
            label = expression_id(sub.name)
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
        keep = split_rows([r[2] for r in rows], [r[1] for r in rows], split, test_fraction, seed)
        rows = [rows[i] for i in keep]
        super().__init__(name or f"ckplus-{split}", domain, [r[0] for r in rows],
                         {"expression": np.array([r[1] for r in rows], "float64")})
        self.subjects = np.array([r[2] for r in rows])

    @staticmethod
    def _read_manifest(manifest: Path, contempt: str, frames: str):
        """(paths, {"expression", "action_units"}, subjects) of the rows of ``labels.csv`` kept by the options."""
        table = read_table(manifest, "ckplus")
        need = ["path", "subject", "frame", "expression", *ACTION_UNITS]
        missing = [c for c in need if c not in table.columns]
        if missing:
            raise SourceError(f"ckplus: {str(manifest)!r} lacks column(s) {missing} (expected path, subject, frame, "
                              f"expression and one 0/1 column per action unit)")
        for i, row in table.iterrows():
            where = f"ckplus: {str(manifest)!r} row {i + 2}"
            if row["frame"] not in ("peak", "first"):
                raise LabelError(f"{where}: frame {row['frame']!r} is not peak or first")
            if row["expression"] not in [str(c) for c in range(CONTEMPT + 1)]:
                raise LabelError(f"{where}: expression {row['expression']!r} is not a class id 0..{CONTEMPT}")
            bad = [au for au in ACTION_UNITS if row[au] not in ("0", "1")]
            if bad:
                raise LabelError(f"{where}: {bad[0]} is {row[bad[0]]!r}, expected 0 or 1")
        if frames != "all":
            table = table[table["frame"] == frames]
        if contempt == "drop":
            table = table[table["expression"].astype(int) != CONTEMPT]
        if len(table) == 0:
            raise SourceError(f"ckplus: {str(manifest)!r} has no rows with frames={frames}")
        paths = np.array([str(manifest.parent / p) for p in table["path"]])
        missing_files(paths, f"ckplus: {str(manifest)!r}")
        labels = {"expression": table["expression"].astype("float64").to_numpy(),
                  "action_units": table[list(ACTION_UNITS)].astype("float64").to_numpy()}
        return paths, labels, table["subject"].str.upper().to_numpy()
