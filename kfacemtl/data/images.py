"""Images from bytes to the model's input: decode, gray/RGBA to RGB, resize, scale to [0, 1], in TF ops.

Training and serving run these same ops, so a served model sees exactly what training saw. Headers are read
before decoding, so an image declaring more than ``MAX_PIXELS`` is refused before it is decoded.

Example:
    >>> import tensorflow as tf
    >>> png = tf.io.encode_png(tf.zeros((20, 30, 1), tf.uint8))
    >>> tuple(decode_image(png, (16, 16)).shape), declared_size(png).numpy().tolist()
    ((16, 16, 3), [30, 20])
"""
from __future__ import annotations

import tensorflow as tf


def preprocess_image(image, image_size=(64, 64)):
    """Decoded ``uint8`` image (H, W, 1|2|3|4), or a batch of them (B, H, W, C), → float32 ``image_size`` RGB in
    [0, 1].

    Uses TF ops only (gray → RGB, RGBA → RGB, bilinear resize with antialiasing); each image of a batch comes out
    as it would alone.

    Example:
        >>> gray = tf.zeros((48, 40, 1), tf.uint8)
        >>> tuple(preprocess_image(gray, (32, 32)).shape)
        (32, 32, 3)
    """
    image = tf.image.convert_image_dtype(to_rgb(image), tf.float32)
    if tuple(image.shape[-3:-1]) == tuple(image_size):  # already that size (the training cache): nothing to resize
        return image
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    image.set_shape(image.shape[:-3].concatenate(tuple(image_size) + (3,)))
    return tf.clip_by_value(image, 0.0, 1.0)


def _resize_weights(n_in, n_out):
    """``(n_out, n_in)`` float32: the weights of the antialiased bilinear resize (``tf.image.resize(...,
    antialias=True)``: TF's ScaleAndTranslate with its triangle kernel) along one axis, rows summing to 1, computed
    in the kernel's own float32 steps."""
    n_in, n_out = tf.cast(n_in, tf.float32), tf.cast(n_out, tf.float32)
    step = 1.0 / (n_out / n_in)  # the kernel's inverse scale
    width = tf.maximum(step, 1.0)  # the triangle widens when downsampling (the antialiasing)
    centre = (tf.range(n_out) + 0.5) * step
    w = tf.nn.relu(1.0 - tf.abs((tf.range(n_in)[None, :] + 0.5 - centre[:, None]) * (1.0 / width)))
    return w * (1.0 / tf.reduce_sum(w, axis=1, keepdims=True))


def resize_batch(images, image_size=(64, 64)):
    """A batch of equal-size ``uint8`` RGB images (B, H, W, 3) → float32 ``image_size`` in [0, 1]: what
    :func:`preprocess_image` does to each, within 1e-6 (float rounding), as two matrix products.

    TF's antialiased resize (ScaleAndTranslate) has only a CPU kernel, one thread per call; these products run
    on a GPU where there is one, on all cores of a CPU otherwise. The bytes signature uses it for a batch whose
    images all have one size (:func:`kfacemtl.serving.signatures.decode_batch`). On a GPU with TensorFloat-32 (TF's default
    from NVIDIA Ampere on) the products, like the network's own convolutions there, round their inputs to 10-bit
    mantissas: expect up to 8e-4 instead of 1e-6 (TF32 emulated on a CPU: at most a fifth of a uint8 step, 1e-4
    on average; the training cache rounds to whole steps); ``NVIDIA_TF32_OVERRIDE=0`` in the server's environment
    makes them float32.

    Example:
        >>> x = tf.random.stateless_uniform((2, 40, 30, 3), (1, 2), maxval=256, dtype=tf.int32)
        >>> x = tf.cast(x, tf.uint8)
        >>> a, b = resize_batch(x, (16, 16)), preprocess_image(x, (16, 16))
        >>> tuple(a.shape), float(tf.reduce_max(tf.abs(a - b))) < 1e-6
        ((2, 16, 16, 3), True)
    """
    h, w = image_size
    n, in_h, in_w = tf.unstack(tf.shape(images)[:3])
    with tf.device("/CPU:0"):  # a few small ops, on the host
        rows, cols = _resize_weights(in_h, h), _resize_weights(in_w, w)
    x = tf.reshape(tf.cast(images, tf.float32), [n, in_h, in_w * 3])
    x = tf.matmul(rows, x)  # (h, H) @ (B, H, W·3) → (B, h, W·3)
    x = tf.transpose(tf.reshape(x, [n * h, in_w, 3]), [0, 2, 1])  # (B·h, 3, W)
    x = tf.matmul(tf.reshape(x, [-1, in_w]), cols, transpose_b=True)  # (B·h·3, W) @ (W, w)
    x = tf.transpose(tf.reshape(x, [n, h, 3, w]), [0, 1, 3, 2]) * (1.0 / 255.0)
    x.set_shape([None, h, w, 3])
    return tf.clip_by_value(x, 0.0, 1.0)


