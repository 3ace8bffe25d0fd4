"""The synthetic benchmark as a data source: ``synthetic:DOMAIN?split=...&n=...&seed=...``.

Example:
    >>> SyntheticSource("lab", n=4).tasks
    ('expression', 'action_units')
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from kfacemtl.data.registry import register_source
from kfacemtl.data.source import Source
from kfacemtl.data.synthetic.factors import DOMAINS
from kfacemtl.data.synthetic.store import load_split
from kfacemtl.errors import SourceError


@register_source
class SyntheticSource(Source):
    """One split of one domain of the synthetic benchmark (see :mod:`kfacemtl.data.synthetic`).

    Args:
        domain: ``portraits``, ``lab``, ``webcam``, ``affect``, ``street`` or ``cctv``.
        split: ``train`` or ``test``; test splits are labelled for every task by default.
        n: number of faces.
        seed: rendering seed.
        tasks: the tasks to expose as labelled (default: the domain's labels for train,
            all tasks for test).
        cache_dir: where rendered splits are cached (default ``~/.cache/kfacemtl``).

    Example:
        >>> SyntheticSource("street", split="test", n=8).tasks[:3]
        ('age', 'gender', 'race')
    """

    format = "synthetic"
    ALL_TASKS = ("age", "gender", "race", "expression", "action_units", "valence_arousal")

    def __init__(self, domain: str, split: str = "train", n: int = 2000, seed: int = 0,
                 tasks: Sequence[str] | None = None, cache_dir: str | None = None, name: str | None = None):
        if domain not in DOMAINS:
            raise SourceError(f"synthetic: unknown domain {domain!r}; domains are {sorted(DOMAINS)}")
        if split not in ("train", "test"):
            raise ValueError(f"split: expected train or test, got {split!r}")
        if int(n) < 1:
            raise ValueError(f"n: expected a positive number of faces, got {n!r}")
        dom = DOMAINS[domain]
        if tasks is None:
            tasks = dom.labels if split == "train" else self.ALL_TASKS
        unknown = set(tasks) - set(self.ALL_TASKS) - {"identity"}
        if unknown:
            raise SourceError(f"synthetic:{domain}: it has no ground truth for {sorted(unknown)}")
        super().__init__(name or f"{domain}-{split}", domain, tasks)
        self.split, self.n, self.seed = split, int(n), int(seed)
        self._images, self._labels = load_split(domain, self.n, split, self.seed, cache_dir)

    def __len__(self):
        return self.n

    def images(self):
        return self._images

    def raw_labels(self, task):
        values = self._labels[task.name].astype("float64")
        return values, np.ones(self.n, dtype=bool)

    def ground_truth(self) -> dict:
        """All latent labels of the split (including identity), whatever ``tasks`` exposes."""
        return dict(self._labels)
