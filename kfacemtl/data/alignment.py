"""Face alignment: a similarity transform of five landmarks onto a canonical template, then one warp per face.

A face found in a photo (its eyes, nose tip and mouth corners, :data:`LANDMARKS` order) is cut the way the training
crops were cut: the rotation, scale and shift that bring its landmarks closest (least squares) onto
:data:`TEMPLATE`, which holds where those landmarks sit, on average, in the training crops, as fractions of the crop's
width and height (so one template serves every input size). Serving and training (a source's ``align`` option) cut
faces with this same function.

Example:
    >>> import numpy as np
    >>> photo = np.zeros((200, 300, 3), np.uint8)
    >>> points = template_points((100, 100)) + [120, 40]     # a face whose landmarks sit 120 px right, 40 px down
    >>> tuple(align_faces(photo, points[None], (48, 48)).shape)
    (1, 48, 48, 3)
"""
from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

#: The five landmarks, in this order: image-left first (``left_eye`` is the eye on the left of the picture).
LANDMARKS = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")

#: Where the five landmarks sit in the training crops, as (x, y) fractions of the crop's width and height (0 and 1
#: at its edges): the medians over 1,000 training crops each of UTKFace and FER2013 (the two sources of the real
#: recipe), averaged and made left-right symmetric. ``python -m benchmarks.alignment_template`` measures them;
#: docs/guide/photos.md tells how.
TEMPLATE = np.array([[0.3073, 0.3411], [0.6927, 0.3411], [0.5000, 0.5625], [0.3359, 0.7370], [0.6641, 0.7370]],
                    np.float32)

#: At most this many output pixels per side are sampled per pixel of the crop (then averaged), so that a face
#: much larger than the crop is shrunk without aliasing.
MAX_SUPERSAMPLING = 8


def _check_points(points, name, n=None):
    points = np.asarray(points, np.float64)
    if points.ndim != 2 or points.shape[-1] != 2 or len(points) < 2 or (n is not None and len(points) != n):
        count = f"{n}" if n is not None else "at least 2"
        raise ValueError(f"{name}: expected {count} (x, y) points, an array of shape (N, 2); got shape {points.shape}")
    if not np.all(np.isfinite(points)):
        raise ValueError(f"{name}: expected finite coordinates; got {points.tolist()}")
    return points


def similarity(source, target) -> np.ndarray:
    """The 2×3 matrix of the similarity transform (rotation, uniform scale, shift; no reflection) that maps the
    ``source`` points closest, in least squares, onto ``target`` (both ``(N, 2)`` arrays of (x, y), N ≥ 2).

    Example:
        >>> src = np.array([[0, 0], [1, 0], [0, 1]], float)
        >>> m = similarity(src, 2 * src + [3, 4])               # scaled by 2, shifted by (3, 4)
        >>> (np.round(m, 6) + 0.0).tolist()
        [[2.0, 0.0, 3.0], [0.0, 2.0, 4.0]]
    """
    src, dst = _check_points(source, "source"), _check_points(target, "target", n=len(np.asarray(source)))
    # x' = a·x − b·y + tx, y' = b·x + a·y + ty: linear in (a, b, tx, ty)
    rows = np.zeros((2 * len(src), 4))
    rows[0::2] = np.c_[src[:, 0], -src[:, 1], np.ones(len(src)), np.zeros(len(src))]
    rows[1::2] = np.c_[src[:, 1], src[:, 0], np.zeros(len(src)), np.ones(len(src))]
    (a, b, tx, ty), *_ = np.linalg.lstsq(rows, dst.reshape(-1), rcond=None)
    if math.hypot(a, b) < 1e-9:
        raise ValueError(f"source: the points {src.tolist()} coincide; no transform maps them onto the target")
    return np.array([[a, -b, tx], [b, a, ty]])


