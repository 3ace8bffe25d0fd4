"""Export a trained model as a versioned SavedModel for TF Serving.

``export_model`` writes ``BASE/NAME/VERSION/``: a SavedModel with two signatures, warmup
requests in ``assets.extra/``, and a model card; beside the versions, a ``models.config``
(model name, base path, version labels) and ``batching_parameters.txt`` for
``tensorflow_model_server``. A version is written to a hidden temporary folder and renamed
into place, so a crash never leaves a half version that TF Serving would load, and an
existing version is never overwritten.

Signatures (outputs are named per task, see :func:`output_names`):

- ``serving_default``: ``images``, a batch of encoded JPEG/PNG bytes (any size; gray, RGB
  or RGBA), decoded, resized and scaled in the graph with the training pipeline's ops
  (:func:`decode_batch`; a batch of one size is resized at once, on the GPU where there is one, by
  :func:`kfacemtl.pipeline.resize_batch`). Inputs over ``max_bytes`` or whose header
  declares more than ``max_pixels`` are refused before decoding.
- ``serving_float``: ``images``, float32 ``(batch, H, W, 3)`` in [0, 1] at the model's size.

Example:
    >>> # path = export_model("runs/demo", "saved_models", "faces")   # saved_models/faces/1
"""

from __future__ import annotations

import datetime
import io
import json
import os
import re
import shutil
import uuid
from pathlib import Path
from typing import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf

from kfacemtl.errors import KfacemtlError
from kfacemtl.files import atomic_write_text
from kfacemtl.pipeline import MAX_PIXELS, decode_image, decode_rgb, header_size, png_or_jpeg, resize_batch
from kfacemtl.tasks import Task

MAX_BYTES = 20 * 2 ** 20  # 20 MiB per encoded image
# a batch of one size up to this many pixels per image is resized at once (pipeline.resize_batch): beyond it, on a
# CPU the dense products cost more than TF's own resize of each image, and the float32 batch grows large
RESIZE_AT_ONCE_MAX_PIXELS = 224 * 224
WARMUP_FILE = "tf_serving_warmup_requests"
SIGNATURES = ("serving_default", "serving_float")


class ExportError(KfacemtlError):
    """An export could not be written (existing version, bad name, not a kfacemtl model).

    Example:
        >>> try:
        ...     export_model("no-such-run", "saved_models", "bad name")
        ... except ExportError as e:
        ...     print(e)
        model name 'bad name': use letters, digits, '-', '_' and '.', starting with a letter or digit
    """


def output_names(task: Task) -> list[str]:
    """The signature outputs of one task.

    classification: ``<task>_probs`` (batch, C), ``<task>_label`` (class index, int64) and
    ``<task>_class`` (class name); multilabel: ``<task>_probs`` (batch, K) and
    ``<task>_active`` (names with probability ≥ 0.5, comma-joined); regression:
    ``<task>`` on the task's own scale ((batch,) for one value, e.g. ``age`` in years).

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> output_names(get_task("gender"))
        ['gender_probs', 'gender_label', 'gender_class']
    """
    if task.kind == "classification":
        return [f"{task.name}_probs", f"{task.name}_label", f"{task.name}_class"]
    if task.kind == "multilabel":
        return [f"{task.name}_probs", f"{task.name}_active"]
    return [task.name]


def _task_outputs(tasks: Sequence[Task], outputs) -> dict:
    outputs = outputs if isinstance(outputs, (list, tuple)) else [outputs]
    result = {}
    for task, out in zip(tasks, outputs):
        out = tf.cast(out, tf.float32)
        if task.kind == "classification":
            label = tf.argmax(out, axis=-1)
            result[f"{task.name}_probs"] = out
            result[f"{task.name}_label"] = label
            result[f"{task.name}_class"] = tf.gather(tf.constant(list(task.classes)), label)
        elif task.kind == "multilabel":
            result[f"{task.name}_probs"] = out
            names = tf.broadcast_to(tf.constant(list(task.classes)), tf.shape(out))
            active = tf.ragged.boolean_mask(names, out >= 0.5)
            result[f"{task.name}_active"] = tf.strings.reduce_join(active, axis=-1, separator=",")
        else:
            result[task.name] = out[:, 0] if task.dim == 1 else out
    return result


