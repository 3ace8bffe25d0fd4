"""Face detectors: photos in, faces out (a box, five landmarks in :data:`~kfacemtl.data.alignment.LANDMARKS` order and
a score), behind one interface, registered by name so that another detector is one new class.

- ``mtcnn``: the MTCNN cascade of the ``mtcnn`` package (its weights ship inside the package; nothing is
  downloaded). Photos are detected in batches of similar sizes; a photo whose longer side exceeds ``max_side`` is
  shrunk for detection, and the faces are mapped back to its own pixels.
- ``whole``: every photo is already one face cut like the training crops (the landmarks are the template's).

Example:
    >>> import numpy as np
    >>> faces = make_detector("whole").detect([np.zeros((48, 48, 3), np.uint8)])
    >>> len(faces[0]), faces[0][0].box
    (1, (0.0, 0.0, 48.0, 48.0))
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tensorflow as tf

from kfacemtl.data.alignment import LANDMARKS, template_points

DETECTORS: dict[str, type] = {}
#: The largest min_face_size given to mtcnn itself (see MTCNNDetector._shrunk).
MTCNN_MIN_FACE = 20


def register_detector(name):
    """Class decorator: make a :class:`FaceDetector` subclass available as ``make_detector(name)``.

    Example:
        >>> @register_detector("centre")
        ... class Centre(FaceDetector):
        ...     def detect(self, photos):
        ...         return [[] for _ in photos]
        >>> make_detector("centre").detect([np.zeros((8, 8, 3), np.uint8)]); del DETECTORS["centre"]
        [[]]
    """
    def add(cls):
        DETECTORS[name] = cls
        cls.name = name
        return cls
    return add


def make_detector(name="mtcnn", **options):
    """The registered detector ``name`` built with ``options`` (the class's keyword arguments).

    Example:
        >>> sorted(DETECTORS)
        ['mtcnn', 'whole']
    """
    if name not in DETECTORS:
        raise ValueError(f"detector: expected one of {', '.join(sorted(DETECTORS))}; got {name!r}")
    return DETECTORS[name](**options)


@dataclass(frozen=True)
class Face:
    """One face found in a photo: ``box`` (x, y, width, height) and ``landmarks`` ((5, 2) array of (x, y)) in the
    photo's pixels, and the detector's ``score`` in [0, 1].

    Example:
        >>> face = Face((1.0, 2.0, 30.0, 40.0), np.zeros((5, 2)), 0.99)
        >>> sorted(face.to_dict())
        ['box', 'landmarks', 'score']
    """
    box: tuple
    landmarks: np.ndarray
    score: float

    def to_dict(self) -> dict:
        """JSON-ready: the box as a list, the landmarks by name, the score rounded to 4 places."""
        return {"box": [round(float(v), 1) for v in self.box],
                "landmarks": {n: [round(float(x), 1), round(float(y), 1)] for n, (x, y) in zip(LANDMARKS, self.landmarks)},
                "score": round(float(self.score), 4)}


class FaceDetector:
    """The interface: :meth:`detect` takes a list of photos (``uint8`` arrays (H, W, 1|3|4)) and returns, per
    photo, the list of its :class:`Face` records, most confident first.

    Example:
        >>> issubclass(DETECTORS["mtcnn"], FaceDetector)
        True
    """
    name = "base"

    def detect(self, photos) -> list:
        raise NotImplementedError


def as_rgb(photo) -> np.ndarray:
    """A photo as an (H, W, 3) ``uint8`` array (gray repeated, alpha dropped).

    Example:
        >>> as_rgb(np.zeros((4, 5), np.uint8)).shape
        (4, 5, 3)
    """
    photo = np.asarray(photo)
    if photo.dtype != np.uint8:
        raise ValueError(f"photo: expected uint8 pixels; got {photo.dtype}")
    if photo.ndim == 2:
        photo = photo[..., None]
    if photo.ndim != 3 or photo.shape[-1] not in (1, 3, 4):
        raise ValueError(f"photo: expected shape (height, width, 1|3|4); got {photo.shape}")
    if photo.shape[-1] == 1:
        return np.repeat(photo, 3, axis=-1)
    return photo[..., :3]


@register_detector("whole")
class WholePhoto(FaceDetector):
    """Each photo is one face, already cut like the training crops: its box is the whole photo and its landmarks
    are the template's (so alignment only resizes it).

    Example:
        >>> face = WholePhoto().detect([np.zeros((60, 40), np.uint8)])[0][0]
        >>> face.box, face.score
        ((0.0, 0.0, 40.0, 60.0), 1.0)
    """

    def detect(self, photos):
        out = []
        for photo in photos:
            h, w = np.asarray(photo).shape[:2]
            out.append([Face((0.0, 0.0, float(w), float(h)), template_points((h, w)), 1.0)])
        return out


@register_detector("mtcnn")
class MTCNNDetector(FaceDetector):
    """MTCNN (Zhang et al. 2016) from the ``mtcnn`` package: three cascaded networks that find faces down to
    ``min_face_size`` pixels and their five landmarks.

    ``max_side``: a longer photo is shrunk to it for detection (the cost grows with the pixels; faces are reported
    in the photo's own pixels); ``min_face_size`` above 20 pixels shrinks the photo too (by min_face_size / 20: the
    smallest faces wanted become 20 pixels), which makes detection faster where faces are large; ``batch_size``:
    photos per call to the networks (photos are grouped by size, since a batch is padded to its largest photo);
    ``min_score``: faces below it are dropped.

    Example:
        >>> detector = MTCNNDetector(min_face_size=40)
        >>> detector.detect([np.zeros((120, 160, 3), np.uint8)])     # a blank photo: no face
        [[]]
    """

    def __init__(self, min_face_size=20, max_side=1024, batch_size=16, min_score=0.9):
        if min_face_size < 12:
            raise ValueError(f"min_face_size: expected at least 12 pixels (MTCNN's smallest window); got {min_face_size}")
        if max_side < 48 or batch_size < 1 or not 0 <= min_score <= 1:
            raise ValueError(f"max_side >= 48, batch_size >= 1 and 0 <= min_score <= 1 expected; got {max_side}, "
                             f"{batch_size}, {min_score}")
        self.min_face_size, self.max_side, self.batch_size, self.min_score = min_face_size, max_side, batch_size, min_score
        self._mtcnn_min_face = min(min_face_size, MTCNN_MIN_FACE)  # beyond it the photo is shrunk (_shrunk)
        self._mtcnn = None

    @property
    def mtcnn(self):
        if self._mtcnn is None:  # the three networks load from the package's own files
            from mtcnn import MTCNN
            self._mtcnn = MTCNN()
        return self._mtcnn

    def detect(self, photos):
        photos = [as_rgb(p) for p in photos]
        scaled, factors = zip(*(self._shrunk(p) for p in photos)) if photos else ((), ())
        found = [None] * len(photos)
        order = sorted(range(len(photos)), key=lambda i: scaled[i].shape[:2])  # similar sizes batch together
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            for i, faces in zip(chunk, self._detect_batch([scaled[i] for i in chunk])):
                found[i] = [self._face(f, factors[i]) for f in faces if f["confidence"] >= self.min_score]
                found[i].sort(key=lambda f: -f.score)
        return found

    def _shrunk(self, photo):
        h, w = photo.shape[:2]
        # mtcnn 1.0.0 sizes its image pyramid as if min_face_size were at most 20: a larger one makes its last levels
        # smaller than the 12-pixel network and it finds nothing. A larger minimum shrinks the photo instead (a
        # face of min_face_size becomes one of 20 pixels), which is also what makes it faster.
        factor = max(max(h, w) / self.max_side, self.min_face_size / MTCNN_MIN_FACE)
        if factor <= 1:
            return photo, 1.0
        size = (max(1, round(h / factor)), max(1, round(w / factor)))
        small = tf.image.resize(photo, size, method="area", antialias=True)
        return tf.cast(tf.round(small), tf.uint8).numpy(), factor

    def _detect_batch(self, photos):
        try:
            # top-left padding: mtcnn 1.0.0 subtracts the k-th photo's centring offsets from the k-th photo *that has
            # a face*, so a photo without faces shifts every later photo's faces; top-left padding has no offsets
            faces = self.mtcnn.detect_faces(list(photos), min_face_size=self._mtcnn_min_face, box_format="xywh",
                                            batch_stack_justification="topleft")
        except (tf.errors.InvalidArgumentError, ValueError):  # MTCNN's "no proposal" on an empty pyramid
            faces = None
        if faces is None or len(faces) != len(photos):
            return [self.mtcnn.detect_faces(p, min_face_size=self._mtcnn_min_face, box_format="xywh") for p in photos]
        return faces

    @staticmethod
    def _face(found, factor):
        marks = np.array([found["keypoints"][n] for n in LANDMARKS], np.float64) * factor
        box = tuple(float(v) * factor for v in found["box"])
        return Face(box, marks, float(found["confidence"]))