def template_points(image_size, template=TEMPLATE) -> np.ndarray:
    """The template's landmarks in pixel coordinates of an ``image_size`` (height, width) crop, ``(5, 2)`` (x, y),
    pixel centres at whole numbers.

    Example:
        >>> template_points((48, 48))[0].round(2).tolist()     # the left eye of a 48×48 crop
        [14.25, 15.87]
    """
    h, w = image_size
    return np.asarray(template, np.float64) * [w, h] - 0.5


def align_faces(image, landmarks, image_size=(64, 64), template=TEMPLATE):
    """The faces of one photo cut as the training crops were: float32 ``(N, height, width, 3)`` in [0, 1].

    ``image``: the photo, ``uint8`` (H, W, 1|3|4) array or tensor; ``landmarks``: ``(N, 5, 2)`` (x, y) pixel
    coordinates in :data:`LANDMARKS` order, one row per face. Beyond the photo's edge the edge pixels are repeated.
    A face larger than the crop is sampled at up to :data:`MAX_SUPERSAMPLING`² points per output pixel and averaged
    (the way a large photo is shrunk with antialiasing for training).

    Example:
        >>> photo = np.full((100, 100, 3), 255, np.uint8)
        >>> faces = align_faces(photo, template_points((100, 100))[None], (32, 32))
        >>> faces.shape, float(faces.numpy().min())
        (TensorShape([1, 32, 32, 3]), 1.0)
    """
    landmarks = np.asarray(landmarks, np.float64)
    if landmarks.ndim != 3 or landmarks.shape[1:] != (len(LANDMARKS), 2):
        raise ValueError(f"landmarks: expected shape (faces, {len(LANDMARKS)}, 2) of (x, y) points in the order "
                         f"{', '.join(LANDMARKS)}; got shape {landmarks.shape}")
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8 or image.shape.rank != 3:
        raise ValueError(f"image: expected a uint8 array of shape (height, width, channels); got {image.dtype.name} "
                         f"of shape {tuple(image.shape)}")
    h, w = (int(v) for v in image_size)
    photo = tf.image.convert_image_dtype(_rgb(image), tf.float32)[None]
    faces = []
    for points in landmarks:
        m = similarity(template_points((h, w), template), points)  # crop pixel → photo pixel
        scale = math.hypot(m[0, 0], m[1, 0])  # photo pixels per crop pixel
        k = int(min(MAX_SUPERSAMPLING, max(1, round(scale))))
        # sample a k-times finer grid: fine pixel (u, v) sits at crop coordinates ((u + 0.5) / k − 0.5, ...)
        fine = m @ np.array([[1 / k, 0, (1 / k - 1) / 2], [0, 1 / k, (1 / k - 1) / 2], [0, 0, 1]])
        transform = tf.constant([[*fine[0], *fine[1], 0.0, 0.0]], tf.float32)
        face = tf.raw_ops.ImageProjectiveTransformV3(images=photo, transforms=transform, output_shape=[h * k, w * k],
                                                     fill_value=0.0, interpolation="BILINEAR", fill_mode="NEAREST")
        if k > 1:
            face = tf.nn.avg_pool2d(face, k, k, "VALID")
        faces.append(face)
    if not faces:
        return tf.zeros((0, h, w, 3), tf.float32)
    return tf.clip_by_value(tf.concat(faces, 0), 0.0, 1.0)


def _rgb(image):
    channels = image.shape[-1]
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    if channels != 3:
        raise ValueError(f"image: expected 1, 3 or 4 channels; got {channels}")
    return image


def landmarks_in_crop(landmarks, crop_size) -> np.ndarray:
    """Landmarks (``(N, 5, 2)`` pixel (x, y)) of faces in crops of ``crop_size`` (height, width) as fractions of
    the crop, the units of :data:`TEMPLATE` (the inverse of :func:`template_points`).

    Example:
        >>> landmarks_in_crop(template_points((48, 48))[None], (48, 48))[0, 0].round(4).tolist()
        [0.3073, 0.3411]
    """
    h, w = crop_size
    return (np.asarray(landmarks, np.float64) + 0.5) / [w, h]
