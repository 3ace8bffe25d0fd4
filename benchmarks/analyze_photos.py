"""From photos to answers on real photos: how many faces are found, what alignment does to expression accuracy, and
where ``analyze``'s time goes.

1. **Detection**: the share of photos where MTCNN finds a face: LFW expressions' 350x350 photos (one person each)
   and ORL's 92x112 faces (40 people, 10 images each).
2. **Accuracy through analyze**: expression accuracy on the LFW photos as the dataset gives them (each whole photo
   resized to the model's input, as ``kfacemtl evaluate`` reads the set) against the same photos through ``analyze``
   (detected, aligned; the most confident face). A photo where no face is found counts as wrong.
3. **Throughput**: photos/s and faces/s of ``analyze`` on a sample of the LFW photos, one photo at a time and in
   batches of photos, with the share of reading, detecting, aligning and answering.

A benchmark measures and prints; it asserts nothing.

    python -m benchmarks.analyze_photos runs/real_mtl [--data ../shared/data] [--throughput-photos 128]
"""

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.common import ROOT
from kfacemtl.analysis.evaluation import evaluate_sources
from kfacemtl.analysis.photos import analyze
from kfacemtl.data import make_source
from kfacemtl.data.detection import MTCNNDetector
from kfacemtl.data.images import declared_size
from kfacemtl.models import load_model, model_file
from kfacemtl.tables import text_table


def lfw_photos(data: Path) -> pd.DataFrame:
    """The LFW-expressions rows whose image is a whole 350x350 photo (not one of the set's small crops)."""
    rows = pd.read_csv(data / "lfw_expressions" / "labels.csv")
    rows["file"] = [str(data / "lfw_expressions" / p) for p in rows["path"]]
    sizes = [tuple(declared_size(Path(f).read_bytes()).numpy()) for f in rows["file"]]
    return rows[[s == (350, 350) for s in sizes]].reset_index(drop=True)


def detection_rates(data: Path, detector) -> list:
    """``[(set, photos, found, seconds)]`` for the LFW photos and ORL's faces."""
    import tensorflow as tf
    sets = {"LFW photos (350x350)": list(lfw_photos(data)["file"]),
            "ORL (92x112)": sorted(str(p) for p in (data / "orl_faces").rglob("*.png"))}
    out = []
    for name, files in sets.items():
        start, found = time.perf_counter(), 0
        for i in range(0, len(files), 32):
            photos = [tf.io.decode_image(tf.io.read_file(f), channels=3, expand_animations=False).numpy()
                      for f in files[i:i + 32]]
            found += sum(bool(f) for f in detector.detect(photos))
        out.append((name, len(files), found, time.perf_counter() - start))
    return out


def expression_accuracy(model, photos: pd.DataFrame, detector) -> dict:
    """Accuracy of the whole photos resized and of the photos through analyze, on the same photos."""
    import tempfile
    listing = Path(tempfile.mkdtemp()) / "lfw.csv"
    photos[["path", "expression"]].to_csv(listing, index=False)
    root = Path(photos["file"][0]).parents[1]  # lfw_expressions/, which the paths are relative to
    whole = evaluate_sources(model, [make_source(f"csv:{listing}?domain=lfw&name=lfw-photos&root={root}")])
    records = analyze(list(photos["file"]), model, detector=detector, progress=True)
    predicted = [r["faces"][0]["answers"]["expression"]["label"] if r["faces"] else -1 for r in records]
    return {"n": len(photos), "whole": whole["lfw-photos"]["expression"]["accuracy"],
            "analyze": float(np.mean(np.array(predicted) == photos["expression"].to_numpy())),
            "no_face": sum(not r["faces"] for r in records)}


def throughput(model, files, detector, per_batch) -> dict:
    timings = {}
    start = time.perf_counter()
    records = analyze(files, model, detector=detector, photos_per_batch=per_batch, progress=False, timings=timings)
    seconds = time.perf_counter() - start
    faces = sum(len(r["faces"]) for r in records)
    return {"photos_per_s": len(files) / seconds, "faces_per_s": faces / seconds, "seconds": seconds,
            **{k: v / seconds for k, v in timings.items()}}


