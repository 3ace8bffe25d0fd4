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
(a) / (b) (decoding should cost ≤ 10 %). Every call's outputs are copied to the host, as a
server's reply is.

A server answers several requests at once (TF Serving runs each request on a thread of its own),
so with ``--streams N`` (default 8) the same run also measures throughput at batch 64 with N
threads calling (a), (b) and (d) concurrently: on a GPU one request's decoding (on the CPU cores)
overlaps another's forward pass (on the GPU), which one stream of calls cannot show.

The JPEGs of one call all have one size (112 px by default), which the bytes signature resizes as one batch
(``pipeline.resize_batch``, on the GPU where there is one); a row for (a) with JPEGs of 12 sizes around it
shows the other case, where each image is resized alone on the CPU.

``--xla`` adds (a), (b) and (d) exported with their forward pass compiled with XLA (``kfacemtl export
--jit-compile``); the last row times the bytes signature's decoding alone (``export.decode_batch``), what (a)
does before the network.

A benchmark measures and prints; it asserts nothing.

    python -m benchmarks.serving [--seconds 2] [--image-size 64] [--jpeg-size 112] [--streams 8] [--xla]
        [--tasks age,gender,race,expression,action_units,valence_arousal]
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import tensorflow as tf

from kfacemtl.data import synthetic
from kfacemtl.serving import decode_batch, export_model
from kfacemtl.models import build_model
from kfacemtl.data import decode_image
from kfacemtl.tasks import resolve_tasks

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


def _on_host(out):
    """The outputs of a signature as NumPy arrays: waits for the device, as a server's reply does."""
    return tf.nest.map_structure(lambda t: t.numpy(), out)


def _concurrent(call, x, streams: int, seconds: float) -> float:
    """Images/s of ``streams`` threads each calling ``call(x)`` back to back for ``seconds``."""
    import threading
    for _ in range(3):
        call(x)
    counts = [0] * streams
    stop = time.perf_counter() + seconds

    def worker(i):
        while time.perf_counter() < stop:
            call(x)
            counts[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(streams)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) * len(x) / (time.perf_counter() - start)


