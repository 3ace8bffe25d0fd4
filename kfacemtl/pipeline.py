"""The tf.data pipeline: decode → resize (or the decoded-image cache) → mix sources → batch → augment → prefetch.

Every batch is ``(images, {task: label}, {task: weight})`` with every task of the model
present; a missing label has weight 0 and a finite placeholder label. Images are float32
in [0, 1], ``image_size`` square, 3 channels (gray is repeated).

The same :func:`preprocess_image` ops run at serving time, so a served model sees exactly
what training saw.

Example:
    >>> from kfacemtl.sources import make_source
    >>> from kfacemtl.tasks import resolve_tasks
    >>> from kfacemtl.pipeline import make_dataset
    >>> tasks = resolve_tasks(["gender", "expression"])
    >>> ds = make_dataset([make_source("synthetic:lab?n=8")], tasks, batch_size=4, training=False)
    >>> images, labels, weights = next(iter(ds))
    >>> images.shape, sorted(labels), weights["gender"].numpy().tolist()
    (TensorShape([4, 64, 64, 3]), ['expression', 'gender'], [0.0, 0.0, 0.0, 0.0])
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kfacemtl.errors import ConfigError, SourceError, check_choice
from kfacemtl.sources import RowSubset, Source
from kfacemtl.tasks import Task

MIXING_MODES = ("proportional", "balanced", "sqrt")


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
    image = tf.image.convert_image_dtype(_rgb(image), tf.float32)
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
    images all have one size (:func:`kfacemtl.export.decode_batch`). On a GPU with TensorFloat-32 (TF's default
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


def _rgb(image):
    """Gray (+ alpha) → RGB, RGBA → RGB, in the image's own dtype."""
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
    return _rgb(tf.io.decode_image(data, channels=0, expand_animations=False))


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


