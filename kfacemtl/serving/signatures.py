"""The SavedModel's signatures: encoded images (checked before decoding) or float tensors in, named outputs per
task out.

Example:
    >>> SIGNATURES
    ('serving_default', 'serving_float')
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from kfacemtl.data.images import MAX_PIXELS, decode_image, decode_rgb, header_size, png_or_jpeg, resize_batch
from kfacemtl.models import model_tasks
from kfacemtl.models.answers import task_outputs


MAX_BYTES = 20 * 2 ** 20  # 20 MiB per encoded image


# a batch of one size up to this many pixels per image is resized at once (pipeline.resize_batch): beyond it, on a
# CPU the dense products cost more than TF's own resize of each image, and the float32 batch grows large
RESIZE_AT_ONCE_MAX_PIXELS = 224 * 224


SIGNATURES = ("serving_default", "serving_float")


def check_images(images, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
    """Checks a batch of encoded images (DT_STRING ``[n]``) before anything is decoded; returns the ``(width,
    height)`` each header declares, int64 ``[n, 2]``.

    In this order, over the whole batch: the byte length (not empty, at most ``max_bytes``), the format (JPEG or
    PNG magic bytes), the header (a PNG's IHDR, a JPEG's frame header), the declared size (more than 0, at most
    ``max_pixels``). Bad input raises ``tf.errors.InvalidArgumentError`` whose message names the first image
    (its index in the batch) that fails the first failing check, e.g. ``assertion failed: [image] [2] [is empty
    (0 bytes)]``; a JPEG without a frame header fails with TF's own message (``Invalid JPEG data``).

    Example:
        >>> png = tf.io.encode_png(tf.zeros((20, 30, 3), tf.uint8))
        >>> check_images(tf.stack([png, png])).numpy().tolist()
        [[30, 20], [30, 20]]
        >>> try:  # as in a signature (a graph; eagerly, the message reads differently)
        ...     tf.function(check_images)(tf.constant([png.numpy(), b"not an image"]))
        ... except tf.errors.InvalidArgumentError as e:
        ...     print(e.message.split("assertion failed: ")[1][:51])
        [image] [1] [is not a JPEG or PNG (bad magic bytes)
    """
    n = tf.strings.length(images)
    is_png, is_jpeg = png_or_jpeg(images)
    passed = _checked([(n > 0, lambda i: ["is empty (0 bytes)"]),
                       (n <= max_bytes, lambda i: ["has", n[i], f"bytes; the limit is {max_bytes}"]),
                       # the first bytes as numbers: raw bytes in an error message are not valid UTF-8 (the client
                       # could not even read the error; found by the property test of the bytes signature)
                       (is_png | is_jpeg, lambda i: [
                           "is not a JPEG or PNG (bad magic bytes); first bytes:",
                           tf.cast(tf.io.decode_raw(tf.strings.substr(images[i], 0, 8), tf.uint8), tf.int32)]),
                       (~is_png | (n >= 24), lambda i: ["is a PNG shorter than its header"])])
    with tf.control_dependencies([passed]):  # the headers are read only from images that passed
        wh = tf.map_fn(lambda a: header_size(a[0], a[1]), (images, is_png),
                       fn_output_signature=tf.TensorSpec([2], tf.int64))
    pixels = wh[:, 0] * wh[:, 1]

    def size(i):
        return [tf.strings.as_string(wh[i, 0]), "x", tf.strings.as_string(wh[i, 1])]

    limit = f"pixels; the limit is {max_pixels} pixels"
    passed = _checked([(pixels <= max_pixels, lambda i: ["declares", *size(i), limit]),
                       (pixels > 0, lambda i: ["declares an empty image:", *size(i)])])
    with tf.control_dependencies([passed]):
        return tf.identity(wh)


def _checked(checks):
    """Asserts ``[(ok, message), ...]`` in order, ``ok`` a boolean per image and ``message(i)`` what the error
    says of image ``i``, the first one failing; the messages are built only when a check fails (one ``tf.cond``),
    so a batch that passes runs a handful of ops. Returns a boolean tensor to depend on."""
    def fail():
        done = []
        for ok, message in checks:
            i = tf.argmin(tf.cast(ok, tf.int32), output_type=tf.int32)
            with tf.control_dependencies(done):
                done.append(tf.debugging.Assert(tf.reduce_all(ok), ["image", i, *message(i)]))
        with tf.control_dependencies(done):
            return tf.constant(False)

    return tf.cond(tf.reduce_all(tf.stack([ok for ok, _ in checks])), lambda: tf.constant(True), fail)


def decode_batch(images, image_size=(64, 64), max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
    """A batch of encoded images (DT_STRING ``[n]``) → float32 ``[n, H, W, 3]`` in [0, 1]: what the bytes
    signature does before the network.

    :func:`check_images` first (nothing is decoded when any image is bad), then the images are decoded on the
    host's CPU (JPEG/PNG decoding has only CPU kernels), up to 16 at a time, with the training pipeline's ops. When
    they all have one size (a client sending face crops from one camera, say) of at most
    ``RESIZE_AT_ONCE_MAX_PIXELS`` (224 × 224), the decoded ``uint8`` batch is resized by
    :func:`kfacemtl.data.images.resize_batch`, on the GPU where there is one (and on all CPU cores otherwise); other
    images are each decoded and resized by :func:`kfacemtl.data.images.decode_image` as in training.

    Example:
        >>> png = tf.io.encode_png(tf.zeros((20, 30, 3), tf.uint8))
        >>> tuple(decode_batch(tf.stack([png, png]), (16, 16)).shape)
        (2, 16, 16, 3)
    """
    h, w = image_size
    nonempty = tf.debugging.Assert(tf.size(images) > 0, ["empty batch: send at least one image"])
    with tf.control_dependencies([nonempty]), tf.device("/CPU:0"):
        wh = check_images(images, max_bytes, max_pixels)
        one_size = ((tf.size(images) > 1) & tf.reduce_all(tf.equal(wh, wh[:1]))
                    & (tf.reduce_max(wh[:, 0] * wh[:, 1]) <= RESIZE_AT_ONCE_MAX_PIXELS))

    def each(decode, spec):  # a loop on the CPU: a body that moved between CPU and GPU would copy each image both ways
        with tf.device("/CPU:0"):
            return tf.map_fn(decode, images, fn_output_signature=spec, parallel_iterations=16)

    def alone(data):  # as in training
        return decode_image(data, (h, w))

    def one():  # a single image: no loop
        with tf.device("/CPU:0"):
            return alone(images[0])[None]

    out = tf.cond(one_size, lambda: resize_batch(each(decode_rgb, tf.TensorSpec([None, None, 3], tf.uint8)), (h, w)),
                  lambda: tf.cond(tf.size(images) == 1, one, lambda: each(alone, tf.TensorSpec((h, w, 3), tf.float32))))
    out.set_shape([None, h, w, 3])
    return out


def serving_functions(model, image_size=None, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                      jit_compile: bool = False) -> dict:
    """``{signature name: (fn, input_signature)}`` for a kfacemtl model (used by :func:`export_model`).

    Both signatures copy the heads' outputs to the host once, packed in one matrix, and make the outputs there
    (labels, class names, AU names). ``jit_compile=True`` compiles the network's forward pass with XLA (the
    outputs and the decoding stay outside): on a GPU one call is then a few fused kernels instead of hundreds of
    small ones (see docs/benchmarks/serving.md). TF Serving's GPU build runs XLA; its CPU build needs
    ``--xla_cpu_compilation_enabled``.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                     embedding_dim=4, head_units=4)
        >>> fns = serving_functions(model)
        >>> sorted(fns), sorted(fns["serving_float"][0](tf.zeros((1, 16, 16, 3))))
        (['serving_default', 'serving_float'], ['gender_class', 'gender_label', 'gender_probs'])
    """
    tasks = model_tasks(model)
    h, w = image_size or model.input_shape[1:3]
    shapes = [tuple(o.shape[1:]) for o in model.outputs]

    def packed(images):  # every head's output in one float32 matrix: one copy to the host per call
        outs = model(images, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return tf.concat([tf.reshape(tf.cast(o, tf.float32), [tf.shape(images)[0], -1]) for o in outs], axis=1)

    forward = tf.function(packed, jit_compile=True) if jit_compile else packed

    def from_float(images):
        matrix = forward(images)
        # the outputs are made on the host from one copy of the heads' outputs (labels, class names, AU names: a
        # GPU would otherwise copy each head's values out separately, several times for a class task)
        with tf.device("/CPU:0"):
            parts = tf.split(tf.identity(matrix), [int(np.prod(shape)) for shape in shapes], axis=1)
            return task_outputs(tasks, [tf.reshape(p, [-1, *shape]) for p, shape in zip(parts, shapes)],
                                getattr(model, "intervals", None))

    def from_bytes(images):
        return from_float(decode_batch(images, (h, w), max_bytes, max_pixels))

    return {"serving_default": (from_bytes, [tf.TensorSpec([None], tf.string, name="images")]),
            "serving_float": (from_float, [tf.TensorSpec([None, h, w, 3], tf.float32, name="images")])}
