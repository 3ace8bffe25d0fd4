"""Training and inference throughput: does the input pipeline keep up with the model, and how busy is the chip?

In one run, on one machine, for the real-data setting (configs/real_utk_fer.yaml: UTKFace + FER2013 at 48x48, the
default backbone, batch 64) or the synthetic demo setting (--setting synthetic, no data needed):

  training images/s   model.fit with the full pipeline: file sources decoded and resized once into the in-memory
                      cache (the default, training.cache: auto), then augmentation, mixing, batching; and with
                      cache: none (every step decodes its files again)
  model alone         model.fit on one batch held in memory and repeated (the same train step, no input work);
                      also compiled with XLA (jit_compile) and in mixed precision (mixed_float16); and, with
                      variant cached_xla, the full pipeline with XLA
  pipeline alone      the input pipeline iterated without a model (what it can feed at most), both ways
  FLOPs               the model's forward FLOPs per image (2 x multiply-adds of its conv and dense layers); a
                      training step counts 3x (forward, and a backward of about twice the forward)
  model-FLOP          achieved training FLOP/s over the peak FLOP/s of a large matmul timed in the same run
  utilisation         (2048^3 on a CPU, 8192^3 on a GPU; float32, or float16 with --precision mixed_float16)
  inference images/s  the model on in-memory batches of 64 (training=False)
  peak memory         the process's peak resident memory (ru_maxrss) at the end; on a GPU also the GPU's peak

--precision mixed_float16 builds every network of the table (training, inference) in mixed precision, so a GPU's
table can be printed with and without it; --batch-size overrides the config's batch (a GPU is per-step bound at 64).

Each training rate is timed in a fresh process (so no other dataset's threads run beside it), --repeats times
interleaved (files, cache, model alone and its XLA and float16 variants), medians: one timing on a shared machine can
be off by a third. The pipeline keeps up when training with it runs at >= 95 % of the model alone. Written to --out:
results.txt, results.json. A benchmark measures and prints; it asserts nothing.

    python -m benchmarks.throughput [--setting real|synthetic] [--steps 40] [--repeats 3] [--warmup 10]
        [--in-process] [--variants files,cached,alone,alone_xla,alone_mixed,cached_xla] [--out runs/throughput]
        [--precision float32|mixed_float16] [--batch-size N]

``--one A,B,...`` times training variants one after the other in this process and prints one JSON line each and a
table comparing them (images/s, the ratio to the first, and each pipeline variant's share of the model alone with
the same step). A variant is a base, ``files``, ``cached`` or ``alone``, and tags joined by ``_``: ``xla``,
``mixed`` (mixed_float16), ``step`` (augmentation in the train step: training.augment_on: step), ``dev`` (batches
prefetched to the GPU: pipeline.prefetch_to_gpu), ``speN`` (N steps per call: training.steps_per_execution), e.g.
``--one alone_xla_step_dev_spe8,cached_xla_step_dev_spe8`` (the defaults on a GPU).
"""

import argparse
import json
import os
import resource
import sys
import time
import warnings
from pathlib import Path

import keras
import numpy as np

from kfacemtl.training.config import load_config, resolve_config
from kfacemtl.analysis.evaluation import text_table
from kfacemtl.files import atomic_write_text
from kfacemtl.models import build_model, count_flops
from kfacemtl.data import make_dataset, prefetch_to_gpu
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training import build_sources, compile_model, demo_config
from benchmarks.common import ROOT, with_data_root

def pipeline_rate(ds, steps: int, warmup: int) -> float:
    """Images per second the input pipeline produces alone."""
    it = iter(ds)
    for _ in range(warmup):
        next(it)
    start, n = time.perf_counter(), 0
    for _ in range(steps):
        n += int(next(it)[0].shape[0])
    return n / (time.perf_counter() - start)


def matmul_size() -> int:
    """The peak's matmul size: 2048 on a CPU, 8192 on a GPU (a small product there measures launch overhead)."""
    import tensorflow as tf
    return 8192 if tf.config.list_physical_devices("GPU") else 2048


