"""The decoded-image cache and the bad-image check: every file decoded once, in memory or on disk.

Example:
    >>> from kfacemtl.data import make_source
    >>> cached_sources([make_source("synthetic:lab?n=4")], (32, 32))[0].name   # in memory already: as it is
    'lab-train'
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
import tensorflow as tf

from kfacemtl.data.images import MAX_PIXELS, decode_image, declared_size
from kfacemtl.data.source import Source
from kfacemtl.data.wrappers import RowSubset
from kfacemtl.errors import SourceError, expect_one_of
from kfacemtl.files import cache_root


CACHE_MODES = ("auto", "memory", "disk", "none")


def default_cache_dir() -> Path:
    """Where decoded images are cached on disk: ``decoded/`` in the package's cache folder (``$KFACEMTL_CACHE``,
    else ``~/.cache/kfacemtl``; the synthetic benchmark's rendered splits live there too).

    Example:
        >>> default_cache_dir().name
        'decoded'
    """
    return cache_root() / "decoded"


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
        >>> import os
        >>> from kfacemtl.data import make_source
        >>> for name in ("happy", "sad"):
        ...     os.makedirs(f"faces/{name}", exist_ok=True)
        ...     _ = open(f"faces/{name}/1.png", "wb").write(tf.io.encode_png(tf.zeros((90, 70, 1), tf.uint8)).numpy())
        >>> cached = DecodedImages(make_source("folder:faces"), (48, 48))                      # in memory
        >>> on_disk = DecodedImages(make_source("folder:faces"), (48, 48), cache_dir="cache")  # memory-mapped
        >>> cached.images().shape, on_disk.images().shape, on_disk.cache_file.parent.name
        ((2, 48, 48, 3), (2, 48, 48, 3), 'cache')
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
        """The wrapped :class:`~kfacemtl.data.WithoutLabels`'s hidden labels (the same rows), else None:
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
        >>> from kfacemtl.data import FileTableSource
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
    files). A :class:`DecodedImages` of another size is read from its files again at ``image_size`` (not its
    decoded images resized a second time). Files that cannot be decoded raise :class:`BadImageFiles` (``bad_images:
    error``) or are left out (``skip``: the source becomes a :class:`~kfacemtl.data.wrappers.RowSubset`, and
    ``skipped[source name]`` lists them).

    Example:
        >>> from kfacemtl.data import make_source
        >>> cached = cached_sources([make_source("synthetic:lab?n=4")], (32, 32))   # in memory already: as it is
        >>> cached[0].name
        'lab-train'
        >>> import os
        >>> os.makedirs("photos/happy", exist_ok=True)
        >>> _ = open("photos/happy/1.png", "wb").write(tf.io.encode_png(tf.zeros((64, 64, 3), tf.uint8)).numpy())
        >>> open("photos/happy/2.png", "wb").close()                              # an empty file: not an image
        >>> skipped = {}
        >>> [kept] = cached_sources([make_source("folder:photos")], (32, 32), mode="disk", cache_dir="cache",
        ...                         bad_images="skip", skipped=skipped)
        >>> len(kept), kept.images().shape, skipped                               # decoded once, checked, cached
        (1, (1, 32, 32, 3), {'photos': ['1 (photos/happy/2.png)']})
    """
    expect_one_of("mode", mode, CACHE_MODES)
    expect_one_of("bad_images", bad_images, BAD_IMAGES)
    cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    out, used = [], 0.0
    for src in sources:
        if isinstance(src, DecodedImages) and src.image_size != tuple(image_size):
            src = src.source  # e.g. a 64x64 teacher of an 80x80 run: its faces from the files, not 64->80->64
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
        s.images_checked = True  # checked once per source object (evaluation, distillation rounds)
        return out
    try:
        if where is None and not getattr(src, "images_checked", False):
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
