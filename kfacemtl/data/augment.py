"""The training augmentation: flip, shift, brightness and contrast, drawn per image, computed per batch; zoom and
rotation on request (``training.augment: {zoom: 0.1, rotate: 10}``).

Example:
    >>> import tensorflow as tf
    >>> out = augment_batch(tf.fill((2, 8, 8, 3), 0.5), tf.constant([0, 1]))
    >>> tuple(out.shape), bool(tf.reduce_all((out >= 0) & (out <= 1)))
    ((2, 8, 8, 3), True)
"""
from __future__ import annotations

import math
from typing import Mapping

import tensorflow as tf

#: what ``training.augment`` may add to the light augmentation, each off (0) by default: ``zoom``, the largest zoom
#: as a fraction (0.1: drawn from ×1/1.1 to ×1.1, uniform in the log), and ``rotate``, the largest turn in degrees
GEOMETRIC = {"zoom": (0.0, 0.5), "rotate": (0.0, 45.0)}


def augment_options(value) -> dict | None:
    """``training.augment`` as :func:`augment_batch`'s keyword arguments: ``None`` (no augmentation) for false,
    ``{}`` (the light augmentation) for true, and for a mapping the light augmentation with zoom and rotation
    (:data:`GEOMETRIC`).

    Example:
        >>> augment_options(True), augment_options(False), augment_options({"zoom": 0.1})
        ({}, None, {'zoom': 0.1, 'rotate': 0.0})
        >>> augment_options({"rotate": 90})
        Traceback (most recent call last):
        ...
        ValueError: rotate: expected a number of degrees in [0, 45], got 90
    """
    if isinstance(value, bool):
        return {} if value else None
    if not isinstance(value, Mapping):
        raise TypeError(f"expected true, false or a mapping of {sorted(GEOMETRIC)}, got {value!r}")
    unknown = sorted(set(value) - set(GEOMETRIC))
    if unknown:
        raise ValueError(f"{unknown[0]}: unknown key (known keys: {sorted(GEOMETRIC)})")
    options = {}
    for key, (low, high) in GEOMETRIC.items():
        v = value.get(key, 0.0)
        unit = "fraction" if key == "zoom" else "number of degrees"
        number = not isinstance(v, bool) and isinstance(v, (int, float))
        if not number or not low <= v <= high or (key == "zoom" and v == high):
            interval = f"[{low:g}, {high:g}{')' if key == 'zoom' else ']'}"
            raise ValueError(f"{key}: expected a {unit} in {interval}, got {v!r}")
        options[key] = float(v)
    return options


def augment_image(image, seed):
    """Light training augmentation of one image: :func:`augment_batch` on a batch of one.

    Args:
        image: float32 (H, W, 3) in [0, 1].
        seed: a stateless seed, shape (2,) int.

    Example:
        >>> out = augment_image(tf.fill((8, 8, 3), 0.5), tf.constant([0, 7]))
        >>> tuple(out.shape), bool(tf.reduce_all((out >= 0) & (out <= 1)))
        ((8, 8, 3), True)
    """
    return augment_batch(image[None], seed)[0]


def augment_batch(images, seed, compiled: bool = False, zoom: float = 0.0, rotate: float = 0.0):
    """Light training augmentation in TF ops, drawn per image, computed for the whole batch at once: flip, shift
    (as if padded with black and cropped at a random offset of up to ``max(2, H/16)`` pixels), brightness
    (± 0.12), contrast (× 0.8 to 1.25 around each channel's mean), clipped to [0, 1]. The same distributions as
    TensorFlow's ``stateless_random_*`` image ops, in a few batched ops: the flip and the shift are two
    gathers (rows, then columns, read from the padded image in flipped order where drawn), brightness and
    contrast one affine map, ``factor · x + (1 − factor) · mean + brightness``. With ``zoom`` or ``rotate``, each
    shifted image is also zoomed and turned about its centre (:func:`warp_batch`) before brightness and contrast;
    without, the images are those of the light augmentation alone, to the last bit.

    Args:
        images: float32 (B, H, W, 3) in [0, 1], or uint8 (B, H, W, 3): the flip and the shift then move bytes, and
            the images become float32 in [0, 1] before brightness and contrast (the same numbers as converting
            first, for a quarter of the memory traffic).
        seed: a stateless seed, shape (2,) int.
        compiled: apply the drawn transforms with XLA (the draws themselves are not compiled, so they are the same
            numbers): one fused loop instead of a dozen passes over the batch, a third of the CPU time (0.59 against
            1.73 ms per batch of 64 at 48 px on one core here). The input pipeline uses it.
        zoom: the largest zoom as a fraction (:data:`GEOMETRIC`): each image's drawn from ``1/(1+zoom)`` to
            ``1 + zoom``, uniform in the log (> 1 zooms in).
        rotate: the largest turn in degrees, each image's drawn uniformly from ``-rotate`` to ``rotate``.

    Example:
        >>> out = augment_batch(tf.zeros((2, 8, 8, 3)), tf.constant([0, 1]))
        >>> tuple(out.shape), float(tf.reduce_max(out)) <= 1.0
        ((2, 8, 8, 3), True)
    """
    b = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 5)
    pad = _shift_pad(images.shape[1])
    draws = (tf.random.stateless_uniform([b], seeds[0]) < 0.5,  # flip
             tf.random.stateless_uniform([b], seeds[1], 0, 2 * pad + 1, dtype=tf.int32),  # dy
             tf.random.stateless_uniform([b], seeds[2], 0, 2 * pad + 1, dtype=tf.int32),  # dx
             tf.random.stateless_uniform([b, 1, 1, 1], seeds[3], -0.12, 0.12),  # brightness
             tf.random.stateless_uniform([b, 1, 1, 1], seeds[4], 0.8, 1.25))  # contrast factor
    if zoom or rotate:  # drawn from a seed of their own, so the light augmentation's draws stay as they were
        more = tf.random.experimental.stateless_split(tf.random.experimental.stateless_fold_in(seed, 5), 2)
        log_zoom = math.log1p(zoom)
        draws += (tf.exp(tf.random.stateless_uniform([b, 1, 1], more[0], -log_zoom, log_zoom)),
                  tf.random.stateless_uniform([b, 1, 1], more[1], -rotate, rotate) * (math.pi / 180))
    return (_apply_augmentation_xla if compiled else _apply_augmentation)(images, *draws)


