"""The tf.data pipeline for training and evaluation: decode → resize (or the decoded-image cache) → mix sources →
batch → augment → prefetch.

Every batch is ``(images, {task: label}, {task: weight})`` with every task of the model
present; a missing label has weight 0 and a finite placeholder label. Images are float32
in [0, 1], ``image_size`` square, 3 channels (gray is repeated).

The same :func:`preprocess_image` ops run at serving time, so a served model sees exactly
what training saw.

Example:
    >>> from kfacemtl.data import make_source
    >>> from kfacemtl.tasks import resolve_tasks
    >>> from kfacemtl.data.dataset import make_dataset
    >>> tasks = resolve_tasks(["gender", "expression"])
    >>> ds = make_dataset([make_source("synthetic:lab?n=8")], tasks, batch_size=4, training=False)
    >>> images, labels, weights = next(iter(ds))
    >>> images.shape, sorted(labels), weights["gender"].numpy().tolist()
    (TensorShape([4, 64, 64, 3]), ['expression', 'gender'], [0.0, 0.0, 0.0, 0.0])
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kfacemtl.data.augment import augment_batch, augment_options
from kfacemtl.data.batch import MaskedWeights
from kfacemtl.data.cache import CACHE_MODES, cached_sources
from kfacemtl.data.images import to_rgb, decode_image, preprocess_image
from kfacemtl.data.mixing import mixed_row_ids, mixing_weights
from kfacemtl.data.mixup import mix_batch, mixup_alpha
from kfacemtl.data.source import Source
from kfacemtl.errors import SourceError, expect_one_of
from kfacemtl.tasks import Task


def source_dataset(source: Source, tasks: Sequence[Task], shuffle_seed: int | None = None,
                   pseudo_labels=None, coannotation=None) -> tf.data.Dataset:
    """One source → unbatched ``(raw image or image path, labels, weights)`` elements, before decoding.

    Labels are validated here, before anything reaches a loss. With ``shuffle_seed`` the
    dataset is infinite: each pass is a fresh random permutation of all rows (a shuffle
    buffer smaller than the source would keep the order of class folders or of UTKFace's
    age-sorted file names). ``pseudo_labels`` (a :class:`~kfacemtl.training.distillation.PseudoLabels`,
    shuffled datasets only) fills rows' missing labels from its variables, read by row id at
    every pass; a :class:`~kfacemtl.training.coupling.CoAnnotation` fills them first from the related
    task's real label (a pseudo-label then fills only what is still missing).

    Example:
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> rows = source_dataset(make_source("synthetic:lab?n=4"), resolve_tasks(["gender", "expression"]))
        >>> image, labels, weights = next(iter(rows))
        >>> tuple(image.shape), float(weights["gender"]), float(weights["expression"])   # lab has no gender labels
        ((64, 64, 3), 0.0, 1.0)
    """
    labels, weights = _label_tables(source, tasks, coannotation)
    images = source.images()
    if images is not None:
        _check_images(source, images)
        first = np.arange(len(images)) if isinstance(images, np.memmap) else images  # on disk: row ids
    else:
        first = source.paths()
    if len(first) == 0:
        raise SourceError(f"source {source.name}: it has no samples")
    if shuffle_seed is None:
        return tf.data.Dataset.from_tensor_slices((first, labels, weights))
    table = tf.nest.map_structure(tf.constant, (first, labels, weights))
    order = tf.data.Dataset.range(len(first)).shuffle(len(first), seed=shuffle_seed, reshuffle_each_iteration=True)

    def row(i):
        x, y, w = tf.nest.map_structure(lambda t: tf.gather(t, i), table)
        return (x, *_with_pseudo_labels(pseudo_labels, source.name, i, y, w))
    return order.repeat().map(row)


def _label_tables(source: Source, tasks: Sequence[Task], coannotation) -> tuple:
    """A source's labels and weights for every task, with what co-annotation fills in (and then the weights are a
    :class:`~kfacemtl.data.batch.MaskedWeights`)."""
    labels, weights = source.labels(tasks)
    if coannotation is None:
        return labels, weights
    labels, weights, real, coannotated = coannotation.apply(labels, weights)
    return labels, MaskedWeights(weights, real, coannotated)


def _with_pseudo_labels(pseudo_labels, name: str, rows, labels, weights) -> tuple:
    """``(labels, weights)`` with the rows' pseudo-labels where a real label is missing (as they are without)."""
    if pseudo_labels is None:
        return labels, weights
    if isinstance(weights, MaskedWeights):
        labels, merged = pseudo_labels.merge(name, rows, labels, weights.weights)
        return labels, weights._replace(weights=merged)
    return pseudo_labels.merge(name, rows, labels, weights)


def _check_images(source: Source, images: np.ndarray):
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3, 4):
        raise SourceError(f"source {source.name}: in-memory images must be uint8 (n, H, W, 1|3|4), "
                          f"got {images.dtype} {images.shape}")