def _exports(tasks, size, work, jit_compile: bool):
    """The multi-task export's two signatures and the K single-task exports' float signatures."""
    tag = "_xla" if jit_compile else ""
    mtl = build_model(tasks, input_shape=size)
    loaded = tf.saved_model.load(str(export_model(mtl, work, f"mtl{tag}", warmup=False, jit_compile=jit_compile)))
    singles = [tf.saved_model.load(str(export_model(build_model([t], input_shape=size), work, f"stl_{t.name}{tag}",
                                                    warmup=False, jit_compile=jit_compile))).signatures["serving_float"]
               for t in tasks]
    return mtl, loaded.signatures["serving_default"], loaded.signatures["serving_float"], singles


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seconds", type=float, default=2.0, help="measuring time per cell")
    ap.add_argument("--image-size", type=int, default=64, help="model input size")
    ap.add_argument("--jpeg-size", type=int, default=112, help="size of the encoded images sent to (a)")
    ap.add_argument("--streams", type=int, default=8, help="concurrent callers for the batch-64 throughput with "
                                                           "several requests in flight (0: not measured)")
    ap.add_argument("--xla", action="store_true", help="also export every model with its forward pass compiled "
                                                       "with XLA (export --jit-compile) and measure (a), (b), (d) so")
    ap.add_argument("--tasks", default="age,gender,race,expression,action_units,valence_arousal",
                    help="the tasks (K single-task models, one per task)")
    args = ap.parse_args(argv)

    tasks = resolve_tasks(args.tasks.split(","))
    size = (args.image_size, args.image_size, 3)
    work = tempfile.mkdtemp(prefix="kfacemtl-serving-bench-")
    faces, _ = synthetic.generate("street", 64, split="test", seed=0)
    big = tf.image.resize(faces, (args.jpeg_size, args.jpeg_size)).numpy().astype("uint8")
    jpegs = [tf.io.encode_jpeg(im, quality=90).numpy() for im in big]
    # the same faces at 12 sizes around --jpeg-size: a batch of mixed sizes is resized image by image
    sizes = args.jpeg_size + np.arange(-12, 12, 2)
    mixed = [tf.io.encode_jpeg(tf.cast(tf.image.resize(face, (int(sizes[i % 12]),) * 2), tf.uint8),
                               quality=90).numpy() for i, face in enumerate(faces)]
    floats = tf.stack([decode_image(j, size[:2]) for j in jpegs]).numpy()  # the same images, decoded

    def reps(arr, n):
        return arr[np.arange(n) % len(arr)]

    def encoded(blobs):  # n encoded images, repeating the list
        blobs = np.array(blobs, dtype=object)
        return lambda n: tf.constant(reps(blobs, n))

    as_bytes, as_mixed, as_float = encoded(jpegs), encoded(mixed), lambda n: tf.constant(reps(floats, n))
    decode = tf.function(lambda x: decode_batch(x, size[:2]), input_signature=[tf.TensorSpec([None], tf.string)])
    k = len(tasks)
    sets = {"": _exports(tasks, size, work, False)}
    if args.xla:
        sets[", XLA"] = _exports(tasks, size, work, True)
    variants = {}
    for suffix, (mtl, sig_bytes, sig_float, singles) in sets.items():
        variants[f"(a) SavedModel bytes signature{suffix}"] = (
            lambda x, f=sig_bytes: _on_host(f(images=x)), as_bytes)
        variants[f"(b) SavedModel float signature{suffix}"] = (
            lambda x, f=sig_float: _on_host(f(images=x)), as_float)
        if not suffix:
            variants[f"(a) bytes signature, JPEGs of 12 sizes ({sizes[0]}-{sizes[-1]} px)"] = (
                lambda x, f=sig_bytes: _on_host(f(images=x)), as_mixed)
            variants["(c) keras model.predict"] = (
                lambda x, m=mtl: m.predict(x, batch_size=len(x), verbose=0), lambda n: reps(floats, n))
        variants[f"(d) {k} single-task models{suffix}"] = (
            lambda x, fs=singles: [_on_host(f(images=x)) for f in fs], as_float)
    variants["decoding alone (the bytes signature's decode_batch)"] = (lambda x: decode(x)[0].numpy(), as_bytes)
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
        if args.streams > 0 and not name.startswith("(c)"):  # model.predict is not for concurrent callers
            cells["streams"] = _concurrent(call, make(64), args.streams, args.seconds)
        rows[name] = cells
        print(f"  measured {name}", file=sys.stderr, flush=True)
    streams = [f"batch 64, {args.streams} streams"] if args.streams > 0 else []
    header = "| variant | p50 ms (batch 1) | p99 ms (batch 1) | " + " | ".join(
        [f"images/s batch {b}" for b in BATCHES] + streams) + " |"
    print(header)
    print("|---" * (3 + len(BATCHES) + len(streams)) + "|")
    columns = list(BATCHES) + (["streams"] if streams else [])
    for name, c in rows.items():
        print(f"| {name} | {c['p50']:.2f} | {c['p99']:.2f} | "
              + " | ".join(f"{c[col]:.0f}" if col in c else "—" for col in columns) + " |")

    def label(col):
        return f"batch {col}" if col != "streams" else f"{args.streams} streams"

    for suffix in sets:
        a, b_, d = (rows[f"{v}{suffix}"] for v in ("(a) SavedModel bytes signature", "(b) SavedModel float signature",
                                                   f"(d) {k} single-task models"))
        what = f" ({suffix[2:]} exports)" if suffix else ""
        print(f"\nratios{what}, same run: one multi-task pass vs {k} single-task models, (b)/(d) "
              f"[target ≥ {0.8 * k:.1f}]: " + ", ".join(f"{label(c)} {b_[c] / d[c]:.2f}" for c in columns))
        print(f"decoding in the graph{what}, (a)/(b) [target ≥ 0.90]: "
              + ", ".join(f"{label(c)} {a[c] / b_[c]:.2f}" for c in columns))


    return 0


if __name__ == "__main__":
    sys.exit(main())
