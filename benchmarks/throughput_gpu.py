"""The model's half of the throughput table on a GPU host where TensorFlow is not installed: any Keras 3 backend.

Keras 3 runs the same network on JAX or PyTorch, so a GPU host needs neither TensorFlow nor kfacemtl to time it;
this script copies the network there as a plain Keras model. In two steps:

  python -m benchmarks.throughput_gpu export --out runs/gpu/arch.json [--config configs/real_utk_fer.yaml]
         [--variant NAME=JSON ...]
      here, with kfacemtl and TensorFlow: writes each network (the config's, and each variant's model overrides)
      as a plain Keras functional model (each task output a Dense layer of the same units and activation; the
      age output's affine scaling, a multiply-add per image, left out), with its forward FLOPs, parameters and each
      output's loss
  KERAS_BACKEND=jax python -m benchmarks.throughput_gpu run runs/gpu/arch.json [--batches 64,256,1024]
         [--precisions float32,mixed_float16,mixed_bfloat16] [--images 25600] [--out DIR]
      there, with keras and a backend but without kfacemtl or TensorFlow: for each network, precision and batch:
      training images/s of the model alone (model.fit on in-memory arrays; plain per-output losses, all labels
      present: the masked losses and task weighting of kfacemtl's train step are a few element-wise ops per task),
      inference images/s (predict_on_batch), the backend's matmul peak per dtype, and model-FLOP utilisation.

A rate is the difference of two fits (``--images`` and twice as many images) over the difference of their times,
so fit's fixed set-up cancels; the median of ``--repeats``. The input pipeline (tf.data) is not part of this
half: on a 2-core CPU it delivers 56x what the model consumes (``python -m benchmarks.throughput``).
A benchmark measures and prints; it asserts nothing.
"""

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path


LOSSES = {"classification": "sparse_categorical_crossentropy", "multilabel": "binary_crossentropy",
          "regression": "mean_squared_error"}


# --- export: here, with kfacemtl -------------------------------------------------------------------------------

def portable_architecture(model) -> dict:
    """A kfacemtl model's architecture as a plain Keras functional model config (no kfacemtl classes), with each
    output's task kind and size.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> m = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                 embedding_dim=4, head_units=4)
        >>> arch = portable_architecture(m)
        >>> arch["outputs"], arch["model"]["class_name"]
        ({'gender': {'kind': 'classification', 'units': 2}, 'age': {'kind': 'regression', 'units': 1}}, 'Functional')
    """
    from kfacemtl.models import flat_model
    from kfacemtl.tasks import Task
    cfg = json.loads(flat_model(model).to_json())
    cfg.update(module="keras.src.models.functional", class_name="Functional", registered_name="Functional")
    outputs = {}
    for layer in cfg["config"]["layers"]:
        if layer["class_name"] == "TaskOutput":
            task = Task.from_config(layer["config"].pop("task"))
            layer.update(module="keras.layers", class_name="Dense", registered_name=None)
            layer["config"]["units"] = task.output_dim
            outputs[layer["name"]] = {"kind": task.kind, "units": task.output_dim}
    return {"model": cfg, "outputs": outputs}


def export(config: str, variants: dict, out: Path) -> dict:
    """Each network (the config's model section, then with each variant's overrides) as a portable architecture
    with its forward FLOPs and parameters, written to ``out``."""
    from kfacemtl.training.config import load_config, resolve_config
    from kfacemtl.files import atomic_write_text
    from kfacemtl.models import build_model, count_flops
    from kfacemtl.tasks import resolve_tasks
    cfg = resolve_config(load_config(config))
    tasks = resolve_tasks(cfg["tasks"])
    nets = {}
    for name, overrides in {"default": {}, **variants}.items():
        mc = dict(cfg["model"], **overrides)
        model = build_model(tasks, **mc)
        nets[name] = dict(portable_architecture(model), overrides=overrides, input_shape=list(mc["input_shape"]),
                          forward_flops=count_flops(model), parameters=int(model.count_params()))
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"config": str(config), "networks": nets}))
    return nets


# --- run: there, with keras and any backend --------------------------------------------------------------------

def with_precision(arch: dict, policy: str) -> dict:
    """The model config with every layer but the outputs (and the input) computing in ``policy``: float32 outputs
    and losses, as kfacemtl's ``mixed_precision`` does."""
    cfg = copy.deepcopy(arch["model"])
    for layer in cfg["config"]["layers"]:
        dtype = layer["config"].get("dtype")
        if layer["name"] not in arch["outputs"] and isinstance(dtype, dict):
            dtype["config"]["name"] = policy
    return cfg