def _in_memory_images(sources: Sequence[Source], batch_size: int) -> list | None:
    """Every source's images when training batches can be made a batch at a time: all sources in memory (not a
    disk cache), each at least a batch long (a batch spans at most two passes of a source); else None."""
    if any(len(s) < int(batch_size) for s in sources):
        return None
    arrays = [s.images() for s in sources]  # once: a row subset's images() is a copy
    return None if any(a is None or isinstance(a, np.memmap) for a in arrays) else arrays


def _batched_training_dataset(sources: Sequence[Source], arrays: Sequence[np.ndarray], tasks: Sequence[Task],
                              batch_size: int, image_size, probs: np.ndarray, seed: int, coannotation,
                              pseudo_labels, augment: bool = False) -> tf.data.Dataset:
    """Training batches of in-memory sources, made a batch at a time.

    Each batch draws its row ids (:func:`mixed_row_ids`: every slot's source drawn with ``probs``,
    each source's rows in a fresh random permutation per pass), then gathers its images and labels
    from every source's table at once (with ``pseudo_labels``' labels where a real one is missing)
    and converts, recolours and resizes them with :func:`preprocess_image`, a batch at once; with ``augment`` and
    every table at the model's size, the batch stays uint8 (recoloured only) for :func:`augment_batch`, which then
    converts it. Nothing goes sample by sample, and the same seed gives the same batches.
    """
    tables = []
    for src, images in zip(sources, arrays):
        _check_images(src, images)
        tables.append(tf.nest.map_structure(tf.constant, (images, *_label_tables(src, tasks, coannotation))))
    # to be augmented and every table at the model's size (the training cache): the batch stays uint8, and the
    # augmentation's flip and shift move bytes before it becomes float (augment_batch)
    as_bytes = augment and all(tuple(a.shape[1:3]) == tuple(image_size) for a in arrays)
    prepare = to_rgb if as_bytes else lambda x: preprocess_image(x, image_size)

    def gather(which, rows):
        where, xs, ys, ws = [], [], [], []
        for i, (images, labels, weights) in enumerate(tables):
            at = tf.cast(tf.where(tf.equal(which, i))[:, 0], tf.int32)
            mine = tf.gather(rows, at)
            where.append(at)
            xs.append(prepare(tf.gather(images, mine)))
            y, w = (tf.nest.map_structure(lambda v: tf.gather(v, mine), table) for table in (labels, weights))
            y, w = _with_pseudo_labels(pseudo_labels, sources[i].name, mine, y, w)
            ys.append(y)
            ws.append(w)

        def stitch(*parts):
            return tf.dynamic_stitch(where, list(parts))
        return stitch(*xs), tf.nest.map_structure(stitch, *ys), tf.nest.map_structure(stitch, *ws)

    ids = mixed_row_ids([len(a) for a in arrays], probs, int(batch_size), seed)
    return ids.map(gather, num_parallel_calls=tf.data.AUTOTUNE)


def _loader(source: Source, image_size):
    images = source.images()
    if isinstance(images, np.memmap):  # a disk cache: read the row, as the files would be read
        def read(i):
            row = tf.numpy_function(lambda j: np.asarray(images[j]), [i], tf.uint8, stateful=False)
            row.set_shape(images.shape[1:])
            return preprocess_image(row, image_size)
        return read
    if images is not None:
        return lambda x: preprocess_image(x, image_size)
    return lambda p: decode_image(tf.io.read_file(p), image_size)