def check_images(images, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
    """Checks a batch of encoded images (DT_STRING ``[n]``) before anything is decoded; returns the ``(width,
    height)`` each header declares, int64 ``[n, 2]``.

    In this order, over the whole batch: the byte length (not empty, at most ``max_bytes``), the format (JPEG or
    PNG magic bytes), the header (a PNG's IHDR, a JPEG's frame header), the declared size (more than 0, at most
    ``max_pixels``). Bad input raises ``tf.errors.InvalidArgumentError`` whose message names the first image
    (its index in the batch) that fails the first failing check, e.g. ``assertion failed: [image] [2] [is empty
    (0 bytes)]``; a JPEG without a frame header fails with TF's own message (``Invalid JPEG data``).

    Example:
        >>> png = tf.io.encode_png(tf.zeros((20, 30, 3), tf.uint8))
        >>> check_images(tf.stack([png, png])).numpy().tolist()
        [[30, 20], [30, 20]]
        >>> try:  # as in a signature (a graph; eagerly, the message reads differently)
        ...     tf.function(check_images)(tf.constant([png.numpy(), b"not an image"]))
        ... except tf.errors.InvalidArgumentError as e:
        ...     print(e.message.split("assertion failed: ")[1][:51])
        [image] [1] [is not a JPEG or PNG (bad magic bytes)
    """
    n = tf.strings.length(images)
    is_png, is_jpeg = png_or_jpeg(images)
    passed = _checked([(n > 0, lambda i: ["is empty (0 bytes)"]),
                       (n <= max_bytes, lambda i: ["has", n[i], f"bytes; the limit is {max_bytes}"]),
                       # the first bytes as numbers: raw bytes in an error message are not valid UTF-8 (the client
                       # could not even read the error; found by the property test of the bytes signature)
                       (is_png | is_jpeg, lambda i: [
                           "is not a JPEG or PNG (bad magic bytes); first bytes:",
                           tf.cast(tf.io.decode_raw(tf.strings.substr(images[i], 0, 8), tf.uint8), tf.int32)]),
                       (~is_png | (n >= 24), lambda i: ["is a PNG shorter than its header"])])
    with tf.control_dependencies([passed]):  # the headers are read only from images that passed
        wh = tf.map_fn(lambda a: header_size(a[0], a[1]), (images, is_png),
                       fn_output_signature=tf.TensorSpec([2], tf.int64))
    pixels = wh[:, 0] * wh[:, 1]

    def size(i):
        return [tf.strings.as_string(wh[i, 0]), "x", tf.strings.as_string(wh[i, 1])]

    limit = f"pixels; the limit is {max_pixels} pixels"
    passed = _checked([(pixels <= max_pixels, lambda i: ["declares", *size(i), limit]),
                       (pixels > 0, lambda i: ["declares an empty image:", *size(i)])])
    with tf.control_dependencies([passed]):
        return tf.identity(wh)


def _checked(checks):
    """Asserts ``[(ok, message), ...]`` in order, ``ok`` a boolean per image and ``message(i)`` what the error
    says of image ``i``, the first one failing; the messages are built only when a check fails (one ``tf.cond``),
    so a batch that passes runs a handful of ops. Returns a boolean tensor to depend on."""
    def fail():
        done = []
        for ok, message in checks:
            i = tf.argmin(tf.cast(ok, tf.int32), output_type=tf.int32)
            with tf.control_dependencies(done):
                done.append(tf.debugging.Assert(tf.reduce_all(ok), ["image", i, *message(i)]))
        with tf.control_dependencies(done):
            return tf.constant(False)

    return tf.cond(tf.reduce_all(tf.stack([ok for ok, _ in checks])), lambda: tf.constant(True), fail)


def decode_batch(images, image_size=(64, 64), max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS):
    """A batch of encoded images (DT_STRING ``[n]``) → float32 ``[n, H, W, 3]`` in [0, 1]: what the bytes
    signature does before the network.

    :func:`check_images` first (nothing is decoded when any image is bad), then the images are decoded on the
    host's CPU (JPEG/PNG decoding has only CPU kernels), up to 16 at a time, with the training pipeline's ops. When
    they all have one size (a client sending face crops from one camera, say) of at most
    ``RESIZE_AT_ONCE_MAX_PIXELS`` (224 × 224), the decoded ``uint8`` batch is resized by
    :func:`kfacemtl.pipeline.resize_batch`, on the GPU where there is one (and on all CPU cores otherwise); other
    images are each decoded and resized by :func:`kfacemtl.pipeline.decode_image` as in training.

    Example:
        >>> png = tf.io.encode_png(tf.zeros((20, 30, 3), tf.uint8))
        >>> tuple(decode_batch(tf.stack([png, png]), (16, 16)).shape)
        (2, 16, 16, 3)
    """
    h, w = image_size
    nonempty = tf.debugging.Assert(tf.size(images) > 0, ["empty batch: send at least one image"])
    with tf.control_dependencies([nonempty]), tf.device("/CPU:0"):
        wh = check_images(images, max_bytes, max_pixels)
        one_size = ((tf.size(images) > 1) & tf.reduce_all(tf.equal(wh, wh[:1]))
                    & (tf.reduce_max(wh[:, 0] * wh[:, 1]) <= RESIZE_AT_ONCE_MAX_PIXELS))

    def each(decode, spec):  # a loop on the CPU: a body that moved between CPU and GPU would copy each image both ways
        with tf.device("/CPU:0"):
            return tf.map_fn(decode, images, fn_output_signature=spec, parallel_iterations=16)

    def alone(data):  # as in training
        return decode_image(data, (h, w))

    def one():  # a single image: no loop
        with tf.device("/CPU:0"):
            return alone(images[0])[None]

    out = tf.cond(one_size, lambda: resize_batch(each(decode_rgb, tf.TensorSpec([None, None, 3], tf.uint8)), (h, w)),
                  lambda: tf.cond(tf.size(images) == 1, one, lambda: each(alone, tf.TensorSpec((h, w, 3), tf.float32))))
    out.set_shape([None, h, w, 3])
    return out


def serving_functions(model, image_size=None, max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS,
                      jit_compile: bool = False) -> dict:
    """``{signature name: (fn, input_signature)}`` for a kfacemtl model (used by :func:`export_model`).

    Both signatures copy the heads' outputs to the host once, packed in one matrix, and make the outputs there
    (labels, class names, AU names). ``jit_compile=True`` compiles the network's forward pass with XLA (the
    outputs and the decoding stay outside): on a GPU one call is then a few fused kernels instead of hundreds of
    small ones (see the README's serving benchmark). TF Serving's GPU build runs XLA; its CPU build needs
    ``--xla_cpu_compilation_enabled``.

    Example:
        >>> from kfacemtl.model import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                     embedding_dim=4, head_units=4)
        >>> fns = serving_functions(model)
        >>> sorted(fns), sorted(fns["serving_float"][0](tf.zeros((1, 16, 16, 3))))
        (['serving_default', 'serving_float'], ['gender_class', 'gender_label', 'gender_probs'])
    """
    from kfacemtl.model import model_tasks
    tasks = model_tasks(model)
    h, w = image_size or model.input_shape[1:3]
    shapes = [tuple(o.shape[1:]) for o in model.outputs]

    def packed(images):  # every head's output in one float32 matrix: one copy to the host per call
        outs = model(images, training=False)
        outs = outs if isinstance(outs, (list, tuple)) else [outs]
        return tf.concat([tf.reshape(tf.cast(o, tf.float32), [tf.shape(images)[0], -1]) for o in outs], axis=1)

    forward = tf.function(packed, jit_compile=True) if jit_compile else packed

    def from_float(images):
        matrix = forward(images)
        # the outputs are made on the host from one copy of the heads' outputs (labels, class names, AU names: a
        # GPU would otherwise copy each head's values out separately, several times for a class task)
        with tf.device("/CPU:0"):
            parts = tf.split(tf.identity(matrix), [int(np.prod(shape)) for shape in shapes], axis=1)
            return _task_outputs(tasks, [tf.reshape(p, [-1, *shape]) for p, shape in zip(parts, shapes)])

    def from_bytes(images):
        return from_float(decode_batch(images, (h, w), max_bytes, max_pixels))

    return {"serving_default": (from_bytes, [tf.TensorSpec([None], tf.string, name="images")]),
            "serving_float": (from_float, [tf.TensorSpec([None, h, w, 3], tf.float32, name="images")])}


def list_versions(model_dir) -> list[int]:
    """The numeric version folders under ``model_dir``, sorted.

    Example:
        >>> import os
        >>> for v in ("1", "2", "10", "tmp-3"):
        ...     os.makedirs(f"saved_models/faces/{v}", exist_ok=True)
        >>> list_versions("saved_models/faces")
        [1, 2, 10]
    """
    model_dir = Path(model_dir)
    if not model_dir.is_dir():
        return []
    return sorted(int(p.name) for p in model_dir.iterdir() if p.is_dir() and p.name.isdigit())


def next_version(model_dir) -> int:
    """1 + the highest numeric version folder under ``model_dir`` (1 when there is none).

    Example:
        >>> import os
        >>> os.makedirs("saved_models/ages/4", exist_ok=True)
        >>> next_version("saved_models/ages"), next_version("saved_models/nothing-yet")
        (5, 1)
    """
    return max(list_versions(model_dir), default=0) + 1


def _load(model_or_path):
    """A model object, a ``.keras`` file, or a run directory → (model, run dir or None)."""
    from kfacemtl.model import load_model, model_file
    if not isinstance(model_or_path, (str, os.PathLike)):
        return model_or_path, None
    try:
        path = model_file(model_or_path)
    except KfacemtlError as e:
        raise ExportError(str(e)) from None
    return load_model(path, compile=False), (path.parent if Path(model_or_path).is_dir() else None)


def _warmup_records(name: str, image_size, n: int = 4) -> bytes:
    """A TFRecord of PredictionLog warmup requests through ``serving_default``: one random PNG, ``n`` of one size,
    two of different sizes (the bytes signature's three paths, see :func:`decode_batch`)."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    rng = np.random.default_rng(0)

    def png(size):
        return tf.io.encode_png(rng.integers(0, 256, tuple(size) + (3,), dtype=np.uint8)).numpy()

    images = [png(image_size) for _ in range(n)]
    out = io.BytesIO()
    for batch in (images[:1], images, [images[0], png([s + 8 for s in image_size])]):
        request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(name=name,
                                                                          signature_name="serving_default"))
        request.inputs["images"].CopyFrom(tf.make_tensor_proto(batch, dtype=tf.string))
        log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
        out.write(_tfrecord(log.SerializeToString()))
    return out.getvalue()


def _tfrecord(payload: bytes) -> bytes:
    path = f"ram://warmup-{uuid.uuid4().hex}"
    with tf.io.TFRecordWriter(path) as writer:
        writer.write(payload)
    data = tf.io.gfile.GFile(path, "rb").read()
    tf.io.gfile.remove(path)
    return data


def models_config(name: str, versions: Sequence[int], labels: Mapping[str, int], base_path: str) -> str:
    """The text ``ModelServerConfig`` for ``tensorflow_model_server --model_config_file``.

    Example:
        >>> print(models_config("faces", [1, 2], {"stable": 1, "canary": 2}, "/models/faces"))  # doctest: +ELLIPSIS
        model_config_list {
          config {
            name: "faces"
            base_path: "/models/faces"
            model_platform: "tensorflow"
            model_version_policy { specific { versions: 1 versions: 2 } }
            version_labels { key: "stable" value: 1 }
            version_labels { key: "canary" value: 2 }
          }
        }
        <BLANKLINE>
    """
    policy = " ".join(f"versions: {v}" for v in versions)
    label_lines = "".join(f'    version_labels {{ key: "{k}" value: {v} }}\n' for k, v in labels.items())
    return ("model_config_list {\n  config {\n"
            f'    name: "{name}"\n    base_path: "{base_path}"\n    model_platform: "tensorflow"\n'
            f"    model_version_policy {{ specific {{ {policy} }} }}\n{label_lines}  }}\n}}\n")


BATCHING_PARAMETERS = """\
# tensorflow_model_server --enable_batching --batching_parameters_file=batching_parameters.txt
max_batch_size { value: 64 }
batch_timeout_micros { value: 2000 }
max_enqueued_batches { value: 256 }
num_batch_threads { value: 4 }
allowed_batch_sizes: 8
allowed_batch_sizes: 16
allowed_batch_sizes: 32
allowed_batch_sizes: 64
"""


def model_card(model, name: str, version: int, run_dir: Path | None, max_bytes: int, max_pixels: int) -> dict:
    """What a user of the export needs to know: tasks, classes, input contract, training, evaluation.

    Example:
        >>> from kfacemtl.model import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                     embedding_dim=4, head_units=4)
        >>> card = model_card(model, "faces", 1, None, MAX_BYTES, MAX_PIXELS)
        >>> card["name"], card["version"], [t["name"] for t in card["tasks"]]
        ('faces', 1, ['gender'])
    """
    from kfacemtl import __version__
    from kfacemtl.model import model_tasks
    import yaml
    tasks = model_tasks(model)
    card = {
        "name": name, "version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kfacemtl": __version__, "tensorflow": tf.__version__,
        "input": {
            "serving_default": f"images: DT_STRING [batch], encoded JPEG or PNG, any size, gray/RGB/RGBA; at most "
                               f"{max_bytes} bytes and {max_pixels} declared pixels each; decoded, resized "
                               f"(bilinear, antialiased) to {list(model.input_shape[1:3])} and scaled to [0, 1] "
                               f"in the graph",
            "serving_float": f"images: DT_FLOAT [batch, {model.input_shape[1]}, {model.input_shape[2]}, 3] RGB in [0, 1]",
        },
        "tasks": [dict(t.to_config(), outputs=output_names(t)) for t in tasks],
        # outputs fused with what a related head implies (coupling.OutputFusion): target -> source
        "fused_outputs": {f.target: f.source for f in getattr(model, "fusions", [])},
        "training": None, "evaluation": None,
    }
    if run_dir is not None:
        if (run_dir / "config.yaml").is_file():
            cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
            card["training"] = {k: cfg.get(k) for k in ("sources", "training", "model") if k in cfg}
        if (run_dir / "report.json").is_file():
            report = json.loads((run_dir / "report.json").read_text())
            card["evaluation"] = {"metrics": report.get("evaluation"), "table": report.get("table")}
    return card


def _card_markdown(card: dict) -> str:
    lines = [f"# {card['name']} version {card['version']}", "",
             f"Exported {card['created']} by kfacemtl {card['kfacemtl']} (TensorFlow {card['tensorflow']})"
             + ("; the forward pass is compiled with XLA (TF Serving on a CPU: --xla_cpu_compilation_enabled)."
                if card.get("xla") else "."), "",
             "## Input", ""]
    lines += [f"- `{k}`: {v}" for k, v in card["input"].items()]
    lines += ["", "## Tasks and outputs", "", "| task | kind | classes / range | outputs |", "|---|---|---|---|"]
    for t in card["tasks"]:
        what = ", ".join(t["classes"]) if t["classes"] else f"{t['value_range']} {', '.join(t['value_names'])}"
        lines.append(f"| {t['name']} | {t['kind']} | {what} | {', '.join('`%s`' % o for o in t['outputs'])} |")
    lines += [f"\n`{target}` is the product of experts of its head and the {target} the `{source}` head implies "
              "(coupling.OutputFusion)." for target, source in card.get("fused_outputs", {}).items()]
    if card["training"]:
        lines += ["", "## Training sources", ""] + [f"- `{s}`" for s in card["training"].get("sources") or []]
    if card["evaluation"] and card["evaluation"].get("table"):
        lines += ["", "## Evaluation", "", "```", card["evaluation"]["table"], "```"]
    return "\n".join(lines) + "\n"


def export_model(model_or_path, base="saved_models", name: str = "kfacemtl", version: int | None = None,
                 labels: Mapping[str, int] | None = None, serving_base: str = "/models",
                 max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, warmup: bool = True,
                 jit_compile: bool = False) -> Path:
    """Write a new SavedModel version for TF Serving and return its folder.

    Args:
        model_or_path: a kfacemtl model, a ``.keras`` file, or a run directory (its config and
            evaluation go into the model card).
        base: the folder holding one folder per served model.
        name: the served model's name (letters, digits, ``-``, ``_``, ``.``).
        version: the version number; default one more than the highest existing. An existing
            version is an error: nothing is ever overwritten.
        labels: version labels for ``models.config``; default ``stable`` = the previous highest
            version and ``canary`` = this one (only ``stable`` for a first version).
        serving_base: where ``base`` is mounted inside the serving container (``base_path``
            in ``models.config`` is ``serving_base/name``).
        max_bytes, max_pixels: per-image limits of the bytes signature, checked before decoding.
        warmup: write ``assets.extra/tf_serving_warmup_requests``.
        jit_compile: compile the network's forward pass with XLA (for GPU serving; :func:`serving_functions`).

    Returns:
        ``Path`` of ``base/name/version``.

    Example:
        >>> # export_model("runs/demo", "saved_models", "faces")            # -> saved_models/faces/1
        >>> # export_model("runs/demo", "saved_models", "faces", version=7) # -> saved_models/faces/7
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise ExportError(f"model name {name!r}: use letters, digits, '-', '_' and '.', starting with a letter or digit")
    model, run_dir = _load(model_or_path)
    model_dir = Path(base) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    if version is None:
        version = next_version(model_dir)
    if int(version) < 1:
        raise ExportError(f"version must be a positive integer, got {version!r}")
    version = int(version)
    final = model_dir / str(version)
    if final.exists():
        raise ExportError(f"{final} already exists; exports never overwrite a version "
                          f"(next free version: {next_version(model_dir)})")
    versions = sorted(set(list_versions(model_dir)) | {version})
    if labels is None:
        older = [v for v in versions if v < version]
        labels = {"stable": max(older), "canary": version} if older else {"stable": version}
    unknown = {k: v for k, v in labels.items() if int(v) not in versions}
    if unknown:
        raise ExportError(f"version labels {unknown} name versions that do not exist under {model_dir}")
    tmp = model_dir / f".tmp-{version}-{uuid.uuid4().hex[:8]}"  # TF Serving only loads numeric folders
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        for sig, (fn, spec) in serving_functions(model, max_bytes=max_bytes, max_pixels=max_pixels,
                                                   jit_compile=jit_compile).items():
            archive.add_endpoint(sig, fn, input_signature=spec)
        archive.write_out(str(tmp), verbose=False)
        if warmup:
            (tmp / "assets.extra").mkdir(exist_ok=True)
            (tmp / "assets.extra" / WARMUP_FILE).write_bytes(_warmup_records(name, model.input_shape[1:3]))
        card = model_card(model, name, version, run_dir, max_bytes, max_pixels)
        card["xla"] = bool(jit_compile)
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
        (tmp / "model_card.md").write_text(_card_markdown(card))
        if final.exists():
            raise ExportError(f"{final} appeared while exporting; nothing was overwritten")
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(model_dir / "models.config",
                  models_config(name, versions, labels, f"{serving_base.rstrip('/')}/{name}"))
    atomic_write_text(model_dir / "batching_parameters.txt", BATCHING_PARAMETERS)
    return final
