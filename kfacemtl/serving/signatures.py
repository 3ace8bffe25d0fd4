"""The SavedModel's signatures: encoded images (checked before decoding) or float tensors in, named outputs per
task out.

The bytes signature answers every image of a batch it can read and reports the others in its ``error`` output
(empty for an image that was answered), so that one bad image never fails the other images of a batch, as when TF
Serving's batching merges the requests of several clients into one.

Example:
    >>> SIGNATURES
    ('serving_default', 'serving_float')
"""
from __future__ import annotations

import numpy as np
import tensorflow as tf

from kfacemtl.data.images import MAX_PIXELS, decode_image, decode_rgb, header_size, png_or_jpeg, resize_batch
from kfacemtl.models import model_tasks
from kfacemtl.models.answers import ERROR_OUTPUT, task_outputs
from kfacemtl.models.views import transform_batch, transform_boxes, tta_views


MAX_BYTES = 20 * 2 ** 20  # 20 MiB per encoded image


# a batch of one size up to this many pixels per image is resized at once (pipeline.resize_batch): beyond it, on a
# CPU the dense products cost more than TF's own resize of each image, and the float32 batch grows large
RESIZE_AT_ONCE_MAX_PIXELS = 224 * 224


SIGNATURES = ("serving_default", "serving_float")

NOT_DECODED = "could not be decoded (corrupt or truncated image data)"


def _first_bytes(images, n: int = 8):
    """The first ``n`` bytes of each image as numbers (``"137 80 78 71"``): raw bytes in a message are not valid
    UTF-8, and a client could not even read the error (found by the property test of the bytes signature)."""
    chars = tf.strings.bytes_split(tf.strings.substr(images, 0, n))
    values = tf.io.decode_raw(chars.flat_values, tf.uint8)[:, 0]
    numbers = chars.with_flat_values(tf.strings.as_string(tf.cast(values, tf.int32)))
    return tf.strings.reduce_join(numbers, axis=-1, separator=" ")


def _first_failure(checks, n):
    """``[(ok, message), ...]`` (``ok`` a boolean per image, ``message`` a string per image or one string) → each
    image's message of its first failing check, ``""`` where all pass."""
    error = tf.fill([n], "")
    for ok, message in reversed(checks):
        error = tf.where(ok, error, message)
    return error


def precheck_images(images, max_bytes: int = MAX_BYTES):
    """What can be told of each encoded image (DT_STRING ``[n]``) from its bytes alone, before any header is
    read: its status, ``""`` when it may be read on, or the first of: empty, more than ``max_bytes``, not a JPEG or
    PNG (magic bytes), a PNG shorter than its header. Vectorised; never raises.

    Example:
        >>> png = tf.io.encode_png(tf.zeros((20, 30, 3), tf.uint8))
        >>> [e.decode() for e in precheck_images(tf.stack([png, b"", b"GIF89a"])).numpy()]
        ['', 'is empty (0 bytes)', 'is not a JPEG or PNG (bad magic bytes); first bytes: 71 73 70 56 57 97']
    """
    n = tf.strings.length(images)
    is_png, is_jpeg = png_or_jpeg(images)
    too_big = tf.strings.join(["has ", tf.strings.as_string(n), f" bytes; the limit is {max_bytes}"])
    not_image = tf.strings.join(["is not a JPEG or PNG (bad magic bytes); first bytes: ", _first_bytes(images)])
    return _first_failure([(n > 0, "is empty (0 bytes)"), (n <= max_bytes, too_big),
                           (is_png | is_jpeg, not_image), (~is_png | (n >= 24), "is a PNG shorter than its header")],
                          tf.size(images))


