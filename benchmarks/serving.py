"""Serving speed: one multi-task forward pass against K single-task models, and the cost of decoding.

In one run, on the same images (synthetic faces encoded as JPEG), measures latency p50/p99 at
batch 1 and throughput at batch 1, 8 and 64 of:

  (a) the exported SavedModel's ``serving_default`` (encoded bytes in, decoding in the graph),
  (b) its ``serving_float`` signature (decoded float tensors in),
  (c) ``model.predict`` of the Keras model,
  (d) K exported single-task models with the same backbone, one per task, each called through
      its float signature (the way deepface answers age, gender, race and emotion with four
      networks): one "answer" is all K calls.

Then prints the ratios the project's claims rest on: (b) / (d) (target ≥ 0.8 × K) and
(a) / (b) (decoding should cost ≤ 10 %). A benchmark measures and prints; it asserts nothing.

    python benchmarks/serving.py [--seconds 2] [--image-size 64] [--jpeg-size 112]
"""

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from kfacemtl import synthetic  # noqa: E402
from kfacemtl.export import export_model  # noqa: E402
from kfacemtl.model import build_model  # noqa: E402
from kfacemtl.pipeline import decode_image  # noqa: E402
from kfacemtl.tasks import resolve_tasks  # noqa: E402

BATCHES = (1, 8, 64)


def _measure(call, make_batch, batch: int, seconds: float, latencies: bool):
    """Throughput (images/s) and, at batch 1, per-call latencies (ms) of ``call(make_batch(batch))``."""
    x = make_batch(batch)
    for _ in range(3):  # warm up (tracing, allocation)
        call(x)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < seconds or len(times) < 5:
        t = time.perf_counter()
        call(x)
        times.append(time.perf_counter() - t)
    rate = batch * len(times) / sum(times)
    return rate, (np.array(times) * 1000 if latencies else None)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per cell")
    ap.add_argument("--image-size", type=int, default=64, help="model input size")
    ap.add_argument("--jpeg-size", type=int, default=112, help="size of the encoded images sent to (a)")
    args = ap.parse_args()

    tasks = resolve_tasks(["age", "gender", "race", "expression", "action_units", "valence_arousal"])
    size = (args.image_size, args.image_size, 3)
    work = tempfile.mkdtemp(prefix="kfacemtl-serving-bench-")
    mtl = build_model(tasks, input_shape=size)
    mtl_dir = export_model(mtl, work, "mtl", warmup=False)
    singles = [tf.saved_model.load(str(export_model(build_model([t], input_shape=size), work, f"stl_{t.name}",
                                                       warmup=False))).signatures["serving_float"] for t in tasks]
    loaded = tf.saved_model.load(str(mtl_dir))
    sig_bytes, sig_float = loaded.signatures["serving_default"], loaded.signatures["serving_float"]

    faces, _ = synthetic.generate("street", 64, split="test", seed=0)
    big = tf.image.resize(faces, (args.jpeg_size, args.jpeg_size)).numpy().astype("uint8")
    jpegs = [tf.io.encode_jpeg(im, quality=90).numpy() for im in big]
    floats = tf.stack([decode_image(j, size[:2]) for j in jpegs]).numpy()  # the same images, decoded

    def reps(arr, n):
        return arr[np.arange(n) % len(arr)]

    variants = {
        "(a) SavedModel bytes signature": (lambda x: sig_bytes(images=x),
                                           lambda n: tf.constant(reps(np.array(jpegs, dtype=object), n))),
        "(b) SavedModel float signature": (lambda x: sig_float(images=x), lambda n: tf.constant(reps(floats, n))),
        "(c) keras model.predict": (lambda x: mtl.predict(x, batch_size=len(x), verbose=0),
                                    lambda n: reps(floats, n)),
        f"(d) {len(tasks)} single-task models": (lambda x: [s(images=x) for s in singles],
                                                 lambda n: tf.constant(reps(floats, n))),
    }
    print(f"device: {', '.join(d.name for d in tf.config.list_logical_devices())}; "
          f"TF {tf.__version__}; {os.cpu_count()} CPU cores; input {size}, JPEG {args.jpeg_size} px; "
          f"{args.seconds:g} s per cell\n")
    rows = {}
    for name, (call, make) in variants.items():
        cells = {}
        for b in BATCHES:
            rate, lat = _measure(call, make, b, args.seconds, latencies=(b == 1))
            cells[b] = rate
            if lat is not None:
                cells["p50"], cells["p99"] = np.percentile(lat, 50), np.percentile(lat, 99)
        rows[name] = cells
        print(f"  measured {name}", file=sys.stderr, flush=True)
    header = "| variant | p50 ms (batch 1) | p99 ms (batch 1) | " + " | ".join(
        f"images/s batch {b}" for b in BATCHES) + " |"
    print(header)
    print("|---" * (3 + len(BATCHES)) + "|")
    for name, c in rows.items():
        print(f"| {name} | {c['p50']:.2f} | {c['p99']:.2f} | " + " | ".join(f"{c[b]:.0f}" for b in BATCHES) + " |")
    a, b_, d = (rows[k] for k in list(rows)[:2] + [list(rows)[3]])
    k = len(tasks)
    print(f"\nratios (same run): one multi-task pass vs {k} single-task models, (b)/(d) "
          f"[target ≥ {0.8 * k:.1f}]: " + ", ".join(f"batch {b} {b_[b] / d[b]:.2f}" for b in BATCHES))
    print("decoding in the graph, (a)/(b) [target ≥ 0.90]: "
          + ", ".join(f"batch {b} {a[b] / b_[b]:.2f}" for b in BATCHES))


if __name__ == "__main__":
    main()
