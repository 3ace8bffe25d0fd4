"""CelebA: gender and any attribute as tasks.

Example:
    >>> from kfacemtl.data.registry import SOURCE_FORMATS
    >>> SOURCE_FORMATS["celeba"].__name__
    'CelebASource'
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Sequence

import numpy as np

from kfacemtl.data.datasets.common import first_existing, missing_files
from kfacemtl.data.registry import register_source
from kfacemtl.data.source import FileTableSource
from kfacemtl.data.splits import split_rows
from kfacemtl.errors import LabelError, SourceError
from kfacemtl.tasks import Task


def celeba_attribute_task(attribute: str) -> Task:
    """The binary task a CelebA attribute becomes: lower-case name, classes ``no``, ``yes``.

    Example:
        >>> celeba_attribute_task("Eyeglasses").classes
        ('no', 'yes')

    In a config: ``tasks: {eyeglasses: {kind: classification, classes: [no, yes]}}``.
    """
    return Task(attribute.lower(), "classification", classes=("no", "yes"))


@register_source
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
        >>> import os
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import get_task
        >>> os.makedirs("celeba/img_align_celeba", exist_ok=True)
        >>> for name in ("000001.jpg", "000002.jpg"):
        ...     open(f"celeba/img_align_celeba/{name}", "wb").close()
        >>> attributes = "2\\nMale Smiling\\n000001.jpg 1 -1\\n000002.jpg -1 1\\n"
        >>> _ = open("celeba/list_attr_celeba.txt", "w").write(attributes)
        >>> src = make_source("celeba:celeba?attributes=Smiling")   # split=train / valid / test: CelebA's own
        >>> src.tasks, src.raw_labels(get_task("gender"))[0].tolist()   # 0 male, 1 female
        (('gender', 'smiling'), [0.0, 1.0])
    """

    format = "celeba"
    PARTITIONS = {"train": 0, "valid": 1, "test": 2}

    def __init__(self, path: str, split: str = "all", attributes: str | Sequence[str] = (),
                 test_fraction: float = 0.1, seed: int = 0, domain: str = "celeba", name: str | None = None):
        root = Path(path)
        if not root.is_dir():
            raise SourceError(f"celeba: {str(root)!r} is not a folder")
        if split not in (*self.PARTITIONS, "all"):
            raise ValueError(f"split: expected train, valid, test or all, got {split!r}")
        attr_file = first_existing(root / "list_attr_celeba.txt", root / "Anno" / "list_attr_celeba.txt")
        image_dir = first_existing(root / "img_align_celeba", root / "Img" / "img_align_celeba")
        if attr_file is None or image_dir is None:
            raise SourceError(f"celeba: {str(root)!r} needs list_attr_celeba.txt and img_align_celeba/ "
                              "(in it or in Anno/ and Img/)")
        if isinstance(attributes, str):
            attributes = [a for a in attributes.split(",") if a]
        names, files, values = self._read_attributes(attr_file)
        unknown = [a for a in attributes if a not in names]
        if unknown or "Male" not in names:
            raise ValueError(f"attributes: {unknown or ['Male']} not in {str(attr_file)!r} "
                                                   f"(attributes: {', '.join(names)})")
        gender = (values[:, names.index("Male")] == -1).astype("float64")  # Male 1 → 0 male, -1 → 1 female
        rows = np.arange(len(files))
        partition_file = first_existing(root / "list_eval_partition.txt", root / "Eval" / "list_eval_partition.txt")
        if split != "all" and partition_file is not None:
            part = dict(line.split()[:2] for line in partition_file.read_text().splitlines() if line.strip())
            rows = np.array([i for i, f in enumerate(files) if part.get(f) == str(self.PARTITIONS[split])], int)
        elif split != "all":
            if split == "valid":
                raise ValueError(f"split: no list_eval_partition.txt in {str(root)!r}: "
                                                  "only train / test (split by identity) are available")
            id_file = first_existing(root / "identity_CelebA.txt", root / "Anno" / "identity_CelebA.txt")
            ids = dict(line.split()[:2] for line in id_file.read_text().splitlines() if line.strip()) if id_file else {}
            rows = split_rows([ids.get(f, f) for f in files], gender, split, test_fraction, seed)
        if not len(rows):
            raise SourceError(f"celeba: no images in the {split} split of {str(root)!r}")
        paths = [str(image_dir / files[i]) for i in rows]
        missing_files(paths, f"celeba: {str(image_dir)!r}")
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