def _each_readable(fn, images, keep, spec, parallel: int = 16):
    """``fn`` over the images where ``keep``, skipping those where it fails (``tf.data``'s ``ignore_errors``: a
    graph has no other way to go on after a failing decode) → ``(done [n] bool, values [n, ...])``, zeros where
    not done. The CPU runs up to ``parallel`` images at a time, in order. When every image is kept and done (a
    batch without a bad image), nothing is gathered or scattered."""
    n = tf.size(images)
    every = tf.reduce_all(keep)
    index = tf.cond(every, lambda: tf.range(n), lambda: tf.cast(tf.where(keep)[:, 0], tf.int32))
    with tf.device("/CPU:0"):
        kept = tf.cond(every, lambda: images, lambda: tf.gather(images, index))
        ds = tf.data.Dataset.from_tensor_slices((index, kept))
        in_parallel = {"num_parallel_calls": parallel, "deterministic": True} if parallel > 1 else {}
        ds = ds.map(lambda i, data: (i, fn(data)), **in_parallel).ignore_errors()
        empty = [0] + [d or 0 for d in spec.shape]
        nothing = tf.data.Dataset.from_tensors((tf.zeros([0], tf.int32), tf.zeros(empty, spec.dtype)))
        done, values = ds.batch(tf.cast(tf.maximum(n, 1), tf.int64)).concatenate(nothing).take(1).get_single_element()

    def scattered():
        shape = tf.concat([[n], tf.shape(values)[1:]], axis=0)
        return (tf.scatter_nd(done[:, None], tf.ones_like(done, tf.bool), [n]),
                tf.scatter_nd(done[:, None], values, shape))

    return tf.cond(tf.equal(tf.size(done), n), lambda: (tf.fill([n], True), values), scattered)


# the start-of-frame markers (SOF0-3, 5-7, 9-11, 13-15) whose segment holds a JPEG's height and width
_SOF_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)


def jpeg_frame_sizes(images, which, hops: int = 64):
    """``(found [n], (width, height) [n, 2])``: each JPEG's size (where ``which``), read from its frame header by
    walking its marker segments from the start of the file, for the whole batch at once (no per-image loop).
    ``found`` is False where the walk ends before a frame header (a malformed file, fill bytes, more than ``hops``
    segments): :func:`check_images` then asks TF's JPEG reader.

    Example:
        >>> jpeg = tf.io.encode_jpeg(tf.zeros((20, 30, 3), tf.uint8))
        >>> found, wh = jpeg_frame_sizes(tf.stack([jpeg, b"\\xff\\xd8\\xff\\x00"]), tf.constant([True, True]))
        >>> found.numpy().tolist(), wh.numpy().tolist()
        ([True, False], [[30, 20], [0, 0]])
    """
    padded = tf.strings.join([tf.where(which, images, b""), b"\0" * 9])  # 9 bytes readable past every end
    length = tf.strings.length(padded) - 9
    n = tf.size(images)

    def hop(i, pos, found, wh, walking):
        head = tf.cast(tf.io.decode_raw(tf.strings.substr(padded, pos, tf.ones_like(pos) * 9), tf.uint8), tf.int64)  # [n, 9]
        marker = tf.equal(head[:, 0], 0xFF)
        frame = marker & tf.reduce_any(tf.equal(head[:, 1:2], tf.constant(_SOF_MARKERS, tf.int64)), axis=1)
        here = walking & frame
        wh = tf.where(here[:, None], tf.stack([head[:, 7] * 256 + head[:, 8], head[:, 5] * 256 + head[:, 6]], 1), wh)
        step = head[:, 2] * 256 + head[:, 3]
        after = pos + 2 + tf.cast(step, tf.int32)
        walking = walking & marker & ~frame & (step >= 2) & (after <= length)
        return i + 1, tf.where(walking, after, pos), found | here, wh, walking

    start = (tf.constant(0), tf.where(which, 2, 0), tf.zeros([n], tf.bool), tf.zeros([n, 2], tf.int64), which)
    _, _, found, wh, _ = tf.while_loop(lambda i, pos, found, wh, walking: (i < hops) & tf.reduce_any(walking),
                                       hop, start)
    return found, wh


