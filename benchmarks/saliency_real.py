"""Where the expression head looks on real faces: the share of each saliency method's map that falls on the inner
face, for each feature-map layer of the CAM methods.

On CK+ peak frames (posed expressions, 128x128 lab crops), MTCNN's five landmarks mark each face; the inner face is
the box from half an eye-distance outside the eyes and 0.6 of it above them down to 0.4 of it below the mouth
(brows, eyes, nose, mouth: where the action units act). Each map's score is (its mass inside that box) / (the box's
share of the image): 1 is no preference, more is attention on the face. Settings are chosen on the training
subjects and reported on the test subjects (``--split``). A benchmark measures and prints; it asserts nothing.

    python -m benchmarks.saliency_real runs/real_mtl --split train      # choosing
    python -m benchmarks.saliency_real runs/real_mtl --split test       # reporting
"""

import argparse
import os
import time

import numpy as np

from benchmarks.common import ROOT
from kfacemtl.analysis.explain import explain, last_conv_layer, load_images, region_ratio
from kfacemtl.data import make_source
from kfacemtl.data.detection import MTCNNDetector
from kfacemtl.models import load_model, model_file
from kfacemtl.tables import text_table


def inner_face_masks(paths, size) -> tuple[np.ndarray, np.ndarray]:
    """``(found, masks)``: which images had a face, and for those a boolean ``size`` mask of the inner face."""
    import tensorflow as tf
    detector = MTCNNDetector()
    photos = [tf.io.decode_image(tf.io.read_file(p), channels=3, expand_animations=False).numpy() for p in paths]
    found, masks = [], []
    for photo, faces in zip(photos, detector.detect(photos)):
        found.append(bool(faces))
        if not faces:
            continue
        (lx, ly), (rx, ry), _, (mlx, mly), (mrx, mry) = faces[0].landmarks
        d = np.hypot(rx - lx, ry - ly)
        top, bottom = min(ly, ry) - 0.6 * d, max(mly, mry) + 0.4 * d
        left, right = min(lx, mlx) - 0.5 * d, max(rx, mrx) + 0.5 * d
        h, w = photo.shape[:2]
        yy, xx = np.mgrid[0:size[0], 0:size[1]]
        xx, yy = (xx + 0.5) * w / size[1], (yy + 0.5) * h / size[0]
        masks.append((xx >= left) & (xx <= right) & (yy >= top) & (yy <= bottom))
    return np.array(found), np.array(masks)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a run directory or .keras file with an expression head (e.g. runs/real_mtl)")
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--split", default="train", choices=["train", "test"], help="CK+ subjects: train to choose, "
                                                                             "test to report")
    ap.add_argument("--layers", nargs="+", help="CAM layers to compare (default: the automatic one and the last "
                                                "ReLU of each shared block)")
    ap.add_argument("--head", default="expression")
    args = ap.parse_args(argv)
    model = load_model(model_file(args.model), compile=False)
    size = tuple(model.input_shape[1:3])
    source = make_source(f"ckplus:{args.data}/ckplus_au?split={args.split}&frames=peak")
    paths = list(source.paths())
    found, masks = inner_face_masks(paths, size)
    paths = [p for p, f in zip(paths, found) if f]
    images = load_images(paths, size)
    auto = last_conv_layer(model, args.head)
    relus = [layer.name for layer in model.backbone.layers if "relu" in layer.name and "_block" not in layer.name]
    blocks = {}
    for name in relus:  # the last ReLU of each shared block
        blocks[name.split("_")[0]] = name
    layers = args.layers or [auto] + [name for name in blocks.values() if name != auto][::-1]
    print(f"model {args.model}; head {args.head} (each face's predicted class); CK+ {args.split} subjects, "
          f"{len(paths)} peak frames with a face found (of {len(found)}); inner-face box covers "
          f"{masks.mean():.0%} of the image on average\n")
    rows = []
    for method, layer in [("saliency", None)] + [(m, layer) for m in ("gradcam++", "scorecam") for layer in layers]:
        start = time.perf_counter()
        maps = explain(model, images, args.head, method=method, layer=layer)
        ratio = region_ratio(maps, masks)
        share = np.nanmean([(m * k).sum() / m.sum() for m, k in zip(maps, masks) if m.sum() > 0])
        shape = "x".join(str(v) for v in (model.backbone.get_layer(layer).output.shape[1:3] if layer else size))
        rows.append((method, layer or "(input gradients)", shape, f"{np.nanmean(ratio):.2f}", f"{share:.0%}",
                     f"{np.mean(ratio > 1):.0%}", f"{time.perf_counter() - start:.0f}"))
        print(text_table(["method", "layer", "map", "ratio", "mass on face", "faces > 1", "seconds"], rows[-1:]
                         ).splitlines()[-1], flush=True)
    print("\n" + text_table(["method", "layer", "map", "ratio", "mass on face", "faces > 1", "seconds"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
