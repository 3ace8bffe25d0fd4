"""Deterministic, stratified, group-wise train/test splits of a dataset's rows.

Example:
    >>> split_rows(["a", "b", "c", "d"], [0, 0, 1, 1], "test", 0.5).tolist()
    [1, 2]
"""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np



def split_rows(groups: Sequence, strata: Sequence, split: str, test_fraction: float = 0.2,
               seed: int = 0) -> np.ndarray:
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
        raise ValueError(f"split: expected train, test or all, got {split!r}")
    if not 0 < float(test_fraction) < 1:
        raise ValueError(f"test_fraction: expected a number in (0, 1), got {test_fraction!r}")
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