def check_images(images, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
    """Checks a batch of encoded images (DT_STRING ``[n]``) before anything is decoded → ``(error [n], (width,
    height) [n, 2])``: each image's status (``""`` when it may be decoded) and the size its header declares.

    In this order: the byte length (not empty, at most ``max_bytes``), the format (JPEG or PNG magic bytes), the
    header (a PNG's IHDR, a JPEG's frame header: ``Invalid JPEG data`` without one), the declared size (more than
    0, at most ``max_pixels``). Never raises: a bad image is named by its status, e.g. ``is empty (0 bytes)``.

    Example:
        >>> png = tf.io.encode_png(tf.zeros((20, 30, 3), tf.uint8))
        >>> error, wh = check_images(tf.stack([png, b"\\xff\\xd8\\xff not really a JPEG"]))
        >>> [e.decode() for e in error.numpy()], wh.numpy().tolist()
        (['', 'is not a valid JPEG (Invalid JPEG data: no frame header)'], [[30, 20], [0, 0]])
    """
    error = precheck_images(images, max_bytes)
    is_png, _ = png_or_jpeg(images)
    png = is_png & tf.equal(error, "")
    jpeg = ~is_png & tf.equal(error, "")
    # a PNG's IHDR is at a fixed place (read for the whole batch at once); a JPEG's frame header is found by TF's
    # JPEG reader, which fails on a JPEG without one
    ihdr = tf.strings.substr(tf.where(png, images, b"\0" * 24), 16, 8)
    png_wh = tf.cast(tf.io.decode_raw(ihdr, tf.uint8, little_endian=False), tf.int64) @ tf.constant(
        [[2 ** 24, 0], [2 ** 16, 0], [2 ** 8, 0], [1, 0], [0, 2 ** 24], [0, 2 ** 16], [0, 2 ** 8], [0, 1]], tf.int64)
    found, walked_wh = jpeg_frame_sizes(images, jpeg)
    unsure = jpeg & ~found  # a walk that ended elsewhere: TF's JPEG reader decides
    read, read_wh = tf.cond(
        tf.reduce_any(unsure),
        lambda: _each_readable(lambda data: header_size(data, tf.constant(False)), images, unsure,
                               tf.TensorSpec([2], tf.int64), parallel=1),
        lambda: (tf.zeros_like(jpeg), tf.zeros_like(png_wh)))
    read = png | found | read
    wh = tf.where(png[:, None], png_wh, tf.where(found[:, None], walked_wh, read_wh))
    pixels = wh[:, 0] * wh[:, 1]
    size = tf.strings.join([tf.strings.as_string(wh[:, 0]), " x ", tf.strings.as_string(wh[:, 1])])
    return _first_failure([(tf.equal(error, ""), error),
                           (read, "is not a valid JPEG (Invalid JPEG data: no frame header)"),
                           (pixels <= max_pixels,
                            tf.strings.join(["declares ", size, f" pixels; the limit is {max_pixels} pixels"])),
                           (pixels > 0, tf.strings.join(["declares an empty image: ", size]))], tf.size(images)), wh


def decode_batch(images, image_size=(64, 64), max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
    """A batch of encoded images (DT_STRING ``[n]``) → ``(float32 [n, H, W, 3] in [0, 1], error [n])``: what the
    bytes signature does before the network. ``error`` is each image's status, ``""`` for an image that was
    decoded, otherwise why not (:func:`check_images`, or ``could not be decoded`` for corrupt or truncated
    data); such an image's row is zeros.

    :func:`check_images` first (an image that fails a check is never decoded), then the images are decoded on the
    host's CPU (JPEG/PNG decoding has only CPU kernels), up to 16 at a time, with the training pipeline's ops. When
    they all have one size (a client sending face crops from one camera, say) of at most
    ``RESIZE_AT_ONCE_MAX_PIXELS`` (224 × 224), the decoded ``uint8`` batch is resized by
    :func:`kfacemtl.data.images.resize_batch`, on the GPU where there is one (and on all CPU cores otherwise); other
    images are each decoded and resized by :func:`kfacemtl.data.images.decode_image` as in training. An empty
    batch is an error (``InvalidArgumentError``): there is nothing to answer.

    Example:
        >>> png = tf.io.encode_png(tf.zeros((20, 30, 3), tf.uint8))
        >>> x, error = decode_batch(tf.stack([png, png, b""]), (16, 16))
        >>> tuple(x.shape), [e.decode() for e in error.numpy()]
        ((3, 16, 16, 3), ['', '', 'is empty (0 bytes)'])
    """
    h, w = image_size
    nonempty = tf.debugging.Assert(tf.size(images) > 0, ["empty batch: send at least one image"])
    with tf.control_dependencies([nonempty]), tf.device("/CPU:0"):
        error, wh = check_images(images, max_bytes, max_pixels)
        ok = tf.equal(error, "")
        sizes = tf.boolean_mask(wh, ok)
        one_size = ((tf.shape(sizes)[0] > 1) & tf.reduce_all(tf.equal(sizes, sizes[:1]))
                    & (tf.reduce_max(sizes[:, 0] * sizes[:, 1]) <= RESIZE_AT_ONCE_MAX_PIXELS))

    def at_once():  # decoded as they are, resized together
        done, raw = _each_readable(decode_rgb, images, ok, tf.TensorSpec([None, None, 3], tf.uint8))
        return done, resize_batch(raw, (h, w))

    def each():  # as in training
        return _each_readable(lambda data: decode_image(data, (h, w)), images, ok, tf.TensorSpec((h, w, 3), tf.float32))

    done, out = tf.cond(one_size, at_once, each)
    out.set_shape([None, h, w, 3])
    error = tf.where(ok & ~done, NOT_DECODED, error)
    return out, error


def _blank_failed(outputs: dict, error) -> dict:
    """Zeros (empty strings) in the rows of the images that were not answered, and the ``error`` output."""
    failed = tf.not_equal(error, "")
    blank = {}
    for name, value in outputs.items():
        rows = tf.reshape(failed, [-1] + [1] * (len(value.shape) - 1))
        blank[name] = tf.where(rows, tf.zeros_like(value), value)
    blank[ERROR_OUTPUT] = error
    return blank


def serving_functions(model, image_size=None, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                      jit_compile: bool = False, tta: str | None = None) -> dict:
    """``{signature name: (fn, input_signature)}`` for a kfacemtl model (used by :func:`export_model`).

    Both signatures copy the heads' outputs to the host once, packed in one matrix, and make the outputs there
    (labels, class names, AU names). ``jit_compile=True`` compiles the network's forward pass with XLA (the
    outputs and the decoding stay outside): on a GPU one call is then a few fused kernels instead of hundreds of
    small ones (see docs/benchmarks/serving.md). TF Serving's GPU build runs XLA; its CPU build needs
    ``--xla_cpu_compilation_enabled``. ``tta`` (``"flip"`` or ``"six"``, :data:`kfacemtl.models.views.TTA_VIEWS`)
    averages every answer over views of each face, as ``kfacemtl evaluate --tta`` does, for as many forward passes.

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
    views = tta_views(tta)
    boxes = None if views is None else tf.constant(transform_boxes(views))

    def packed(images):  # every head's output in one float32 matrix: one copy to the host per call
        outs = model(images, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return tf.concat([tf.reshape(tf.cast(o, tf.float32), [tf.shape(images)[0], -1]) for o in outs], axis=1)

    forward = tf.function(packed, jit_compile=True) if jit_compile else packed

    def from_float(images):
        # checked in the graph: a server feeds the tensor as sent, and a convolution of a tensor of the wrong rank
        # can abort the whole process (oneDNN's CHECK) instead of failing the request
        images = tf.ensure_shape(images, [None, h, w, 3])
        if boxes is None:
            matrix = forward(images)
        else:  # the views made outside the compiled pass (XLA has no CropAndResize), averaged after it
            matrix = forward(transform_batch(images, boxes))
            matrix = tf.reduce_mean(tf.reshape(matrix, [len(views), tf.shape(images)[0], -1]), axis=0)
        # the outputs are made on the host from one copy of the heads' outputs (labels, class names, AU names: a
        # GPU would otherwise copy each head's values out separately, several times for a class task)
        with tf.device("/CPU:0"):
            parts = tf.split(tf.identity(matrix), [int(np.prod(shape)) for shape in shapes], axis=1)
            return task_outputs(tasks, [tf.reshape(p, [-1, *shape]) for p, shape in zip(parts, shapes)],
                                getattr(model, "intervals", None))

    def from_bytes(images):
        x, error = decode_batch(images, (h, w), max_bytes, max_pixels)
        return _blank_failed(from_float(x), error)

    return {"serving_default": (from_bytes, [tf.TensorSpec([None], tf.string, name="images")]),
            "serving_float": (from_float, [tf.TensorSpec([None, h, w, 3], tf.float32, name="images")])}
