"""How training batches mix their sources: each slot's source drawn by weight, each source's rows in a fresh
permutation per pass.

Example:
    >>> which, rows = next(iter(mixed_row_ids([100, 20], np.array([0.5, 0.5]), batch_size=8, seed=0)))
    >>> which.numpy().tolist(), len(set(rows.numpy().tolist())) == 8   # each slot's source, then distinct rows
    ([1, 0, 0, 0, 1, 0, 1, 1], True)
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kfacemtl.data.source import Source


MIXING_MODES = ("proportional", "balanced", "sqrt")


def mixing_weights(sources: Sequence[Source], mixing: str | Mapping[str, float] = "proportional") -> np.ndarray:
    """Sampling probability of each source.

    Args:
        mixing: ``proportional`` (to source size), ``balanced`` (equal), ``sqrt`` (to the square root of source
            size: temperature sampling with T = 2 (Arivazhagan et al. 2019), between the two: a small source is
            seen more often than its size alone gives, without being repeated as often as ``balanced`` repeats it),
            or an explicit ``{source_name: weight}`` mapping (every source named, weights ≥ 0, not all 0).

    Example:
        >>> class S:  # any object with a name and a length
        ...     def __init__(self, name, n): self.name, self.n = name, n
        ...     def __len__(self): return self.n
        >>> mixing_weights([S("a", 300), S("b", 100)]).tolist()
        [0.75, 0.25]
        >>> mixing_weights([S("a", 300), S("b", 100)], "balanced").tolist()
        [0.5, 0.5]
        >>> mixing_weights([S("a", 900), S("b", 100)], "sqrt").tolist()
        [0.75, 0.25]
    """
    if isinstance(mixing, Mapping):
        names = [s.name for s in sources]
        unknown = set(mixing) - set(names)
        if unknown:
            raise ValueError(f"mixing.{sorted(unknown)[0]}: not a source; sources are {names}")
        missing = [n for n in names if n not in mixing]
        if missing:
            raise ValueError(f"mixing: explicit mixing must give every source a weight; missing {missing}")
        w = np.array([float(mixing[n]) for n in names])
        if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ValueError(f"mixing: weights must be finite, ≥ 0 and not all 0, got {dict(mixing)}")
    elif mixing in ("proportional", "sqrt"):
        w = np.array([len(s) for s in sources], dtype="float64")
        w = w if mixing == "proportional" else np.sqrt(w)
    elif mixing == "balanced":
        w = np.ones(len(sources))
    else:
        raise ValueError(f"mixing: expected one of {MIXING_MODES} or a mapping {{source: weight}}, got {mixing!r}")
    return w / w.sum()


def mixed_row_ids(sizes: Sequence[int], probs: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """An infinite dataset of batches ``(source index, row)``, each ``(batch_size,)``: every slot's source drawn
    with ``probs`` (independently, as ``sample_from_datasets`` draws), each source's rows taken in order from a
    fresh random permutation per pass. A stateless function of ``seed``, the batch number and the pass number.

    Example:
        >>> which, rows = next(iter(mixed_row_ids([3, 5], np.array([0.5, 0.5]), 4, seed=0)))
        >>> which.shape.as_list(), bool(tf.reduce_all(rows < tf.cast(tf.where(which == 0, 3, 5), rows.dtype)))
        ([4], True)
    """
    seed = int(seed)
    logits = tf.math.log(tf.constant([probs], tf.float64))

    def permutation(i, number):
        return tf.random.experimental.stateless_shuffle(tf.range(sizes[i], dtype=tf.int64),
                                                        seed=tf.stack([tf.constant(seed + i, tf.int64), number]))

    zero = tf.constant(0, tf.int64)
    initial = (tf.zeros([len(sizes)], tf.int64), tf.zeros([len(sizes)], tf.int64),
               tuple(permutation(i, zero) for i in range(len(sizes))))

    def step(state, batch_number):
        position, passes, perms = state
        which = tf.random.stateless_categorical(logits, batch_size, seed=tf.stack([tf.constant(seed, tf.int64),
                                                                                    batch_number]))[0]
        where, rows, new_position, new_passes, new_perms = [], [], [], [], []
        for i, n in enumerate(sizes):
            at = tf.cast(tf.where(tf.equal(which, i))[:, 0], tf.int32)
            k, p = tf.cast(tf.size(at), tf.int64), position[i]

            def within(i=i, k=k, p=p):
                return perms[i][p:p + k], p + k, passes[i], perms[i]

            def next_pass(i=i, k=k, p=p, n=n):  # the rest of this pass, then the start of a new permutation
                fresh = permutation(i, passes[i] + 1)
                return tf.concat([perms[i][p:], fresh[:k - (n - p)]], 0), k - (n - p), passes[i] + 1, fresh

            taken, p, number, perm = tf.cond(p + k <= n, within, next_pass)
            where.append(at)
            rows.append(taken)
            new_position.append(p)
            new_passes.append(number)
            new_perms.append(perm)
        state = (tf.stack(new_position), tf.stack(new_passes), tuple(new_perms))
        return state, (tf.cast(which, tf.int32), tf.dynamic_stitch(where, rows))

    return tf.data.Dataset.counter().scan(initial, step)
