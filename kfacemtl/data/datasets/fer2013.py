"""FER2013: the original CSV or the image-folder layout.

Example:
    >>> from kfacemtl.data.registry import SOURCE_FORMATS
    >>> SOURCE_FORMATS["fer2013"].__name__
    'FER2013Source'
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from kfacemtl.data.formats import read_table
from kfacemtl.data.registry import register_source
from kfacemtl.data.source import IMAGE_EXTENSIONS, Source
from kfacemtl.errors import LabelError, SourceError, expect_one_of
from kfacemtl.tasks import EXPRESSION_CLASSES


@register_source
class FER2013Source(Source):
    """FER2013: the original ``fer2013.csv`` (``emotion,pixels,Usage``) or the image-folder layout.

    - ``PATH`` a CSV file: 48×48 grayscale pixel strings, kept in memory; ``usage`` selects
      ``Training``, ``PublicTest``, ``PrivateTest`` or ``all``.
    - ``PATH`` a folder with ``train/<class>/`` and ``test/<class>/``: ``usage`` ``Training``
      reads ``train/``, ``PublicTest`` reads ``test/`` (the Kaggle layout's test folder holds
      PublicTest), ``all`` both.

    Expression in FER2013 order: 0..6 angry, disgust, fear, happy, sad, surprise, neutral.

    Example:
        >>> from kfacemtl.data import make_source
        >>> pixels = " ".join(["128"] * 48 * 48)
        >>> _ = open("fer2013.csv", "w").write(f"emotion,pixels,Usage\\n3,{pixels},Training\\n6,{pixels},PublicTest\\n")
        >>> src = make_source("fer2013:fer2013.csv?usage=PublicTest")   # or a folder with train/<class>/, test/<class>/
        >>> len(src), src.images().shape, src.name
        (1, (1, 48, 48, 1), 'fer2013-PublicTest')
    """

    format = "fer2013"
    USAGES = ("Training", "PublicTest", "PrivateTest", "all")

    def __init__(self, path: str, usage: str = "Training", domain: str = "fer2013", name: str | None = None):
        self.path = Path(path)
        expect_one_of("usage", usage, self.USAGES)
        self._images, self._paths = None, None
        if self.path.is_file():
            self._read_csv(usage)
        elif self.path.is_dir():
            folders = {"Training": ["train"], "PublicTest": ["test"], "all": ["train", "test"]}.get(usage)
            if folders is None:
                raise ValueError(f"usage: the image-folder layout has no {usage} split "
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
        table = read_table(self.path, "fer2013")
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