def matmul_peak(n: int | None = None, reps: int = 10, dtype: str = "float32") -> float:
    """FLOP/s of an n x n matmul in ``dtype`` (n: :func:`matmul_size` by default), the best of ``reps`` timed runs
    (after one untimed)."""
    import tensorflow as tf
    n = n or matmul_size()
    a = tf.cast(tf.random.normal((n, n)), dtype)
    b = tf.cast(tf.random.normal((n, n)), dtype)
    f = tf.function(lambda a, b: tf.reduce_sum(tf.cast(tf.matmul(a, b), "float32")))  # a scalar back, not n^2
    f(a, b).numpy()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        f(a, b).numpy()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def inference_rate(model, image_shape, batch: int = 64, steps: int = 30) -> float:
    """Images per second of the model on in-memory batches (training=False), after one untimed batch."""
    import tensorflow as tf
    x = tf.random.uniform((batch,) + tuple(image_shape))
    f = tf.function(lambda x: model(x, training=False))
    tf.nest.map_structure(lambda t: t.numpy(), f(x))
    start = time.perf_counter()
    for _ in range(steps):
        out = f(x)
    tf.nest.map_structure(lambda t: t.numpy(), out)
    return steps * batch / (time.perf_counter() - start)


VARIANTS = ("files", "cached", "alone", "alone_xla", "alone_mixed", "cached_xla")
TAGS = {"xla": "XLA", "mixed": "mixed_float16", "step": "augmented in the train step (not the pipeline)",
        "dev": "prefetch to the GPU (tf.data prefetch_to_device)", "speN": "N steps per call (steps_per_execution)"}


def parse_variant(name: str) -> dict:
    """A variant's name, ``BASE[_TAG...]``: BASE ``files``, ``cached`` or ``alone``, tags of :data:`TAGS`.

    Example:
        >>> parse_variant("cached_xla_step_spe8")["steps_per_execution"], parse_variant("alone")["xla"]
        (8, False)
    """
    base, *tags = name.split("_")
    spe = [t for t in tags if t.startswith("spe") and t[3:].isdigit() and int(t[3:]) > 0]
    unknown = set(tags) - set(TAGS) - set(spe)
    if base not in ("files", "cached", "alone") or unknown or len(spe) > 1:
        raise ValueError(f"variant {name!r}: expected files, cached or alone, then tags of "
                         f"{', '.join(TAGS)} joined by _")
    return {"base": base, "xla": "xla" in tags, "mixed": "mixed" in tags, "step": "step" in tags,
            "dev": "dev" in tags, "steps_per_execution": int(spe[0][3:]) if spe else 1}


