"""UTKFace: age, gender and race from the file names.

Example:
    >>> from kfacemtl.data.registry import SOURCE_FORMATS
    >>> SOURCE_FORMATS["utkface"].__name__
    'UTKFaceSource'
"""
from __future__ import annotations

import re
import warnings
from pathlib import Path

import numpy as np

from kfacemtl.data.datasets.common import flag
from kfacemtl.data.registry import register_source
from kfacemtl.data.source import IMAGE_EXTENSIONS, FileTableSource
from kfacemtl.data.splits import split_rows
from kfacemtl.errors import SourceError


@register_source
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
        >>> import os
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import get_task
        >>> os.makedirs("UTKFace", exist_ok=True)
        >>> for name in ("31_1_0_20170116000001.jpg.chip.jpg", "8_0_2_20170116000002.jpg.chip.jpg"):
        ...     open(f"UTKFace/{name}", "wb").close()      # the labels are in the names
        >>> src = make_source("utkface:UTKFace")             # split=all; train / test split by face
        >>> src.raw_labels(get_task("age"))[0].ravel().tolist(), src.tasks
        ([31.0, 8.0], ('age', 'gender', 'race'))
    """

    format = "utkface"
    _NAME = re.compile(r"^(\d+)_(\d+)_(\d+)_(\d+)\.jpg(\.chip\.jpg)?$", re.IGNORECASE)

    def __init__(self, path: str, split: str = "all", test_fraction: float = 0.2, seed: int = 0,
                 strict: bool = False, domain: str = "utkface", name: str | None = None):
        self.path = Path(path)
        if not self.path.is_dir():
            raise SourceError(f"utkface: {str(self.path)!r} is not a folder")
        strict = flag(strict)
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
        keep = split_rows([r[0] for r in rows], [(r[2], r[3]) for r in rows], split, test_fraction, seed)
        rows = [rows[i] for i in keep]
        super().__init__(name or f"utkface-{split}", domain, [r[0] for r in rows],
                         {"age": np.array([r[1] for r in rows], "float64")[:, None],
                          "gender": np.array([r[2] for r in rows], "float64"),
                          "race": np.array([r[3] for r in rows], "float64")})
        self.skipped = bad
