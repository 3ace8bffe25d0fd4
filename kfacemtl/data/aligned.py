"""A source of raw photos cut into faces the way serving cuts them: detection, then alignment onto the template.

Any source spec takes ``align=DETECTOR`` (``mtcnn``, or ``whole`` for photos that are already crops) and
``align_size=N`` (the side of the stored crops, 112 by default; the pipeline resizes them to the model's input), e.g.
``folder:photos?align=mtcnn``. Each photo's most confident face is kept; photos where none is found are left out
with a warning naming them. The crops are computed once and kept under the package's cache folder
(:func:`~kfacemtl.files.cache_root`), keyed by the files, the detector and the template.

Example:
    >>> from kfacemtl.data import make_source
    >>> faces = AlignedFaces(make_source("synthetic:lab?n=4"), detector="whole", size=32, cache=False)
    >>> len(faces), faces.images().shape
    (4, (4, 32, 32, 3))
"""
from __future__ import annotations

import hashlib
import os
import warnings

import keras
import numpy as np
import tensorflow as tf

from kfacemtl.data.alignment import TEMPLATE, align_faces
from kfacemtl.data.detection import make_detector
from kfacemtl.data.images import decode_rgb
from kfacemtl.data.source import Source
from kfacemtl.data.wrappers import RowSubset
from kfacemtl.files import atomic_write, cache_root


class AlignedFaces(Source):
    """``source``'s images, each cut to its most confident face by ``detector`` and aligned to ``size`` × ``size``.

    Rows keep their labels; rows without a face are left out (:attr:`rows` are the rows kept). ``cache``: keep the
    crops in the cache folder (True) or only in memory (False).

    Example:
        >>> from kfacemtl.data import make_source
        >>> faces = AlignedFaces(make_source("synthetic:lab?n=3"), detector="whole", size=16, cache=False)
        >>> faces.rows.tolist(), faces.name
        ([0, 1, 2], 'lab-train')
    """

    batch = 32  # photos per call to the detector

    def __init__(self, source: Source, detector: str = "mtcnn", size: int = 112, cache: bool = True):
        super().__init__(source.name, source.domain, source.tasks)
        if isinstance(size, bool) or not isinstance(size, int) or size < 16:
            raise ValueError(f"align_size: expected a whole number of pixels of at least 16; got {size!r}")
        self.source, self.detector, self.size, self.cache = source, make_detector(detector), size, cache
        self.format = source.format
        self._rows = self._crops = None

    def _key(self) -> str:
        h = hashlib.sha256(f"{self.detector.name}|{self.size}|{TEMPLATE.tobytes().hex()}|{len(self.source)}".encode())
        paths = self.source.paths()
        if paths is not None:
            for p in paths:
                st = os.stat(p)
                h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}".encode())
        else:
            h.update(np.ascontiguousarray(self.source.images()).tobytes())
        return h.hexdigest()[:20]

    def _photo(self, i, paths, images):
        if images is not None:
            return np.asarray(images[i])
        return decode_rgb(tf.io.read_file(str(paths[i]))).numpy()

    def _compute(self):
        if self._rows is not None:
            return
        path = cache_root() / "aligned" / f"{self.source.name}-{self._key()}.npz"
        if self.cache and path.exists():
            with np.load(path) as saved:
                self._rows, self._crops = saved["rows"], saved["crops"]
            return
        paths, images = self.source.paths(), self.source.images()
        n, rows, crops = len(self.source), [], []
        bar = keras.utils.Progbar(n, unit_name="photo") if n > 4 * self.batch else None
        for start in range(0, n, self.batch):
            index = range(start, min(n, start + self.batch))
            photos = [self._photo(i, paths, images) for i in index]
            for i, photo, faces in zip(index, photos, self.detector.detect(photos)):
                if faces:
                    rows.append(i)
                    crop = align_faces(photo, faces[0].landmarks[None], (self.size, self.size))[0]
                    crops.append(tf.cast(tf.round(crop * 255.0), tf.uint8).numpy())
            if bar is not None:
                bar.update(index[-1] + 1)
        self._rows = np.asarray(rows, np.int64)
        self._crops = np.stack(crops) if crops else np.zeros((0, self.size, self.size, 3), np.uint8)
        missing = sorted(set(range(n)) - set(rows))
        if missing:
            names = self.source.row_names()
            warnings.warn(f"{self.source.name}: no face found in {len(missing)} of {n} images; left out, e.g. "
                          f"{[names[i] for i in missing[:3]]}", stacklevel=2)
        if self.cache:
            atomic_write(path, lambda tmp: np.savez(tmp, rows=self._rows, crops=self._crops))

    @property
    def rows(self) -> np.ndarray:
        """The rows of the wrapped source that had a face, in order."""
        self._compute()
        return self._rows

    @property
    def subjects(self):
        """Who is in each kept row (the wrapped source's subjects or files), so validation splits stay by person."""
        groups = getattr(self.source, "subjects", None)
        if groups is None:
            groups = self.source.paths()
        return None if groups is None else np.asarray(groups)[self.rows]

    def __len__(self):
        return len(self.rows)

    def images(self):
        self._compute()
        return self._crops

    def row_names(self):
        return RowSubset(self.source, self.rows).row_names()

    def raw_labels(self, task):
        return RowSubset(self.source, self.rows).raw_labels(task)

    def describe(self) -> dict:
        return dict(self.source.describe(), samples=len(self), aligned=self.detector.name,
                    left_out=len(self.source) - len(self))