def _setup(cfg: dict, model_overrides: dict):
    cfg = resolve_config(cfg)
    tasks = resolve_tasks(cfg["tasks"])
    tr, mc = cfg["training"], dict(cfg["model"], **model_overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sources = build_sources(cfg["sources"])
    common = dict(batch_size=tr["batch_size"], image_size=tuple(mc["input_shape"][:2]), training=True,
                  mixing=tr["mixing"], augment=tr["augment"], seed=tr["seed"])
    return tasks, tr, mc, sources, common


def one_variant(cfg: dict, variant: str, steps: int, warmup: int, model_overrides: dict,
                precision: str = "float32") -> dict:
    """Training images/s of one variant (see :func:`parse_variant`; in a process of its own, so no other
    dataset's threads run beside it): ``files`` (cache: none), ``cached`` (cache: auto), ``alone`` (one batch held
    in memory, repeated; with tag ``step`` the step still augments it), tags: XLA, mixed precision (also every
    variant with ``precision="mixed_float16"``), augmentation in the train step, prefetch to the GPU, several steps
    per call. ``steps`` and ``warmup`` are rounded up to whole calls."""
    import tensorflow as tf
    v = parse_variant(variant)
    tasks, tr, mc, sources, common = _setup(cfg, model_overrides)
    spe = v["steps_per_execution"]
    steps, warmup = -(-steps // spe) * spe, -(-warmup // spe) * spe
    start = time.perf_counter()
    ds = make_dataset(sources, tasks, cache="none" if v["base"] == "files" else "auto",
                      **dict(common, augment=common["augment"] and not v["step"]))
    built = time.perf_counter() - start
    if v["base"] == "alone":
        ds = tf.data.Dataset.from_tensors(next(iter(ds))).repeat()
    gpu = tf.config.list_physical_devices("GPU")
    if v["dev"]:  # (on a CPU: prefetch_to_device onto the CPU, the same work as kfacemtl's prefetch_to_gpu)
        ds = prefetch_to_gpu(ds) if gpu else ds.apply(tf.data.experimental.prefetch_to_device("/CPU:0", 2))
    mixed = v["mixed"] or precision == "mixed_float16"
    model = compile_model(build_model(tasks, **dict(mc, mixed_precision=mixed)), tr["optimizer"],
                          tr["learning_rate"], jit_compile=v["xla"], steps_per_execution=spe)
    if v["step"] and common["augment"]:
        model.set_augmentation(common["seed"])
    clock = StepClock(warmup)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # one fit: the first ``warmup`` steps (tracing) untimed
        model.fit(ds, epochs=1, steps_per_epoch=warmup + steps, verbose=0, callbacks=[clock])
    return {"variant": variant, "images_per_s": steps * tr["batch_size"] / clock.seconds, "dataset_seconds": built,
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "gpu_peak_mb": tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20 if gpu else None}


class StepClock(keras.callbacks.Callback):
    """Seconds from the start of step ``skip`` (after the untimed warm-up: tracing, compiling, filling the
    pipeline's buffers) to the last step's end, inside one ``fit``: the steady state, not ``fit``'s set-up and tear-down
    (closing a dataset iterator with parallel maps in flight sometimes took 5 s here, half of a 40-step timing)."""

    def __init__(self, skip: int = 0, clock=time.perf_counter):
        super().__init__()
        self.skip, self.clock = skip, clock

    def on_train_batch_begin(self, batch, logs=None):
        if batch == self.skip:
            self.start = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        if batch >= self.skip:
            self.seconds = self.clock() - self.start


def measure(cfg: dict, steps: int, warmup: int, repeats: int = 3, model_overrides: dict | None = None,
            child_args: list | None = None, variants=VARIANTS, precision: str = "float32") -> dict:
    """Every measure of the table. Training rates: each variant ``repeats`` times in a fresh process (interleaved,
    so a slow spell of the shared machine hits every variant), medians."""
    import subprocess
    import tensorflow as tf
    model_overrides = model_overrides or {}
    runs = {v: [] for v in variants}
    for _ in range(repeats):
        for v in variants:
            if child_args is None:  # --in-process: quicker, less isolated
                runs[v].append(one_variant(cfg, v, steps, warmup, model_overrides, precision))
                continue
            out = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--one", v, "--steps", str(steps),
                                  "--warmup", str(warmup), "--model", json.dumps(model_overrides), "--precision",
                                  precision] + child_args, capture_output=True, text=True, check=True, cwd=ROOT).stdout
            runs[v].append(json.loads(out.strip().splitlines()[-1]))
    med = {v: float(np.median([r["images_per_s"] for r in rs])) for v, rs in runs.items()}
    tasks, tr, mc, sources, common = _setup(cfg, model_overrides)
    cached, files = (make_dataset(sources, tasks, cache=c, **common) for c in ("auto", "none"))
    mixed = precision == "mixed_float16"
    model = build_model(tasks, **dict(mc, mixed_precision=mixed))
    size = matmul_size()
    flops, peak, full = count_flops(model), matmul_peak(size, dtype="float16" if mixed else "float32"), med["cached"]
    gpu_peaks = [r.get("gpu_peak_mb") for r in runs["cached"]]
    return {
        "sources": [s.name for s in sources], "batch_size": tr["batch_size"], "input_shape": list(mc["input_shape"]),
        "parameters": int(model.count_params()), "steps": steps, "warmup": warmup, "repeats": repeats,
        "runs": runs, "cache_seconds": float(np.median([r["dataset_seconds"] for r in runs["cached"]])),
        "train_images_per_s": full, "train_no_cache_images_per_s": med["files"],
        "model_alone_images_per_s": med["alone"], "pipeline_over_model": full / med["alone"],
        "model_alone_xla_images_per_s": med.get("alone_xla"), "model_alone_mixed_images_per_s": med.get("alone_mixed"),
        "no_cache_over_model": med["files"] / med["alone"], "train_xla_images_per_s": med.get("cached_xla"),
        "pipeline_alone_images_per_s": pipeline_rate(cached, steps, warmup),
        "pipeline_no_cache_alone_images_per_s": pipeline_rate(files, steps, warmup), "forward_flops_per_image": flops,
        "train_flops_per_s": 3 * flops * full, "matmul_peak_flops_per_s": peak,
        "model_flop_utilisation": 3 * flops * full / peak,
        "inference_images_per_s": inference_rate(model, mc["input_shape"]),
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs["cached"]),
        "peak_rss_no_cache_mb": max(r["peak_rss_mb"] for r in runs["files"]),
        "cpu_count": os.cpu_count(), "devices": [d.device_type for d in tf.config.list_physical_devices()],
        "precision": precision, "matmul_size": size, "gpu_peak_mb": max(gpu_peaks) if None not in gpu_peaks else None,
    }