def build(arch: dict, policy: str):
    import keras
    model = keras.models.model_from_json(json.dumps(with_precision(arch, policy)))
    optimizer = keras.optimizers.Adam(1e-3)
    if policy == "mixed_float16":
        optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
    model.compile(optimizer=optimizer, loss={n: LOSSES[o["kind"]] for n, o in arch["outputs"].items()})
    return model


def fake_batch(arch: dict, n: int, seed: int = 0):
    import numpy as np
    rng = np.random.default_rng(seed)
    x = rng.random((n, *arch["input_shape"]), dtype=np.float32)
    y = {}
    for name, o in arch["outputs"].items():
        if o["kind"] == "classification":
            y[name] = rng.integers(0, o["units"], (n,)).astype("int32")
        elif o["kind"] == "multilabel":
            y[name] = (rng.random((n, o["units"])) < 0.3).astype("float32")
        else:
            y[name] = rng.normal(size=(n, o["units"])).astype("float32")
    return x, y


def train_rate(model, x, y, batch: int, images: int, repeats: int) -> float:
    """Training images/s: (fit over 2n images − fit over n) / the difference of their times; the median of
    ``repeats``. The first fit (compilation) is untimed."""
    import numpy as np
    n = max(batch, images // batch * batch)

    def fit(k):
        start = time.perf_counter()
        model.fit(x[:k], {t: v[:k] for t, v in y.items()}, batch_size=batch, epochs=1, shuffle=False, verbose=0)
        return time.perf_counter() - start

    fit(min(len(x), 3 * batch))
    rates = []
    for _ in range(repeats):
        short, long_ = fit(n), fit(2 * n)
        rates.append(n / max(long_ - short, 1e-9))
    return float(np.median(rates))


def inference_rate(model, x, batch: int, calls: int = 30) -> float:
    x = x[:batch]
    model.predict_on_batch(x)
    start = time.perf_counter()
    for _ in range(calls):
        model.predict_on_batch(x)
    return calls * batch / (time.perf_counter() - start)


def matmul_peak(dtype: str, n: int = 8192, reps: int = 10) -> float:
    """FLOP/s of an n × n matmul in ``dtype`` through the backend's default precision (JAX: TF32 allowed on
    NVIDIA GPUs for float32), ``reps`` products timed after one untimed."""
    from keras import ops
    a = ops.cast(ops.ones((n, n)) / n, dtype)
    b = ops.cast(ops.ones((n, n)), dtype)
    ops.convert_to_numpy(ops.matmul(a, b)[0, 0])
    start = time.perf_counter()
    for _ in range(reps):
        c = ops.matmul(a, b)
    ops.convert_to_numpy(c[0, 0])
    return reps * 2 * n ** 3 / (time.perf_counter() - start)


def device_description() -> str:
    import keras
    backend = keras.backend.backend()
    try:
        if backend == "jax":
            import jax
            return f"jax {jax.__version__}: " + ", ".join(d.device_kind for d in jax.devices())
        if backend == "torch":
            import torch
            return f"torch {torch.__version__}: " + (torch.cuda.get_device_name(0) if torch.cuda.is_available()
                                                     else "CPU")
        if backend == "tensorflow":
            import tensorflow as tf
            return f"tensorflow {tf.__version__}: " + ", ".join(d.device_type for d in tf.config.list_physical_devices())
    except Exception as e:  # a description only
        return f"{backend} ({e})"
    return backend


COMPUTE_DTYPE = {"float32": "float32", "mixed_float16": "float16", "mixed_bfloat16": "bfloat16"}


def run(arch_file: Path, batches, precisions, images: int, repeats: int, networks=None, matmul_size: int = 8192,
        progress=print) -> dict:
    """Every measure, for each network (``networks``: names, default all), precision and batch size."""
    import keras
    nets = json.loads(Path(arch_file).read_text())["networks"]
    peaks = {p: matmul_peak(COMPUTE_DTYPE[p], matmul_size) for p in precisions}
    progress("matmul peaks: " + ", ".join(f"{p} {v / 1e12:.2f} TFLOP/s" for p, v in peaks.items()))
    rows, x = [], None
    for name, arch in nets.items():
        if networks and name not in networks:
            continue
        if x is None or list(x.shape[1:]) != arch["input_shape"]:  # made again only for another input shape
            x, y = fake_batch(arch, 2 * images + max(batches))
        for policy in precisions:
            for batch in batches:
                keras.utils.clear_session()
                model = build(arch, policy)
                t0 = time.perf_counter()
                rate = train_rate(model, x, y, batch, images, repeats)
                infer = inference_rate(model, x, batch)
                flops = 3 * arch["forward_flops"] * rate
                rows.append({"network": name, "overrides": arch["overrides"], "precision": policy, "batch": batch,
                             "train_images_per_s": rate, "inference_images_per_s": infer,
                             "train_flops_per_s": flops, "mfu": flops / peaks[policy],
                             "forward_flops": arch["forward_flops"], "parameters": arch["parameters"]})
                progress(f"{name} {policy} batch {batch}: {rate:.0f} training, {infer:.0f} inference images/s "
                         f"({time.perf_counter() - t0:.0f} s)")
    return {"device": device_description(), "backend": keras.backend.backend(), "images": images,
            "matmul_size": matmul_size,
            "repeats": repeats, "matmul_peak_flops_per_s": peaks, "rows": rows}


def format_table(r: dict) -> str:
    """The result as text: one row per network, precision and batch, with ratios against the default network in
    float32 at the same batch."""
    base = {row["batch"]: row["train_images_per_s"] for row in r["rows"]
            if row["network"] == "default" and row["precision"] == "float32"}
    lines = [f"model alone on {r['device']} (Keras backend {r['backend']}); training rates: medians of "
             f"{r['repeats']} timings of {r['images']} images; matmul peaks ({r['matmul_size']}^3): " +
             ", ".join(f"{COMPUTE_DTYPE[p]} {v / 1e12:.1f} TFLOP/s" for p, v in r["matmul_peak_flops_per_s"].items())]
    head = ["network", "precision", "batch", "training images/s", "vs default float32", "inference images/s",
            "MFLOP/image", "MFU"]
    rows = [[row["network"], row["precision"], str(row["batch"]), f"{row['train_images_per_s']:.0f}",
             f"{row['train_images_per_s'] / base[row['batch']]:.2f}x" if row["batch"] in base else "",
             f"{row['inference_images_per_s']:.0f}", f"{row['forward_flops'] / 1e6:.1f}", f"{100 * row['mfu']:.2f} %"]
            for row in r["rows"]]
    # kfacemtl.tables.text_table's layout, written out: kfacemtl (and so TensorFlow) need not be installed where this runs
    widths = [max(len(h), *(len(c[i]) for c in rows)) for i, h in enumerate(head)]
    fmt = "  ".join(f"{{:{w}}}" for w in widths)
    lines += [fmt.format(*head), fmt.format(*("-" * w for w in widths))] + [fmt.format(*c) for c in rows]
    variants = {row["network"]: row["overrides"] for row in r["rows"] if row["overrides"]}
    lines += [f"{n}: model overrides {json.dumps(o)}" for n, o in variants.items()]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="command", required=True)
    ex = sub.add_parser("export", help="write the networks' portable architectures (needs kfacemtl, TensorFlow)")
    ex.add_argument("--config", default="configs/real_utk_fer.yaml")
    ex.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="another network: a name and JSON overrides of the model section")
    ex.add_argument("--out", default="runs/throughput_gpu/arch.json")
    rn = sub.add_parser("run", help="time the networks on this machine's Keras backend (no kfacemtl needed)")
    rn.add_argument("arch")
    rn.add_argument("--batches", default="64,256,1024")
    rn.add_argument("--precisions", default="float32,mixed_float16,mixed_bfloat16")
    rn.add_argument("--networks", default="", help="comma-separated names (default: all)")
    rn.add_argument("--images", type=int, default=25600, help="images in the shorter of the two timed fits")
    rn.add_argument("--repeats", type=int, default=3)
    rn.add_argument("--matmul-size", type=int, default=8192)
    rn.add_argument("--out", default="", help="folder for results.txt and results.json (default: print only)")
    args = ap.parse_args(argv)
    if args.command == "export":
        from benchmarks.common import parse_variants  # (kfacemtl and TensorFlow only where the export runs)
        for name, net in export(args.config, parse_variants(args.variant), Path(args.out)).items():
            print(f"{name}: {net['forward_flops'] / 1e6:.1f} MFLOP/image, {net['parameters']:,} parameters")
        print(f"written {args.out}")
        return 0
    split = lambda s: [v.strip() for v in s.split(",") if v.strip()]  # noqa: E731
    result = run(Path(args.arch), [int(b) for b in split(args.batches)], split(args.precisions), args.images,
                 args.repeats, split(args.networks), args.matmul_size, progress=lambda m: print(m, flush=True))
    text = format_table(result)
    print("\n" + text, flush=True)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        for name, content in (("results.txt", text + "\n"), ("results.json", json.dumps(result, indent=2))):
            tmp = out / f".{name}.tmp"  # atomic, without kfacemtl's helper (not installed where this runs)
            tmp.write_text(content)
            os.replace(tmp, out / name)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.exit(main())