def make_dataset(sources: Sequence[Source], tasks: Sequence[Task], batch_size: int = 64, image_size=(64, 64),
                 training: bool = True, mixing: str | Mapping[str, float] = "proportional",
                 augment: bool | Mapping = True,
                 seed: int = 0, drop_remainder: bool | None = None, pseudo_labels=None,
                 coannotation=None, cache: str = "auto", cache_limit_mb: float = 4096,
                 cache_dir=None, bad_images: str = "error", skipped: dict | None = None,
                 mixup: float = 0.0) -> tf.data.Dataset:
    """The batched dataset for ``model.fit`` / ``model.evaluate``.

    Args:
        sources: the data sources.
        tasks: every task of the model (in model order); tasks a source lacks get weight 0.
        batch_size: samples per batch.
        image_size: ``(height, width)`` of the model's input.
        training: shuffle (a full permutation of each source per pass), repeat forever, mix
            sources by ``mixing`` and augment; else one pass over the sources in order, no
            augmentation.
        mixing: ``proportional``, ``balanced`` or ``{source_name: weight}`` (training only).
        augment: apply :func:`augment_batch` to each batch (training only); a mapping ``{zoom: Z, rotate: R}``
            adds zoom and rotation (:func:`~kfacemtl.data.augment.augment_options`).
        seed: seed for shuffling, mixing and augmentation.
        pseudo_labels: a :class:`~kfacemtl.training.distillation.PseudoLabels` whose pseudo-labels fill
            missing labels (training only; a real label always wins).
        coannotation: a :class:`~kfacemtl.training.coupling.CoAnnotation` that fills missing labels from
            related tasks' real labels (training only).
        cache: training only. ``auto``: file sources are decoded and resized once and held in memory
            (:class:`DecodedImages`) while they fit in ``cache_limit_mb``, the others in a file in
            ``cache_dir`` (default :func:`default_cache_dir`; reused by later runs on the same files);
            ``memory``: in memory within the limit, the others decoded at every pass; ``disk``: all in
            files; ``none``: every pass decodes the files again. Evaluation (``training=False``) caches nothing.
        bad_images: image files that cannot be decoded (checked before anything is trained or evaluated): ``error``
            (:class:`BadImageFiles` names each file and its row) or ``skip`` (left out; ``skipped``, a dict, then
            gets ``{source name: [row names]}``).
        mixup: training only: ``α`` of :func:`~kfacemtl.data.mixup.mix_batch` (each image blended with another of
            its batch, the targets to match; 0: off), after the augmentation.

    Returns:
        A ``tf.data.Dataset`` of ``(images, {task: label}, {task: weight})``. With
        ``training=True`` it is infinite: pass ``steps_per_epoch`` to ``fit``
        (:func:`steps_per_epoch` gives one pass over the data).

    Example:
        >>> from kfacemtl.data import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> sources = [make_source("synthetic:lab?n=16"), make_source("synthetic:portraits?n=16")]
        >>> ds = make_dataset(sources, resolve_tasks(["gender", "expression"]), batch_size=8, image_size=(32, 32),
        ...                   mixing="balanced")
        >>> images, labels, weights = next(iter(ds))
        >>> tuple(images.shape), sorted(weights)
        ((8, 32, 32, 3), ['expression', 'gender'])
    """
    if not sources:
        raise ValueError("sources: no sources given")
    if int(batch_size) < 1:
        raise ValueError(f"batch_size: expected a positive integer, got {batch_size!r}")
    image_size = tuple(int(v) for v in image_size)
    augment = augment_options(augment) if training else None
    mixup = mixup_alpha(mixup) if training else 0.0
    if mixup and coannotation is not None:
        raise ValueError("mixup: not combined with co-annotation (its masks say which labels are real, per row)")
    expect_one_of("cache", cache, CACHE_MODES)  # also when evaluating (which caches nothing)
    sources = cached_sources(sources, image_size, cache_limit_mb, cache if training else "none", cache_dir,
                             bad_images, skipped)
    auto = tf.data.AUTOTUNE
    arrays = _in_memory_images(sources, batch_size) if training else None
    if arrays is not None:  # every source in memory: whole batches at a time, nothing sample by sample
        ds = _batched_training_dataset(sources, arrays, tasks, batch_size, image_size, mixing_weights(sources, mixing),
                                       seed, coannotation, pseudo_labels, augment is not None)
    else:
        parts = []
        for i, src in enumerate(sources):
            ds = source_dataset(src, tasks, shuffle_seed=seed + i if training else None,
                                pseudo_labels=pseudo_labels if training else None,
                                coannotation=coannotation if training else None)
            load = _loader(src, image_size)
            parts.append(ds.map(lambda x, y, w: (load(x), y, w), num_parallel_calls=auto, deterministic=not training))
        if training:
            probs = mixing_weights(sources, mixing)
            ds = (tf.data.Dataset.sample_from_datasets(parts, weights=probs.tolist(), seed=seed) if len(parts) > 1
                  else parts[0])
            drop = True if drop_remainder is None else drop_remainder
        else:
            ds = parts[0]
            for p in parts[1:]:
                ds = ds.concatenate(p)
            drop = bool(drop_remainder)
        ds = ds.batch(int(batch_size), drop_remainder=drop, num_parallel_calls=auto)
    if augment is not None:  # per batch: a few batched ops instead of several per image
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter())).map(
            lambda e, c: (augment_batch(e[0], tf.stack([tf.cast(seed, tf.int64), c]), compiled=True, **augment),
                          *e[1:]),
            num_parallel_calls=auto)
    if mixup:
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter())).map(
            lambda e, c: mix_batch(*e, tasks, mixup, tf.stack([tf.cast(seed, tf.int64) + 1, c])),
            num_parallel_calls=auto)
    return ds.prefetch(auto)


def prefetch_to_gpu(ds: tf.data.Dataset, buffer_size: int = 2) -> tf.data.Dataset:
    """``ds`` with its next ``buffer_size`` batches copied to the first GPU while the current step runs
    (``tf.data.experimental.prefetch_to_device``), where a GPU is; else ``ds`` itself. The last transformation of a
    training dataset: without it each step waits for its batch's copy (measured on an H200 with XLA: training 8 %
    faster, docs/benchmarks/throughput.md).

    Example:
        >>> ds = tf.data.Dataset.range(3)
        >>> prefetch_to_gpu(ds) is ds or bool(tf.config.list_physical_devices("GPU"))
        True
    """
    if not tf.config.list_physical_devices("GPU"):
        return ds
    return ds.apply(tf.data.experimental.prefetch_to_device("/GPU:0", buffer_size))


def steps_per_epoch(sources: Sequence[Source], batch_size: int) -> int:
    """Batches in one pass over all sources (at least 1).

    Example:
        >>> from kfacemtl.data import make_source
        >>> steps_per_epoch([make_source("synthetic:lab?n=100"), make_source("synthetic:webcam?n=60")], 64)
        2
    """
    return max(1, sum(len(s) for s in sources) // int(batch_size))