def _alone_twins(variant: str) -> list:
    """The model-alone variants with the same step as ``variant``: base ``alone`` and the same tags (its batch
    prefetched to the GPU too: resident there), then without ``dev`` (copied from the host at every step)."""
    base, *tags = variant.split("_")
    same = "_".join(["alone"] + tags)
    return [same] + (["_".join(["alone"] + [t for t in tags if t != "dev"])] if "dev" in tags else [])


def compare_table(rows: list, precision: str = "float32") -> str:
    """Variants timed one after another (``--one a,b,c``): images/s, the ratio to the first variant, and for a
    pipeline variant the percentage of the model alone with the same step (same tags), where that was timed.

    Example:
        >>> rows = [{"variant": "alone", "images_per_s": 100.0}, {"variant": "cached", "images_per_s": 96.0}]
        >>> print(compare_table(rows))  # doctest: +NORMALIZE_WHITESPACE
        variant  what                          images/s  vs alone  % of the model alone, same step
        -------  ----------------------------  --------  --------  -------------------------------
        alone    float32                       100       1.00x
        cached   float32, decoded-image cache  96        0.96x     96.0 % of alone
    """
    rates = {r["variant"]: r["images_per_s"] for r in rows}
    first = rows[0]["variant"]
    out = []
    for r in rows:
        v, parsed = r["variant"], parse_variant(r["variant"])
        what = ["mixed_float16" if parsed["mixed"] else precision]
        what += {"files": ["no cache"], "cached": ["decoded-image cache"], "alone": []}[parsed["base"]]
        what += [TAGS[t].split(" (")[0] if t in TAGS else f"{t[3:]} steps per call" for t in v.split("_")[1:]
                 if t != "mixed"]
        share = ", ".join(f"{100 * r['images_per_s'] / rates[twin]:.1f} % of {twin}" for twin in _alone_twins(v)
                          if parsed["base"] != "alone" and twin in rates)
        out.append([v, ", ".join(what), f"{r['images_per_s']:.0f}", f"{r['images_per_s'] / rates[first]:.2f}x", share])
    return text_table(["variant", "what", "images/s", f"vs {first}", "% of the model alone, same step"], out)


def _against(rate, alone):
    return ["not measured", ""] if rate is None else [f"{rate:.0f} images/s", f"{rate / alone:.2f}x the model alone"]


