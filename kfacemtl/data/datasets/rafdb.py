"""RAF-DB (basic): its label file and aligned images.

Example:
    >>> from kfacemtl.data.registry import SOURCE_FORMATS
    >>> SOURCE_FORMATS["rafdb"].__name__
    'RAFDBSource'
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from kfacemtl.data.datasets.common import first_existing, missing_files
from kfacemtl.data.registry import register_source
from kfacemtl.data.source import FileTableSource
from kfacemtl.errors import LabelError, SourceError
from kfacemtl.tasks import EXPRESSION_CLASSES


@register_source
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
        >>> import os
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import get_task
        >>> os.makedirs("basic/EmoLabel", exist_ok=True); os.makedirs("basic/Image/aligned", exist_ok=True)
        >>> _ = open("basic/EmoLabel/list_patition_label.txt", "w").write("train_00001.jpg 4\\ntest_0001.jpg 1\\n")
        >>> for name in ("train_00001_aligned.jpg", "test_0001_aligned.jpg"):
        ...     open(f"basic/Image/aligned/{name}", "wb").close()
        >>> src = make_source("rafdb:basic?split=test")
        >>> len(src), src.raw_labels(get_task("expression"))[0].tolist()   # RAF-DB 1: surprise
        (1, [5.0])
    """

    format = "rafdb"
    LABELS = ("surprise", "fear", "disgust", "happy", "sad", "angry", "neutral")  # RAF-DB ids 1..7
    LABEL_FILE = "list_patition_label.txt"  # sic: RAF-DB's spelling

    def __init__(self, path: str, split: str = "all", images: str = "aligned", domain: str = "rafdb",
                 name: str | None = None):
        path = Path(path)
        label_file = path if path.is_file() else first_existing(path / "EmoLabel" / self.LABEL_FILE,
                                                                 path / self.LABEL_FILE)
        if label_file is None:
            raise SourceError(f"rafdb: no {self.LABEL_FILE} in {str(path)!r} or {str(path / 'EmoLabel')!r}")
        if split not in ("train", "test", "all"):
            raise ValueError(f"split: expected train, test or all, got {split!r}")
        if images not in ("aligned", "original"):
            raise ValueError(f"images: expected aligned or original, got {images!r}")
        root = label_file.parent.parent if label_file.parent.name == "EmoLabel" else label_file.parent
        image_dir = first_existing(root / "Image" / images, root / images)
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
        missing_files(paths, f"rafdb: {str(image_dir)!r}")
        super().__init__(name or f"rafdb-{split}", domain, paths, {"expression": np.array(labels, "float64")})
