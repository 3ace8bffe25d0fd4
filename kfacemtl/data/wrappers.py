"""Sources made from other sources: hidden labels, a subset of rows, a random sample, a validation holdout.

Wrappers keep the name, domain and row order of what they wrap, so row ids mean the same thing to the pipeline,
the pseudo-labels and the report.

Example:
    >>> from kfacemtl.data import make_source
    >>> sub = RowSubset(make_source("synthetic:lab?n=6"), [0, 2, 5])
    >>> len(sub), WithoutLabels(sub).tasks
    (3, ())
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kfacemtl.data.source import Source
from kfacemtl.data.splits import split_rows
from kfacemtl.errors import LabelError, expect_one_of


class WithoutLabels(Source):
    """Another source's images with its labels hidden from training (``unlabelled_sources``).

    The hidden labels (:attr:`hidden`) are never trained on; distillation uses them only to
    score its pseudo-labels (e.g. a target domain's held-out labels).

    Example:
        >>> from kfacemtl.data import make_source
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
        >>> from kfacemtl.data import make_source
        >>> sub = RowSubset(make_source("synthetic:lab?n=6"), [0, 2, 5])
        >>> len(sub), sub.name, sub.images().shape[0]
        (3, 'lab-train', 3)
    """

    def __init__(self, source: Source, rows: Sequence[int], name: str | None = None):
        super().__init__(name or source.name, source.domain, source.tasks)
        self.source, self.rows = source, np.asarray(rows, dtype=np.int64)
        self.format = source.format
        if getattr(source, "subjects", None) is not None:  # people, for a split of the subset (holdout_rows)
            self.subjects = np.asarray(source.subjects)[self.rows]

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


def sample_rows(source: Source, n: int) -> Source:
    """``n`` rows of ``source`` drawn at random with a fixed seed, kept in their order (all rows if it has fewer).

    Example:
        >>> from kfacemtl.data import make_source
        >>> sub = sample_rows(make_source("synthetic:lab?n=8"), 3)
        >>> len(sub), sub.name, list(sub.rows) == sorted(sub.rows)
        (3, 'lab-train', True)
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"sample: expected a positive number of rows, got {n!r}")
    if n >= len(source):
        return source
    rows = np.sort(np.random.default_rng(0).choice(len(source), size=n, replace=False))
    return RowSubset(source, rows)


def holdout_rows(source: Source, fraction, part: str = "train") -> Source:
    """Split a validation set off a training source: ``part="val"`` is a seeded ``fraction`` of its people (its
    ``subjects`` where the source has them, else its files or rows), named ``<name>-val``; ``part="train"`` the rest,
    under the source's own name. The two never share a person, and the same fraction always gives the same rows, so
    settings can be chosen on ``val`` while the test split stays untouched.

    Example:
        >>> from kfacemtl.data import make_source
        >>> src = make_source("synthetic:lab?n=20")
        >>> fit, val = holdout_rows(src, 0.25), holdout_rows(src, 0.25, part="val")
        >>> len(fit), len(val), val.name, set(fit.rows) & set(val.rows)
        (15, 5, 'lab-train-val', set())
    """
    expect_one_of("part", part, ("train", "val"))
    groups = getattr(source, "subjects", None)
    if groups is None:
        paths = source.paths()
        groups = paths if paths is not None else np.arange(len(source))
    rows = split_rows(groups, np.zeros(len(source)), "test" if part == "val" else "train", fraction, seed=1)
    return RowSubset(source, rows, name=f"{source.name}-val" if part == "val" else None)