def format_table(r: dict, setting: str) -> str:
    alone = r["model_alone_images_per_s"]
    rows = [
        ["training, full pipeline (decoded-image cache)", f"{r['train_images_per_s']:.0f} images/s",
         f"{100 * r['pipeline_over_model']:.1f} % of the model alone (target >= 95 %)"],
        ["training, full pipeline, no cache", f"{r['train_no_cache_images_per_s']:.0f} images/s",
         f"{100 * r['no_cache_over_model']:.1f} % of the model alone"],
        ["training, model alone (batch in memory)", f"{alone:.0f} images/s", "the baseline"],
        ["training, model alone, XLA (training.jit_compile)", *_against(r["model_alone_xla_images_per_s"], alone)],
        ["training, full pipeline, XLA", *_against(r.get("train_xla_images_per_s"), alone)],
        ["training, model alone, mixed_float16 (model.mixed_precision)",
         *_against(r["model_alone_mixed_images_per_s"], alone)],
        ["input pipeline alone, cache / no cache", f"{r['pipeline_alone_images_per_s']:.0f} / "
         f"{r['pipeline_no_cache_alone_images_per_s']:.0f} images/s",
         f"{r['pipeline_alone_images_per_s'] / alone:.1f}x / {r['pipeline_no_cache_alone_images_per_s'] / alone:.1f}x "
         f"what the model consumes"],
        ["building the cache", f"{r['cache_seconds']:.0f} s", "once per training run"],
        ["forward FLOPs per image", f"{r['forward_flops_per_image'] / 1e6:.1f} MFLOP", f"{r['parameters']:,} parameters"],
        ["achieved training FLOP/s", f"{r['train_flops_per_s'] / 1e9:.1f} GFLOP/s", "3 x forward FLOPs x images/s"],
        [f"{'float16' if r.get('precision') == 'mixed_float16' else 'float32'} matmul peak "
         f"({r.get('matmul_size', 2048)}^3)", f"{r['matmul_peak_flops_per_s'] / 1e9:.1f} GFLOP/s",
         "measured in this run"],
        ["model-FLOP utilisation", f"{100 * r['model_flop_utilisation']:.1f} %", ""],
        ["inference, batch 64, in memory", f"{r['inference_images_per_s']:.0f} images/s", ""],
        ["peak resident memory of training, cache / no cache", f"{r['peak_rss_mb']:.0f} / "
         f"{r['peak_rss_no_cache_mb']:.0f} MB", "whole process"],
    ]
    if r.get("gpu_peak_mb") is not None:
        rows.append(["peak GPU memory of training (cache)", f"{r['gpu_peak_mb']:.0f} MB", "TensorFlow's allocator"])
    title = (f"{setting}, {r.get('precision', 'float32')}: {', '.join(r['sources'])}; input {r['input_shape']}, "
             f"batch {r['batch_size']}; training "
             f"rates are medians of {r['repeats']} timings of {r['steps']} steps (after {r['warmup']} untimed), each "
             f"in a fresh process; {r['cpu_count']} CPUs, devices {sorted(set(r['devices']))}")
    return title + "\n" + text_table(["measure", "value", "note"], rows)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--setting", default="real", choices=["real", "synthetic"])
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--config", default=str(ROOT / "configs" / "real_utk_fer.yaml"))
    ap.add_argument("--synthetic-faces", type=int, default=6000)
    ap.add_argument("--out", default=str(ROOT / "runs" / "throughput"))
    ap.add_argument("--model", default="{}", help="JSON overrides of the config's model section")
    ap.add_argument("--in-process", action="store_true", help="time every variant in this process (quicker, "
                                                                   "less isolated than a fresh process each)")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"training rates to time, of {','.join(VARIANTS)} "
                                                                   "(files, cached and alone are needed)")
    ap.add_argument("--precision", default="float32", choices=["float32", "mixed_float16"],
                    help="every network of the table in this precision (mixed_float16: float16 compute on a GPU)")
    ap.add_argument("--batch-size", type=int, help="override the config's training.batch_size")
    ap.add_argument("--one", help="time these variants (comma-separated, BASE[_TAG...]: tags "
                                   + "; ".join(f"{k}: {v}" for k, v in TAGS.items())
                                   + ") one after the other in this process and print one JSON line each")
    args = ap.parse_args(argv)
    if args.setting == "real":
        data = Path(args.data)
        if not (data / "utkface" / "UTKFace").exists() or not (data / "fer2013").exists():
            print(f"real data not found under {data}; nothing measured (pass --data, or --setting synthetic).")
            return 0
        cfg = with_data_root(load_config(args.config), str(data))
    else:
        cfg = demo_config(train_faces=args.synthetic_faces)
    if args.batch_size:
        cfg.setdefault("training", {})["batch_size"] = args.batch_size
    overrides = json.loads(args.model)
    if args.one:
        for variant in args.one.split(","):
            try:
                parse_variant(variant)
            except ValueError as e:
                ap.error(f"--one: {e}")
        rows = []
        for variant in args.one.split(","):
            try:
                rows.append(one_variant(cfg, variant, args.steps, args.warmup, overrides, args.precision))
            except Exception as e:  # noqa: BLE001 - one variant failing (e.g. no GPU to prefetch to) ends only it
                print(json.dumps({"variant": variant, "error": f"{type(e).__name__}: {e}"[:500]}), flush=True)
                continue
            print(json.dumps(rows[-1]), flush=True)
        if len(rows) > 1:
            print("\n" + compare_table(rows, args.precision), flush=True)
        return 0
    child = ["--setting", args.setting, "--data", args.data, "--config", args.config,
             "--synthetic-faces", str(args.synthetic_faces)] + (["--batch-size", str(args.batch_size)]
                                                                 if args.batch_size else [])
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    if not {"files", "cached", "alone"} <= set(variants) <= set(VARIANTS):
        ap.error(f"--variants: expected files, cached, alone and any of {VARIANTS[3:]}, got {args.variants!r}")
    result = measure(cfg, args.steps, args.warmup, args.repeats, overrides, None if args.in_process else child,
                     variants, args.precision)
    text = format_table(result, args.setting)
    print("\n" + text, flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.txt", text + "\n")
    atomic_write_text(out / "results.json", json.dumps({args.setting: result}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