def warp_batch(images, zoom, angle):
    """Each image of ``images`` (float, ``(B, H, W, C)``) zoomed by ``zoom`` (> 1: in) and turned by ``angle``
    radians about its centre (each ``(B, 1, 1)``), sampled bilinearly, black outside the image: gathers and
    arithmetic only, so that it compiles with XLA (``keras.ops.image.affine_transform``'s TensorFlow op,
    ``ImageProjectiveTransformV3``, has no XLA kernel) and runs inside a compiled train step.

    Example:
        >>> images = tf.reshape(tf.range(9, dtype=tf.float32), (1, 3, 3, 1))
        >>> turned = warp_batch(images, tf.ones((1, 1, 1)), tf.fill((1, 1, 1), math.pi / 2))
        >>> tf.round(turned[0, ..., 0]).numpy().astype(int).tolist()      # a quarter turn
        [[2, 5, 8], [1, 4, 7], [0, 3, 6]]
    """
    h, w = images.shape[1], images.shape[2]
    cy, cx = (h - 1) / 2, (w - 1) / 2
    y, x = tf.meshgrid(tf.range(h, dtype=tf.float32) - cy, tf.range(w, dtype=tf.float32) - cx, indexing="ij")
    cos, sin = tf.cos(angle) / zoom, tf.sin(angle) / zoom
    # output pixel (y, x), from the centre, reads the input at the point turned by angle and scaled by 1 / zoom
    src_x, src_y = cos * x - sin * y + cx, sin * x + cos * y + cy
    x0, y0 = tf.floor(src_x), tf.floor(src_y)
    out = tf.zeros_like(images)
    for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
        weight = (1 - tf.abs(src_x - xi)) * (1 - tf.abs(src_y - yi))
        weight *= tf.cast((xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1), tf.float32)
        at = tf.stack([tf.clip_by_value(tf.cast(yi, tf.int32), 0, h - 1),
                       tf.clip_by_value(tf.cast(xi, tf.int32), 0, w - 1)], -1)
        out += tf.gather_nd(images, at, batch_dims=1) * weight[..., None]
    return out


def _shift_pad(height: int) -> int:
    """The augmentation's largest shift in pixels, for images ``height`` pixels high."""
    return max(2, height // 16)


def _apply_augmentation(images, flip, dy, dx, brightness, factor, zoom=None, angle=None):
    """:func:`augment_batch`'s transforms, given its draws (``zoom`` and ``angle`` only where drawn)."""
    h, w = images.shape[1], images.shape[2]
    pad = _shift_pad(h)
    # output pixel (y, x) is pixel (y + dy, x + dx) of the padded image, flipped first when drawn: as the padding is
    # symmetric, the flipped padded image's column c is the padded image's column (w + 2·pad − 1 − c)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    cols = dx[:, None] + tf.range(w)[None]
    cols = tf.where(flip[:, None], (w + 2 * pad - 1) - cols, cols)
    images = tf.gather(padded, dy[:, None] + tf.range(h)[None], axis=1, batch_dims=1)
    images = tf.image.convert_image_dtype(tf.gather(images, cols, axis=2, batch_dims=1), tf.float32)
    if zoom is not None:
        images = warp_batch(images, zoom, angle)
    # contrast around the mean of the brightened image: (x + c − (m + c)) · f + m + c = f · x + (1 − f) · m + c
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.clip_by_value(images * factor + ((1.0 - factor) * mean + brightness), 0.0, 1.0)


_apply_augmentation_xla = tf.function(_apply_augmentation, jit_compile=True)