def detector_settings(files, settings) -> list:
    """``[(min_face_size, max_side, photos/s, share with a face)]``: the detector alone on ``files`` (16 per call)
    under each setting."""
    import tensorflow as tf
    photos = [tf.io.decode_image(tf.io.read_file(f), channels=3, expand_animations=False).numpy() for f in files]
    out = []
    for min_face, max_side in settings:
        detector = MTCNNDetector(min_face_size=min_face, max_side=max_side)
        detector.detect(photos[:2])  # warm-up
        start = time.perf_counter()
        found = detector.detect(photos)
        out.append((min_face, max_side, len(photos) / (time.perf_counter() - start),
                    sum(bool(f) for f in found) / len(photos)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a run directory or .keras file with an expression head (e.g. runs/real_mtl)")
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--throughput-photos", type=int, default=128, help="LFW photos timed (0: skip)")
    ap.add_argument("--photos-per-batch", type=int, default=16, help="photos analysed together in the batched run")
    ap.add_argument("--parts", nargs="+", default=["detection", "accuracy", "throughput", "detector"],
                    choices=["detection", "accuracy", "throughput", "detector"], help="what to measure")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "lfw_expressions" / "labels.csv").is_file():
        raise SystemExit(f"LFW expressions not found under {data} (pass --data or set KFACEMTL_DATA)")
    model = load_model(model_file(args.model), compile=False)
    detector = MTCNNDetector()
    print(f"model {args.model}; detector MTCNN (min_face_size {detector.min_face_size}, min_score "
          f"{detector.min_score}, max_side {detector.max_side})\n")
    if "detection" in args.parts:
        rates = detection_rates(data, detector)
        print(text_table(["set", "photos", "with a face", "share", "seconds"],
                         [(n, p, f, f"{f / p:.1%}", f"{s:.0f}") for n, p, f, s in rates]) + "\n")
    photos = lfw_photos(data)
    if "accuracy" in args.parts:
        acc = expression_accuracy(model, photos, detector)
        print(text_table(["LFW photos", "faces", "expression accuracy"],
                         [("whole photo resized (as the dataset gives it)", acc["n"], f"{acc['whole']:.4f}"),
                          (f"through analyze (detected, aligned; {acc['no_face']} without a face count as wrong)",
                           acc["n"], f"{acc['analyze']:.4f}")]))
        print(f"difference (analyze - whole): {100 * (acc['analyze'] - acc['whole']):+.1f} points\n")
    if "detector" in args.parts and args.throughput_photos:
        sweep = detector_settings(list(photos["file"][:args.throughput_photos]),
                                  [(20, 1024), (40, 1024), (80, 1024), (20, 256), (40, 256)])
        print(f"the detector alone on {args.throughput_photos} LFW photos (350x350), 16 per call")
        print(text_table(["min_face_size", "max_side", "photos/s", "with a face"],
                         [(m, x, f"{r:.2f}", f"{f:.1%}") for m, x, r, f in sweep]) + "\n")
    if "throughput" in args.parts and args.throughput_photos:
        files = list(photos["file"][:args.throughput_photos])
        analyze(files[:4], model, detector=detector, progress=False)  # warm-up: traces the networks
        rows = []
        for label, per_batch in (("one photo at a time", 1), (f"{args.photos_per_batch} photos per batch",
                                                              args.photos_per_batch)):
            t = throughput(model, files, detector, per_batch)
            rows.append((label, f"{t['photos_per_s']:.2f}", f"{t['faces_per_s']:.2f}", f"{t['read']:.0%}",
                         f"{t['detect']:.0%}", f"{t['align']:.0%}", f"{t['answer']:.0%}", f"{t['seconds']:.0f}"))
        print(f"analyze throughput on {len(files)} LFW photos (share of the time per part)")
        print(text_table(["mode", "photos/s", "faces/s", "read", "detect", "align", "answer", "seconds"], rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
