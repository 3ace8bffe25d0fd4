"""Views of a face: a model's answers averaged over T transformed copies of each image (flips, scales, shifts),
computed in one batched pass. The distillation teacher's ensemble and test-time augmentation
(``kfacemtl evaluate --tta``) are both this.

A view is ``(flip, scale, dx, dy)``: mirrored left-right or not, ``scale`` > 1 zooms in, ``dx``, ``dy`` shift the
content by that fraction of the image. All T copies of a batch come from one ``crop_and_resize`` (a flip is a box with
its x-coordinates swapped).

Example:
    >>> transform_boxes([(False, 1.0, 0.0, 0.0), (True, 2.0, 0.0, 0.0)]).tolist()
    [[0.0, 0.0, 1.0, 1.0], [0.25, 0.75, 0.75, 0.25]]
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import tensorflow as tf

from kfacemtl.errors import expect_one_of


#: (flip, scale, dx, dy): the plain image, its mirror, zoom in ×1.1, the mirror zoomed out ×0.9, two 5 % shifts
DEFAULT_TRANSFORMS = ((False, 1.0, 0.0, 0.0), (True, 1.0, 0.0, 0.0), (False, 1.1, 0.0, 0.0),
                      (True, 0.9, 0.0, 0.0), (False, 1.0, 0.05, 0.0), (True, 1.0, -0.05, 0.0))

#: test-time augmentation by name: ``flip`` averages the image and its mirror; ``six``, the distillation
#: teacher's six views (:data:`DEFAULT_TRANSFORMS`)
TTA_VIEWS = {"flip": DEFAULT_TRANSFORMS[:2], "six": DEFAULT_TRANSFORMS}

#: every name a views option takes (``--tta``, ``distillation.teacher_views``): ``none`` and those of :data:`TTA_VIEWS`
VIEW_NAMES = ("none", *TTA_VIEWS)


def tta_views(name) -> tuple | None:
    """The views of a test-time augmentation name (``None`` or ``"none"``: no augmentation); a tuple of views is
    its own answer.

    Example:
        >>> tta_views("flip")
        ((False, 1.0, 0.0, 0.0), (True, 1.0, 0.0, 0.0))
        >>> tta_views("none") is None, tta_views(((True, 1.0, 0.0, 0.0),))
        (True, ((True, 1.0, 0.0, 0.0),))
    """
    if name is None or name == "none":
        return None
    if isinstance(name, tuple):
        return name
    return TTA_VIEWS[expect_one_of("tta", name, VIEW_NAMES)]


def transform_boxes(transforms: Sequence) -> np.ndarray:
    """``crop_and_resize`` boxes ``(T, 4)`` ``[y1, x1, y2, x2]`` of ``(flip, scale, dx, dy)`` transforms.

    Example:
        >>> transform_boxes([(False, 1.0, 0.0, 0.0), (True, 2.0, 0.0, 0.0)]).tolist()
        [[0.0, 0.0, 1.0, 1.0], [0.25, 0.75, 0.75, 0.25]]
    """
    boxes = []
    for i, t in enumerate(transforms):
        if len(t) != 4:
            raise ValueError(f"transforms[{i}]: expected (flip, scale, dx, dy), got {t!r}")
        flip, scale, dx, dy = bool(t[0]), float(t[1]), float(t[2]), float(t[3])
        if not 0.25 <= scale <= 4 or abs(dx) >= 0.5 or abs(dy) >= 0.5:
            raise ValueError(f"transforms[{i}]: expected a scale in [0.25, 4] and shifts below 0.5, got {t!r}")
        half = 0.5 / scale
        y1, y2, x1, x2 = 0.5 - dy - half, 0.5 - dy + half, 0.5 - dx - half, 0.5 - dx + half
        boxes.append([y1, x2, y2, x1] if flip else [y1, x1, y2, x2])
    return np.array(boxes, dtype="float32")


def transform_batch(images, boxes):
    """All T transformed copies of a batch in one op: ``(B, H, W, 3)`` → ``(T·B, H, W, 3)``, transform-major.

    Outside the image (zoom-out, shift) is filled with 0, as the training augmentation's padding.

    Example:
        >>> boxes = transform_boxes(DEFAULT_TRANSFORMS)             # T = 6 transforms
        >>> tuple(transform_batch(tf.zeros((2, 8, 8, 3)), boxes).shape)
        (12, 8, 8, 3)
    """
    images = tf.convert_to_tensor(images, tf.float32)
    boxes = tf.convert_to_tensor(boxes, tf.float32)
    b, t = tf.shape(images)[0], tf.shape(boxes)[0]
    size = tf.shape(images)[1:3]
    return tf.image.crop_and_resize(images, tf.repeat(boxes, b, axis=0), tf.tile(tf.range(b), [t]), size,
                                    extrapolation_value=0.0)


def view_predictor(model, transforms: Sequence = DEFAULT_TRANSFORMS, keep_views: bool = False):
    """A compiled function: a batch of images → per model output, ``(mean over the views (B, ...), spread (B,))``,
    the spread being the standard deviation across views averaged over the output's values; with ``keep_views``,
    per model output the views' own answers, ``(T, B, ...)``.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> predict = view_predictor(model, TTA_VIEWS["flip"])
        >>> [(tuple(mean.shape), tuple(spread.shape)) for mean, spread in predict(np.zeros((3, 16, 16, 3)))]
        [((3, 2), (3,))]
        >>> kept = view_predictor(model, TTA_VIEWS["flip"], keep_views=True)
        >>> [tuple(o.shape) for o in kept(np.zeros((3, 16, 16, 3)))]
        [(2, 3, 2)]
    """
    boxes = tf.constant(transform_boxes(transforms))
    T = int(boxes.shape[0])

    @tf.function(reduce_retracing=True)
    def predict(images):
        images = tf.cast(images, tf.float32)
        outs = model(transform_batch(images, boxes), training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        b = tf.shape(images)[0]
        result = []
        for o in outs:
            o = tf.reshape(tf.cast(o, tf.float32), tf.concat([[T, b], tf.shape(o)[1:]], 0))
            result.append(o if keep_views else (tf.reduce_mean(o, 0), tf.reduce_mean(tf.math.reduce_std(o, 0), -1)))
        return result
    return predict


def predict_batches(predict, batches) -> list[np.ndarray]:
    """Per model output, the mean over the views for every image of ``batches`` (an iterable of image batches), from a
    :func:`view_predictor` ``predict``: batch by batch, concatenated (the spread is dropped); from one made with
    ``keep_views``, the views' own answers, ``(T, images, ...)``.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> predict = view_predictor(model, TTA_VIEWS["flip"])
        >>> [o.shape for o in predict_batches(predict, [np.zeros((3, 16, 16, 3)), np.zeros((2, 16, 16, 3))])]
        [(5, 2)]
        >>> [o.shape for o in predict_batches(view_predictor(model, TTA_VIEWS["flip"], keep_views=True),
        ...                                   [np.zeros((3, 16, 16, 3)), np.zeros((2, 16, 16, 3))])]
        [(2, 5, 2)]
    """
    per_batch, axis = [], 0
    for x in batches:
        outs = predict(x)
        axis = 0 if isinstance(outs[0], tuple) else 1  # (mean, spread) pairs, or the views kept: (T, B, ...)
        per_batch.append([(o[0] if axis == 0 else o).numpy() for o in outs])
    return [np.concatenate(parts, axis=axis) for parts in zip(*per_batch)]