def to_rgb(image):
    """Gray (+ alpha) → RGB, RGBA → RGB, in the image's own dtype.

    Example:
        >>> tuple(to_rgb(tf.zeros((4, 4, 2), tf.uint8)).shape)
        (4, 4, 3)
    """
    image = tf.convert_to_tensor(image)
    return tf.cond(tf.shape(image)[-1] < 3, lambda: tf.repeat(image[..., :1], 3, axis=-1),  # gray, gray + alpha
                   lambda: image[..., :3])


def decode_image(data, image_size=(64, 64)):
    """Encoded JPEG/PNG/BMP/GIF bytes → float32 ``image_size`` RGB in [0, 1].

    Example:
        >>> png = tf.io.encode_png(tf.fill((20, 30, 4), tf.constant(255, tf.uint8)))   # RGBA
        >>> img = decode_image(png, (16, 16))
        >>> tuple(img.shape), float(tf.reduce_max(img))
        ((16, 16, 3), 1.0)
    """
    image = tf.io.decode_image(data, channels=0, expand_animations=False)
    return preprocess_image(image, image_size)


def decode_rgb(data):
    """Encoded JPEG/PNG/BMP/GIF bytes → ``uint8`` RGB at the image's own size (gray → RGB, RGBA → RGB): what
    :func:`decode_image` does before it resizes.

    Example:
        >>> png = tf.io.encode_png(tf.fill((20, 30, 2), tf.constant(7, tf.uint8)))   # gray + alpha
        >>> img = decode_rgb(png)
        >>> tuple(img.shape), img.dtype.name
        ((20, 30, 3), 'uint8')
    """
    return to_rgb(tf.io.decode_image(data, channels=0, expand_animations=False))


MAX_PIXELS = 40_000_000  # declared width × height (a 12 MP photo passes; a 20000² PNG bomb does not)


def header_size(data, is_png, which=("image",)):
    """``(width, height)`` declared by a JPEG or PNG header (``is_png`` says which), read without decoding; an
    error naming ``which`` for a PNG shorter than its header or a JPEG without a frame header.

    Example:
        >>> png = tf.io.encode_png(tf.zeros((3, 5, 1), tf.uint8))
        >>> header_size(png, png_or_jpeg(png)[0]).numpy().tolist()
        [5, 3]
    """
    which = list(which)

    def png():
        check = tf.debugging.Assert(tf.strings.length(data) >= 24, which + ["is a PNG shorter than its header"])
        with tf.control_dependencies([check]):
            wh = tf.cast(tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.uint8), tf.int64)
        w = ((wh[0] * 256 + wh[1]) * 256 + wh[2]) * 256 + wh[3]
        h = ((wh[4] * 256 + wh[5]) * 256 + wh[6]) * 256 + wh[7]
        return tf.stack([w, h])

    def jpeg():
        hw = tf.cast(tf.io.extract_jpeg_shape(data), tf.int64)
        return tf.stack([hw[1], hw[0]])

    return tf.cond(is_png, png, jpeg)


def declared_size(data):
    """``(width, height)`` a PNG or JPEG declares in its header, without decoding; ``(0, 0)`` for other formats.

    Example:
        >>> png = tf.io.encode_png(tf.zeros((3, 5, 1), tf.uint8))
        >>> declared_size(png).numpy().tolist()
        [5, 3]
    """
    is_png, is_jpeg = png_or_jpeg(data)
    return tf.cond(is_png | is_jpeg, lambda: header_size(data, is_png), lambda: tf.zeros(2, tf.int64))


def png_or_jpeg(data):
    """``(is_png, is_jpeg)``: boolean tensors from the magic bytes at the start of encoded image ``data``.

    Example:
        >>> [bool(v) for v in png_or_jpeg(tf.io.encode_jpeg(tf.zeros((4, 4, 3), tf.uint8)))]
        [False, True]
    """
    return (tf.equal(tf.strings.substr(data, 0, 8), b"\x89PNG\r\n\x1a\n"),
            tf.equal(tf.strings.substr(data, 0, 3), b"\xff\xd8\xff"))
