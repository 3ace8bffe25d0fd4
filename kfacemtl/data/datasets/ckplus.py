"""CK+ (the CK+48 layout): expression folders, subject-wise splits.

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

from kfacemtl.data.datasets.common import EXPRESSION_ALIASES, contempt_option, expression_id
from kfacemtl.data.registry import register_source
from kfacemtl.data.source import CONTEMPT, IMAGE_EXTENSIONS, FileTableSource
from kfacemtl.data.splits import split_rows
from kfacemtl.errors import LabelError, SourceError


@register_source
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
                 contempt: str = "keep", domain: str = "ckplus", name: str | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"ckplus: {str(self.path)!r} is not a folder")
        contempt = contempt_option(contempt)
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