def augment_batch(images, seed, compiled: bool = False):
    """Light training augmentation in TF ops, drawn per image, computed for the whole batch at once: flip, shift
    (as if padded with black and cropped at a random offset of up to ``max(2, H/16)`` pixels), brightness
    (± 0.12), contrast (× 0.8 to 1.25 around each channel's mean), clipped to [0, 1]. The same distributions as
    TensorFlow's ``stateless_random_*`` image ops, in a few batched ops: the flip and the shift are two
    gathers (rows, then columns, read from the padded image in flipped order where drawn), brightness and
    contrast one affine map, ``factor · x + (1 − factor) · mean + brightness``.

    Args:
        images: float32 (B, H, W, 3) in [0, 1], or uint8 (B, H, W, 3): the flip and the shift then move bytes, and
            the images become float32 in [0, 1] before brightness and contrast (the same numbers as converting
            first, for a quarter of the memory traffic).
        seed: a stateless seed, shape (2,) int.
        compiled: apply the drawn transforms with XLA (the draws themselves are not compiled, so they are the same
            numbers): one fused loop instead of a dozen passes over the batch, a third of the CPU time (0.59 against
            1.73 ms per batch of 64 at 48 px on one core here). The input pipeline uses it.

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
    return (_apply_augmentation_xla if compiled else _apply_augmentation)(images, *draws)


def _shift_pad(height: int) -> int:
    """The augmentation's largest shift in pixels, for images ``height`` pixels high."""
    return max(2, height // 16)


def _apply_augmentation(images, flip, dy, dx, brightness, factor):
    """:func:`augment_batch`'s transforms, given its draws."""
    h, w = images.shape[1], images.shape[2]
    pad = _shift_pad(h)
    # output pixel (y, x) is pixel (y + dy, x + dx) of the padded image, flipped first when drawn: as the padding is
    # symmetric, the flipped padded image's column c is the padded image's column (w + 2·pad − 1 − c)
    padded = tf.pad(images, [[0, 0], [pad, pad], [pad, pad], [0, 0]])
    cols = dx[:, None] + tf.range(w)[None]
    cols = tf.where(flip[:, None], (w + 2 * pad - 1) - cols, cols)
    images = tf.gather(padded, dy[:, None] + tf.range(h)[None], axis=1, batch_dims=1)
    images = tf.image.convert_image_dtype(tf.gather(images, cols, axis=2, batch_dims=1), tf.float32)
    # contrast around the mean of the brightened image: (x + c − (m + c)) · f + m + c = f · x + (1 − f) · m + c
    mean = tf.reduce_mean(images, axis=[1, 2], keepdims=True)
    return tf.clip_by_value(images * factor + ((1.0 - factor) * mean + brightness), 0.0, 1.0)


_apply_augmentation_xla = tf.function(_apply_augmentation, jit_compile=True)


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
            raise ConfigError(f"training.mixing.{sorted(unknown)[0]}", f"not a source; sources are {names}")
        missing = [n for n in names if n not in mixing]
        if missing:
            raise ConfigError("training.mixing", f"explicit mixing must give every source a weight; missing {missing}")
        w = np.array([float(mixing[n]) for n in names])
        if np.any(~np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
            raise ConfigError("training.mixing", f"weights must be finite, ≥ 0 and not all 0, got {dict(mixing)}")
    elif mixing in ("proportional", "sqrt"):
        w = np.array([len(s) for s in sources], dtype="float64")
        w = w if mixing == "proportional" else np.sqrt(w)
    elif mixing == "balanced":
        w = np.ones(len(sources))
    else:
        raise ConfigError("training.mixing", f"expected one of {MIXING_MODES} or a mapping "
                                             f"{{source: weight}}, got {mixing!r}")
    return w / w.sum()


CACHE_MODES = ("auto", "memory", "disk", "none")


def default_cache_dir() -> Path:
    """Where decoded images are cached on disk: ``decoded/`` in the package's cache folder (``$KFACEMTL_CACHE``,
    else ``~/.cache/kfacemtl``; the synthetic benchmark's rendered splits live there too).

    Example:
        >>> default_cache_dir().name
        'decoded'
    """
    from kfacemtl import synthetic
    return synthetic.default_cache_dir() / "decoded"


class DecodedImages(Source):
    """A file source whose images are decoded and resized once, then held as uint8 in memory or in a file on
    disk, so training repeats neither: the training cache of :func:`make_dataset`.

    Decoding runs in parallel TF ops (:func:`decode_image`, the serving path); the result is rounded to uint8,
    within 1/510 of the float pixels the files give directly. Labels, names and everything else come from the
    wrapped source.

    With ``cache_dir`` the images go to ``CACHE_DIR/<source>-<key>.npy`` (written to a temporary file, then
    renamed) and are read back memory-mapped, one row at a time: for sets larger than memory. The key hashes
    the image size and every file's path, size and modification time, so a later run on the same files reuses
    the file, and a changed file makes a new one. A cache file that cannot be read is rebuilt.

    Example:
        >>> # cached = DecodedImages(make_source("utkface:data/UTKFace"), (48, 48))
        >>> # on_disk = DecodedImages(make_source("utkface:data/UTKFace"), (48, 48), cache_dir="/scratch/cache")
    """

    def __init__(self, source: Source, image_size, cache_dir=None):
        super().__init__(source.name, source.domain, source.tasks)
        self.source, self.image_size = source, tuple(int(v) for v in image_size)
        self.cache_file = None if cache_dir is None else Path(cache_dir) / f"{source.name}-{self._key()}.npy"
        if self.cache_file is None:
            self._images = np.concatenate(list(self._decoded_batches()))
        else:
            self._images = self._load() if self.cache_file.exists() else None
            if self._images is None:
                self._images = self._write()

    @property
    def hidden(self):
        """The wrapped :class:`~kfacemtl.sources.WithoutLabels`'s hidden labels (the same rows), else None:
        distillation scores its pseudo-labels with them."""
        return getattr(self.source, "hidden", None)

    def _decoded_batches(self):
        """Batches of decoded uint8 images; :class:`BadImageFiles` once all are read if some files cannot be."""
        to_uint8 = lambda data: tf.cast(tf.round(decode_image(data, self.image_size) * 255), tf.uint8)  # noqa: E731
        paths = self.source.paths()
        good, n = np.zeros(len(paths), bool), 0
        for rows, batch in _decode_pass(paths, to_uint8):
            good[rows], n = True, n + len(rows)
            if n == rows[-1] + 1:  # rows come in order: after a gap (a bad file), only the check goes on
                yield batch
        if not good.all():
            raise BadImageFiles(self.source, _bad_files(paths, good))

    def _key(self) -> str:
        h = hashlib.sha1(repr(self.image_size).encode())
        for p in self.source.paths():
            st = os.stat(p)
            h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        return h.hexdigest()[:16]

    def _shape(self):
        return (len(self.source),) + self.image_size + (3,)

    def _load(self):
        try:
            images = np.load(self.cache_file, mmap_mode="r")
        except (OSError, ValueError):
            return None  # truncated or not an .npy file: rebuilt
        return images if images.shape == self._shape() and images.dtype == np.uint8 else None

    def _write(self):
        self.cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.cache_file.with_name(f".{self.cache_file.name}.{os.getpid()}.tmp")  # removed if anything fails
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self._shape())
            i = 0
            for batch in self._decoded_batches():
                out[i:i + len(batch)] = batch
                i += len(batch)
            out.flush()
            del out
            os.replace(tmp, self.cache_file)
        finally:
            tmp.unlink(missing_ok=True)
        return np.load(self.cache_file, mmap_mode="r")

    def __len__(self):
        return len(self.source)

    def images(self):
        return self._images

    def raw_labels(self, task):
        return self.source.raw_labels(task)

    def row_names(self):
        return self.source.row_names()

    def labels(self, tasks):
        return self.source.labels(tasks)

    def describe(self) -> dict:
        where = "in memory" if self.cache_file is None else f"on disk ({self.cache_file})"
        return dict(self.source.describe(), cached=f"decoded {self.image_size[0]}x{self.image_size[1]} {where}")


BAD_IMAGES = ("error", "skip")


class BadImageFiles(SourceError):
    """Image files of a source that cannot be decoded: ``bad`` is ``{row: reason}``.

    The message names the source, each file's row and path and what is wrong with it (the first ten).

    Example:
        >>> from kfacemtl.sources import FileTableSource
        >>> src = FileTableSource("faces", "studio", ["a.jpg", "b.jpg"], {})
        >>> print(str(BadImageFiles(src, {1: "is empty (0 bytes)"})).split(". ")[0])
        source faces: 1 image file(s) cannot be used: row 1 (b.jpg) is empty (0 bytes)
    """

    def __init__(self, source: Source, bad: Mapping[int, str]):
        self.source, self.bad = source, dict(sorted(bad.items()))
        names = source.row_names()
        listed = "; ".join(f"row {names[i]} {why}" for i, why in list(self.bad.items())[:10])
        more = f"; and {len(self.bad) - 10} more" if len(self.bad) > 10 else ""
        super().__init__(f"source {source.name}: {len(self.bad)} image file(s) cannot be used: {listed}{more}. "
                         "Fix or remove them, or set training.bad_images: skip to leave them out (counted in "
                         "report.json)")


def _decode_pass(paths, load, batch: int = 256, max_pixels: int = MAX_PIXELS):
    """``(rows, batch)`` of ``load(file bytes)`` for every file that decodes, in order; the others are dropped, as
    are files whose header declares more than ``max_pixels`` pixels (checked before decoding: no bomb goes off)."""
    def checked(i, path):
        data = tf.io.read_file(path)
        wh = declared_size(data)
        with tf.control_dependencies([tf.debugging.Assert(wh[0] * wh[1] <= max_pixels, ["too many pixels"])]):
            return i, load(data)
    ds = tf.data.Dataset.from_tensor_slices((np.arange(len(paths)), paths))
    ds = ds.map(checked, num_parallel_calls=tf.data.AUTOTUNE).ignore_errors()
    for rows, out in ds.batch(batch).prefetch(tf.data.AUTOTUNE):
        yield rows.numpy(), out.numpy()


def find_bad_images(paths, max_pixels: int = MAX_PIXELS) -> dict[int, str]:
    """``{row: what is wrong}`` for the image files that cannot be decoded (missing, empty, corrupt, truncated, not an
    image) or whose header declares more than ``max_pixels`` pixels, in one parallel pass of the decoder the
    pipeline uses.

    Example:
        >>> find_bad_images([])
        {}
    """
    paths = np.asarray(paths, dtype=str)
    if not len(paths):
        return {}
    shape = lambda data: tf.shape(tf.io.decode_image(data, channels=0, expand_animations=False))  # noqa: E731
    good = np.zeros(len(paths), bool)
    for rows, _ in _decode_pass(paths, shape, batch=4096, max_pixels=max_pixels):
        good[rows] = True
    return _bad_files(paths, good, max_pixels)


def _bad_files(paths, good, max_pixels: int = MAX_PIXELS) -> dict[int, str]:
    """``{row: what is wrong}`` for the rows a decoding pass did not mark ``good``."""
    return {int(i): _why_bad(paths[i], max_pixels) for i in np.flatnonzero(~good)}


def _why_bad(path: str, max_pixels: int = MAX_PIXELS) -> str:
    try:
        size = os.path.getsize(str(path))
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if size == 0:
        return "is an empty file"
    try:
        w, h = (int(v) for v in declared_size(tf.io.read_file(str(path))).numpy())
    except tf.errors.OpError:
        w = h = 0
    if w * h > max_pixels:
        return f"declares {w} x {h} pixels, more than the limit of {max_pixels:,} (checked before decoding)"
    return "is not a readable JPEG, PNG, BMP or GIF image (corrupt, truncated or another format)"


def cached_sources(sources: Sequence[Source], image_size, limit_mb: float = 4096, mode: str = "auto",
                   cache_dir=None, bad_images: str = "error", skipped: dict | None = None) -> list[Source]:
    """File sources checked (every image decodes) and cached as ``mode`` says; in-memory sources as they are.

    ``memory``: in memory (:class:`DecodedImages`) while the decoded images fit in ``limit_mb`` together (in
    order), the rest as they are; ``auto``: the same, the rest on disk in ``cache_dir`` (default
    :func:`default_cache_dir`); ``disk``: all on disk; ``none``: nothing cached (a decoding pass still checks the
    files). Files that cannot be decoded raise :class:`BadImageFiles` (``bad_images: error``) or are left out
    (``skip``: the source becomes a :class:`~kfacemtl.sources.RowSubset`, and ``skipped[source name]`` lists them).

    Example:
        >>> from kfacemtl.sources import make_source
        >>> cached = cached_sources([make_source("synthetic:lab?n=4")], (32, 32))   # in memory already: as it is
        >>> cached[0].name
        'lab-train'
        >>> # file sources: decoded once, checked, held in memory or in CACHE_DIR/*.npy
        >>> # cached_sources([make_source("utkface:data/UTKFace")], (64, 64), mode="disk")
    """
    check_choice("training.cache", mode, CACHE_MODES)
    check_choice("training.bad_images", bad_images, BAD_IMAGES)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out, used = [], 0.0
    for src in sources:
        if src.images() is not None or src.paths() is None:
            out.append(src)
            continue
        size = len(src) * image_size[0] * image_size[1] * 3 / 2 ** 20
        where = None
        if mode in ("auto", "memory") and used + size <= limit_mb:
            where, used = "memory", used + size
        elif mode in ("auto", "disk"):
            where = "disk"
        out.append(_checked(src, where, image_size, cache_dir, bad_images, skipped))
    return out


def _checked(src: Source, where, image_size, cache_dir, bad_images: str, skipped: dict | None) -> Source:
    """One file source, cached ``where`` (memory, disk or None), its undecodable files an error or left out."""
    def cache(s):
        out = s if where is None else DecodedImages(s, image_size, cache_dir=cache_dir if where == "disk" else None)
        s.__dict__["_images_checked"] = True  # checked once per source object (evaluation, distillation rounds)
        return out
    try:
        if where is None and not src.__dict__.get("_images_checked"):
            bad = find_bad_images(src.paths())
            if bad:
                raise BadImageFiles(src, bad)
        return cache(src)
    except BadImageFiles as e:
        if bad_images == "error":
            raise
        if skipped is not None:
            names = src.row_names()
            skipped[src.name] = [names[i] for i in e.bad]
        return cache(RowSubset(src, [i for i in range(len(src)) if i not in e.bad]))


def source_dataset(source: Source, tasks: Sequence[Task], shuffle_seed: int | None = None,
                   pseudo_labels=None, coannotation=None) -> tf.data.Dataset:
    """One source → unbatched ``(raw image or image path, labels, weights)`` elements, before decoding.

    Labels are validated here, before anything reaches a loss. With ``shuffle_seed`` the
    dataset is infinite: each pass is a fresh random permutation of all rows (a shuffle
    buffer smaller than the source would keep the order of class folders or of UTKFace's
    age-sorted file names). ``pseudo_labels`` (a :class:`~kfacemtl.distillation.PseudoLabels`,
    shuffled datasets only) fills rows' missing labels from its variables, read by row id at
    every pass; a :class:`~kfacemtl.coupling.CoAnnotation` fills them first from the related
    task's real label (a pseudo-label then fills only what is still missing).

    Example:
        >>> from kfacemtl.sources import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> image, labels, weights = next(iter(source_dataset(make_source("synthetic:lab?n=4"), resolve_tasks(["gender", "expression"]))))
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
        if pseudo_labels is not None:
            y, w = pseudo_labels.merge(source.name, i, y, w)
        return x, y, w
    return order.repeat().map(row)


def _label_tables(source: Source, tasks: Sequence[Task], coannotation) -> tuple[dict, dict]:
    """A source's labels and weights for every task, with what co-annotation fills in."""
    labels, weights = source.labels(tasks)
    return (labels, weights) if coannotation is None else coannotation.apply(labels, weights)


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

    Each batch draws its row ids (:func:`_mixed_row_ids`: every slot's source drawn with ``probs``,
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
    prepare = _rgb if as_bytes else lambda x: preprocess_image(x, image_size)

    def gather(which, rows):
        where, xs, ys, ws = [], [], [], []
        for i, (images, labels, weights) in enumerate(tables):
            at = tf.cast(tf.where(tf.equal(which, i))[:, 0], tf.int32)
            mine = tf.gather(rows, at)
            where.append(at)
            xs.append(prepare(tf.gather(images, mine)))
            y, w = ({t: tf.gather(v, mine) for t, v in table.items()} for table in (labels, weights))
            if pseudo_labels is not None:
                y, w = pseudo_labels.merge(sources[i].name, mine, y, w)
            ys.append(y)
            ws.append(w)
        stitch = lambda parts_: tf.dynamic_stitch(where, parts_)  # noqa: E731
        return (stitch(xs), {t: stitch([y[t] for y in ys]) for t in ys[0]},
                {t: stitch([w[t] for w in ws]) for t in ws[0]})

    ids = _mixed_row_ids([len(a) for a in arrays], probs, int(batch_size), seed)
    return ids.map(gather, num_parallel_calls=tf.data.AUTOTUNE)


def _mixed_row_ids(sizes: Sequence[int], probs: np.ndarray, batch_size: int, seed: int) -> tf.data.Dataset:
    """An infinite dataset of batches ``(source index, row)``, each ``(batch_size,)``: every slot's source drawn
    with ``probs`` (independently, as ``sample_from_datasets`` draws), each source's rows taken in order from a
    fresh random permutation per pass. A stateless function of ``seed``, the batch number and the pass number.
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
                 training: bool = True, mixing: str | Mapping[str, float] = "proportional", augment: bool = True,
                 seed: int = 0, drop_remainder: bool | None = None, pseudo_labels=None,
                 coannotation=None, cache: str = "auto", cache_limit_mb: float = 4096,
                 cache_dir=None, bad_images: str = "error", skipped: dict | None = None) -> tf.data.Dataset:
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
        augment: apply :func:`augment_batch` to each batch (training only).
        seed: seed for shuffling, mixing and augmentation.
        pseudo_labels: a :class:`~kfacemtl.distillation.PseudoLabels` whose pseudo-labels fill
            missing labels (training only; a real label always wins).
        coannotation: a :class:`~kfacemtl.coupling.CoAnnotation` that fills missing labels from
            related tasks' real labels (training only).
        cache: training only. ``auto``: file sources are decoded and resized once and held in memory
            (:class:`DecodedImages`) while they fit in ``cache_limit_mb``, the others in a file in
            ``cache_dir`` (default :func:`default_cache_dir`; reused by later runs on the same files);
            ``memory``: in memory within the limit, the others decoded at every pass; ``disk``: all in
            files; ``none``: every pass decodes the files again. Evaluation (``training=False``) caches nothing.
        bad_images: image files that cannot be decoded (checked before anything is trained or evaluated): ``error``
            (:class:`BadImageFiles` names each file and its row) or ``skip`` (left out; ``skipped``, a dict, then
            gets ``{source name: [row names]}``).

    Returns:
        A ``tf.data.Dataset`` of ``(images, {task: label}, {task: weight})``. With
        ``training=True`` it is infinite: pass ``steps_per_epoch`` to ``fit``
        (:func:`steps_per_epoch` gives one pass over the data).

    Example:
        >>> from kfacemtl.sources import make_source
        >>> from kfacemtl.tasks import resolve_tasks
        >>> sources = [make_source("synthetic:lab?n=16"), make_source("synthetic:portraits?n=16")]
        >>> ds = make_dataset(sources, resolve_tasks(["gender", "expression"]), batch_size=8, image_size=(32, 32),
        ...                   mixing="balanced")
        >>> images, labels, weights = next(iter(ds))
        >>> tuple(images.shape), sorted(weights)
        ((8, 32, 32, 3), ['expression', 'gender'])
    """
    if not sources:
        raise ConfigError("sources", "no sources given")
    if int(batch_size) < 1:
        raise ConfigError("training.batch_size", f"expected a positive integer, got {batch_size!r}")
    image_size = tuple(int(v) for v in image_size)
    check_choice("training.cache", cache, CACHE_MODES)  # also when evaluating (which caches nothing)
    sources = cached_sources(sources, image_size, cache_limit_mb, cache if training else "none", cache_dir,
                             bad_images, skipped)
    auto = tf.data.AUTOTUNE
    arrays = _in_memory_images(sources, batch_size) if training else None
    if arrays is not None:  # every source in memory: whole batches at a time, nothing sample by sample
        ds = _batched_training_dataset(sources, arrays, tasks, batch_size, image_size, mixing_weights(sources, mixing),
                                       seed, coannotation, pseudo_labels, training and augment)
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
    if training and augment:  # per batch: a few batched ops instead of several per image
        ds = tf.data.Dataset.zip((ds, tf.data.Dataset.counter())).map(
            lambda e, c: (augment_batch(e[0], tf.stack([tf.cast(seed, tf.int64), c]), compiled=True), *e[1:]),
            num_parallel_calls=auto)
    return ds.prefetch(auto)


def prefetch_to_gpu(ds: tf.data.Dataset, buffer_size: int = 2) -> tf.data.Dataset:
    """``ds`` with its next ``buffer_size`` batches copied to the first GPU while the current step runs
    (``tf.data.experimental.prefetch_to_device``), where a GPU is; else ``ds`` itself. The last transformation of a
    training dataset: without it each step waits for its batch's copy (measured on an H200 with XLA: training 8 %
    faster, README "On a GPU").

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
        >>> from kfacemtl.sources import make_source
        >>> steps_per_epoch([make_source("synthetic:lab?n=100"), make_source("synthetic:webcam?n=60")], 64)
        2
    """
    return max(1, sum(len(s) for s in sources) // int(batch_size))
