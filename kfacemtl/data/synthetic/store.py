"""Rendering whole splits of the synthetic benchmark: in parallel chunks, deterministic, cached on disk.

Example:
    >>> images, labels = generate("webcam", 4, seed=3)
    >>> images.shape, sorted(labels)[:2]
    ((4, 64, 64, 3), ['action_units', 'age'])
"""
from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from kfacemtl.data.synthetic.factors import DOMAINS, Domain, sample_factors
from kfacemtl.data.synthetic.render import render_faces
from kfacemtl.files import atomic_write, cache_root


LABEL_KEYS = ("age", "gender", "race", "expression", "action_units", "valence_arousal", "identity")


CHUNK = 512  # faces are rendered in fixed chunks, each with its own seed, so output is the same serial or parallel


def _chunk_rng(name: str, split: str, seed: int, chunk: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{name}/{split}/{seed}/{chunk}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def _render_chunk(args):
    dom, n, split, seed, chunk, regions = args
    rng = _chunk_rng(dom.name, split, seed, chunk)
    images, labels, masks = [], {k: [] for k in LABEL_KEYS}, {}
    for start in range(0, n, 128):
        f = sample_factors(min(128, n - start), dom, rng, split=split)
        out = render_faces(f, dom, rng, regions=regions)
        img, reg = (out if regions else (out, {}))
        images.append(img)
        for key in LABEL_KEYS:
            labels[key].append(f[key])
        for key, v in reg.items():
            masks.setdefault(key, []).append(v)
    return (np.concatenate(images), {k: np.concatenate(v) for k, v in labels.items()},
            {k: np.concatenate(v) for k, v in masks.items()})


def generate(domain: str | Domain, n: int, split: str = "train", seed: int = 0, regions: bool = False,
             workers: int | None = None):
    """Render ``n`` faces of a domain: ``(images uint8 (n,64,64,3), labels dict[, regions])``.

    Deterministic in ``(domain, split, seed, n)``, whether rendered serially or in parallel.
    Labels hold every ground truth (``LABEL_KEYS``) whatever the domain
    labels for training. Chunks of 512 faces render in ``workers`` threads (default: one
    per core when there is more than one chunk).

    Example:
        >>> images, labels = generate("webcam", 4, seed=3)
        >>> images.shape, labels["expression"].shape
        ((4, 64, 64, 3), (4,))
    """
    dom = DOMAINS[domain] if isinstance(domain, str) else domain
    jobs = [(dom, min(CHUNK, n - c * CHUNK), split, seed, c, regions) for c in range((n + CHUNK - 1) // CHUNK)]
    workers = min(len(jobs), workers or os.cpu_count() or 1)
    if workers > 1:  # numpy releases the GIL in its array loops; threads need no __main__ guard
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(_render_chunk, jobs))
    else:
        parts = [_render_chunk(j) for j in jobs]
    if not parts:
        raise ValueError("n must be at least 1")
    images = np.concatenate([p[0] for p in parts])
    labels = {k: np.concatenate([p[1][k] for p in parts]) for k in LABEL_KEYS}
    if regions:
        return images, labels, {k: np.concatenate([p[2][k] for p in parts]) for k in parts[0][2]}
    return images, labels


def load_split(domain: str, n: int, split: str = "train", seed: int = 0, cache_dir=None):
    """Like :func:`generate` but cached on disk as ``.npz`` (written atomically).

    Example:
        >>> images, truth = load_split("lab", 4, split="test", cache_dir="synthetic-cache")   # rendered once, then read
        >>> images.shape, sorted(truth)[:3]
        ((4, 64, 64, 3), ['action_units', 'age', 'expression'])
    """
    cache = Path(cache_dir) if cache_dir is not None else cache_root()
    key = hashlib.sha256(json.dumps([DOMAINS[domain].to_config(), n, split, seed, _RENDER_VERSION]).encode()).hexdigest()[:16]
    path = cache / f"synthetic-{domain}-{split}-{n}-{seed}-{key}.npz"
    if path.exists():
        try:
            with np.load(path) as z:
                return z["images"], {k: z[k] for k in LABEL_KEYS}
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is simply rendered again
    images, labels = generate(domain, n, split=split, seed=seed)
    atomic_write(path, lambda tmp: np.savez(tmp, images=images, **labels))
    return images, labels


_RENDER_VERSION = 9
