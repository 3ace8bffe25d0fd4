"""AffectNet: expression, valence and arousal from its annotation CSV.

Example:
    >>> from kfacemtl.data.registry import SOURCE_FORMATS
    >>> SOURCE_FORMATS["affectnet"].__name__
    'AffectNetSource'
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kfacemtl.data.datasets.common import contempt_option, first_existing, missing_files
from kfacemtl.data.formats import read_table
from kfacemtl.data.registry import register_source
from kfacemtl.data.source import FileTableSource
from kfacemtl.errors import LabelError, SourceError
from kfacemtl.tasks import EXPRESSION_CLASSES_WITH_CONTEMPT


@register_source
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
        >>> import os
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import get_task
        >>> os.makedirs("Manually_Annotated_Images/1", exist_ok=True)
        >>> for name in ("a.jpg", "b.jpg"):
        ...     open(f"Manually_Annotated_Images/1/{name}", "wb").close()
        >>> _ = open("validation.csv", "w").write("subDirectory_filePath,expression,valence,arousal\\n"
        ...                                       "1/a.jpg,1,0.7,0.4\\n1/b.jpg,7,-0.2,0.1\\n")   # 7: contempt
        >>> src = make_source("affectnet:validation.csv?contempt=drop")
        >>> src.raw_labels(get_task("expression"))[1].tolist()  # b: no expression, still VA
        [True, False]
    """

    format = "affectnet"
    LABELS = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "angry", "contempt")  # AffectNet ids 0..7

    def __init__(self, path: str, root: str | None = None, contempt: str = "keep", domain: str = "affectnet",
                 name: str | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise SourceError(f"affectnet: annotation file {str(self.path)!r} does not exist")
        contempt = contempt_option(contempt)
        table = read_table(self.path, "affectnet")
        path_col = next((c for c in ("subDirectory_filePath", "path") if c in table.columns), None)
        missing = {"expression", "valence", "arousal"} - set(table.columns)
        if path_col is None or missing:
            raise SourceError(f"affectnet: {str(self.path)!r} lacks column(s) "
                              f"{sorted(missing | ({'subDirectory_filePath'} if path_col is None else set()))}")
        root = Path(root) if root else (first_existing(self.path.parent / "Manually_Annotated_Images")
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
        missing_files(paths, f"affectnet: {str(self.path)!r} (images under {str(root)!r})")
        self._csv_rows = [str(i + 2) for i in rows]
        super().__init__(name or self.path.stem, domain, paths,
                         {"expression": mapping[expr[rows].astype(int)], "valence_arousal": va[rows]},
                         {"expression": expr_present[rows], "valence_arousal": va_present[rows]})

    def row_names(self):
        return [f"{r} of {self.path} ({p})" for r, p in zip(self._csv_rows, self._paths)]
