"""Where the five landmarks sit in the training crops: the canonical template that alignment maps faces onto.

For each training set, a sample of its crops is enlarged to 96 px (the detector's landmarks are whole pixels),
framed in a grey border of half the crop on each side (FER2013's crops cut through the forehead and chin, and a
detector needs some margin), and given to MTCNN; each found face's landmarks, as fractions of its crop's width and
height, are collected. Prints, per set, how many faces were found and the median of each landmark, then the mean of
the sets' medians made left-right symmetric, which is ``kfacemtl.data.alignment.TEMPLATE``. A benchmark measures and
prints; it asserts nothing.

    python -m benchmarks.alignment_template [--faces 1000] [--data ../shared/data]
"""

import argparse
import os
import time

import numpy as np
import tensorflow as tf

from benchmarks.common import ROOT
from kfacemtl.data import make_source
from kfacemtl.data.alignment import LANDMARKS, TEMPLATE, landmarks_in_crop
from kfacemtl.data.detection import MTCNNDetector

SETS = {"utkface": "utkface:{data}/utkface/UTKFace?split=train",
        "fer2013": "fer2013:{data}/fer2013?usage=Training"}
ENLARGED = 96  # crop side before detection


def crop_landmarks(paths, detector, batch=32):
    """``(found, (N, 5, 2))``: how many crops had a face, and each found face's landmarks as fractions of its
    crop (the most confident face per crop)."""
    pad = ENLARGED // 2
    marks, found = [], 0
    for start in range(0, len(paths), batch):
        photos = []
        for p in paths[start:start + batch]:
            img = tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False)
            img = tf.cast(tf.round(tf.image.resize(img, (ENLARGED, ENLARGED))), tf.uint8).numpy()
            photos.append(np.pad(img, ((pad, pad), (pad, pad), (0, 0)), constant_values=128))
        for faces in detector.detect(photos):
            if faces:
                found += 1
                marks.append(landmarks_in_crop((faces[0].landmarks - pad)[None], (ENLARGED, ENLARGED))[0])
    return found, np.array(marks)


def symmetric(template):
    """``template`` made left-right symmetric: each pair (eyes, mouth corners) mirrored about x = 0.5 and averaged
    with its partner, the nose moved onto the middle.

    Example:
        >>> symmetric(np.array([[0.3, 0.3], [0.8, 0.4], [0.6, 0.5], [0.3, 0.7], [0.7, 0.7]])).tolist()[:3]
        [[0.25, 0.35], [0.75, 0.35], [0.5, 0.5]]
    """
    t = np.array(template, np.float64)
    for left, right in ((0, 1), (3, 4)):
        x, y = (t[left, 0] + 1 - t[right, 0]) / 2, (t[left, 1] + t[right, 1]) / 2
        t[left], t[right] = (x, y), (1 - x, y)
    t[2, 0] = 0.5
    return t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--faces", type=int, default=1000, help="crops sampled per training set")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    detector = MTCNNDetector(min_face_size=20, min_score=0.5)
    medians = {}
    print(f"{args.faces} crops per set (seed {args.seed}); landmarks as (x, y) fractions of the crop; median over "
          f"the faces found\n")
    print(f"{'set':9} {'found':>11}  " + "  ".join(f"{n:>14}" for n in LANDMARKS) + "   seconds")
    for name, spec in SETS.items():
        try:
            source = make_source(spec.format(data=args.data))
        except (FileNotFoundError, ValueError) as e:
            raise SystemExit(f"{name}: {e} (pass --data or set KFACEMTL_DATA)")
        paths = np.asarray(source.paths())
        rows = np.random.default_rng(args.seed).choice(len(paths), min(args.faces, len(paths)), replace=False)
        start = time.perf_counter()
        found, marks = crop_landmarks(list(paths[np.sort(rows)]), detector)
        medians[name] = np.median(marks, axis=0)
        cells = "  ".join(f"({x:.3f}, {y:.3f})" for x, y in medians[name])
        print(f"{name:9} {found:>5}/{len(rows):<5}  {cells}   {time.perf_counter() - start:.0f}")
    mean = symmetric(np.mean(list(medians.values()), axis=0))
    print(f"{'template':9} {'':11}  " + "  ".join(f"({x:.3f}, {y:.3f})" for x, y in mean))
    print(f"{'in use':9} {'':11}  " + "  ".join(f"({x:.3f}, {y:.3f})" for x, y in TEMPLATE))
    print("\ntemplate: the mean of the sets' medians, made left-right symmetric (a face and its mirror image are "
          "cut alike); as TEMPLATE:\n" + np.array2string(mean.round(4), separator=", "))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
