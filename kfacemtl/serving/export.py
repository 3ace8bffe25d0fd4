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
  :func:`kfacemtl.data.images.resize_batch`). Inputs over ``max_bytes`` or whose header
  declares more than ``max_pixels`` are refused before decoding.
- ``serving_float``: ``images``, float32 ``(batch, H, W, 3)`` in [0, 1] at the model's size.

Example:
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
    >>> path = export_model(model, "saved_models", "faces", warmup=False)   # or a run directory, or a .keras file
    >>> str(path), sorted(p.name for p in path.parent.iterdir())
    ('saved_models/faces/1', ['1', 'batching_parameters.txt', 'models.config'])
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
import yaml
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from kfacemtl.errors import KfacemtlError
from kfacemtl.files import atomic_write_text
from kfacemtl.models import load_model, model_file, model_tasks
from kfacemtl.models.answers import output_names
from kfacemtl.models.views import TTA_VIEWS, tta_views
from kfacemtl.serving.signatures import MAX_BYTES, serving_functions
from kfacemtl.data.images import MAX_PIXELS
from kfacemtl.version import __version__


WARMUP_FILE = "tf_serving_warmup_requests"


class ExportError(KfacemtlError):
    """An export could not be written (existing version, bad name, not a kfacemtl model).

    Example:
        >>> try:
        ...     export_model("no-such-run", "saved_models", "bad name")
        ... except ExportError as e:
        ...     print(e)
        model name 'bad name': use letters, digits, '-', '_' and '.', starting with a letter or digit
    """


# what an export killed midway leaves: its version folder being written (.tmp-VERSION-PID-RANDOM) and the temporary
# files of models.config / batching_parameters.txt (kfacemtl.files.atomic_write: .STEM.tmpPID.SUFFIX)
_LEFTOVER = re.compile(r"^\.(?:tmp-\d+-(\d+)-[0-9a-f]+|[\w.-]+\.tmp(\d+)\.\w+)$")


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_leftovers(model_dir) -> list[Path]:
    """Remove what exports killed midway left in ``model_dir`` (their hidden temporary version folders and config
    files, whose writing process is gone); returns what was removed. TF Serving never loads them (only numeric
    folders are versions); :func:`export_model` calls this first.

    Example:
        >>> import os
        >>> os.makedirs("saved_models/faces/.tmp-3-999999999-ab12cd34", exist_ok=True)   # no such process
        >>> [p.name for p in remove_leftovers("saved_models/faces")]
        ['.tmp-3-999999999-ab12cd34']
    """
    removed = []
    for path in sorted(Path(model_dir).iterdir()) if Path(model_dir).is_dir() else []:
        m = _LEFTOVER.match(path.name)
        if m and not _alive(int(m.group(1) or m.group(2))):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


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


def load_exportable(model_or_path):
    """A model object, a ``.keras`` file, or a run directory → (model, run dir or None).

    Example:
        >>> try:
        ...     load_exportable("no-such-run")
        ... except ExportError as e:
        ...     print(str(e)[:30])
        model file 'no-such-run' does
    """
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
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                     embedding_dim=4, head_units=4)
        >>> card = model_card(model, "faces", 1, None, MAX_BYTES, MAX_PIXELS)
        >>> card["name"], card["version"], [t["name"] for t in card["tasks"]]
        ('faces', 1, ['gender'])
    """
    tasks = model_tasks(model)
    card = {
        "name": name, "version": version,
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "kfacemtl": __version__, "tensorflow": tf.__version__,
        "input": {
            "serving_default": f"images: DT_STRING [batch], encoded JPEG or PNG, any size, gray/RGB/RGBA; at most "
                               f"{max_bytes} bytes and {max_pixels} declared pixels each; decoded, resized "
                               f"(bilinear, antialiased) to {list(model.input_shape[1:3])} and scaled to [0, 1] "
                               f"in the graph; its output `error` names each image that could not be read (\"\" "
                               f"for an answered image; that row's answers are zeros)",
            "serving_float": f"images: DT_FLOAT [batch, {model.input_shape[1]}, {model.input_shape[2]}, 3] RGB in [0, 1]",
        },
        "tasks": [dict(t.to_config(), outputs=output_names(t, t.name in getattr(model, "intervals", {})))
                  for t in tasks],
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
        for key in ("fairness", "calibration"):  # kfacemtl evaluate --by, kfacemtl calibrate
            if (run_dir / f"{key}.json").is_file():
                card[key] = json.loads((run_dir / f"{key}.json").read_text())
    return card


def _card_markdown(card: dict) -> str:
    lines = [f"# {card['name']} version {card['version']}", "",
             f"Exported {card['created']} by kfacemtl {card['kfacemtl']} (TensorFlow {card['tensorflow']})"
             + ("; the forward pass is compiled with XLA (TF Serving on a CPU: --xla_cpu_compilation_enabled)."
                if card.get("xla") else "."), ""]
    if card.get("tta", "none") != "none":
        lines += [f"Every answer is the mean over {len(TTA_VIEWS[card['tta']])} views of the face (test-time "
                  f"augmentation `{card['tta']}`), as many forward passes per face.", ""]
    lines += ["## Input", ""]
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
    if card.get("fairness"):  # kfacemtl evaluate --by: each group's headline metric and the worst-group gap
        lines += ["", "## By group", "", "| test set | by | task | metric | per group (faces) | worst-group gap |",
                  "|---|---|---|---|---|---|"]
        for source, entry in card["fairness"].items():
            for by, result in entry.items():
                for task, gap in result["gap"].items():
                    per = ", ".join(f"{g} {m[task][gap['metric']]:.3f} ({m[task]['n']})"
                                    for g, m in result["groups"].items() if task in m)
                    lines.append(f"| {source} | {by} | {task} | {gap['metric']} | {per} | {gap['gap']:.3f} "
                                 f"({gap['worst']}) |")
    if card.get("calibration"):  # kfacemtl calibrate
        lines += ["", "## Calibration", "", "Temperatures fitted on: " + ", ".join(
            f"`{s}`" for s in card["calibration"]["sources"]), "", "| task | temperature | ECE before | ECE after |",
                  "|---|---|---|---|"]
        lines += [f"| {t} | {c['temperature']:.3f} | {c['ece_before']:.4f} | {c['ece_after']:.4f} |"
                  for t, c in card["calibration"]["tasks"].items() if "temperature" in c]
        lines += [f"\n`{t}_interval` holds the true {t} for {c['coverage_target']:.0%} of faces like the validation "
                  f"faces ({c['interval_coverage']:.1%} of them; mean width {c['interval_width']:.1f})."
                  for t, c in card["calibration"]["tasks"].items() if "interval" in c]
    return "\n".join(lines) + "\n"


def check_name(name: str) -> str:
    """A served model's name: letters, digits, ``-``, ``_`` and ``.``, starting with a letter or digit.

    Example:
        >>> try:
        ...     check_name("my faces")
        ... except ExportError as e:
        ...     print(e)
        model name 'my faces': use letters, digits, '-', '_' and '.', starting with a letter or digit
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name or ""):
        raise ExportError(f"model name {name!r}: use letters, digits, '-', '_' and '.', starting with a letter or digit")
    return name


def new_version(base, name: str, version: int | None = None) -> tuple[Path, Path]:
    """``(BASE/NAME/VERSION, its temporary folder)`` for a new version: the name checked, what killed exports
    left removed, the version the next free one by default and never one that exists. Write into the temporary
    folder (hidden: TF Serving only loads numeric folders), then :func:`publish` it.

    Example:
        >>> final, tmp = new_version("saved_models", "ages", 5)
        >>> str(final), tmp.name.startswith(".tmp-5-")
        ('saved_models/ages/5', True)
    """
    check_name(name)
    model_dir = Path(base) / name
    model_dir.mkdir(parents=True, exist_ok=True)
    remove_leftovers(model_dir)
    if version is None:
        version = next_version(model_dir)
    if int(version) < 1:
        raise ExportError(f"version must be a positive integer, got {version!r}")
    final = model_dir / str(int(version))
    if final.exists():
        raise ExportError(f"{final} already exists; exports never overwrite a version "
                          f"(next free version: {next_version(model_dir)})")
    return final, model_dir / f".tmp-{int(version)}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def publish(tmp: Path, final: Path) -> Path:
    """Rename a finished temporary version folder into place (atomic), never over an existing version.

    Example:
        >>> final, tmp = new_version("saved_models", "notes")
        >>> tmp.mkdir(); (tmp / "done.txt").write_text("complete")
        8
        >>> publish(tmp, final).name, (final / "done.txt").read_text()
        ('1', 'complete')
    """
    if final.exists():
        raise ExportError(f"{final} appeared while exporting; nothing was overwritten")
    os.rename(tmp, final)
    return final


def export_model(model_or_path, base="saved_models", name: str = "kfacemtl", version: int | None = None,
                 labels: Mapping[str, int] | None = None, serving_base: str = "/models",
                 max_bytes: int = MAX_BYTES, max_pixels: int = MAX_PIXELS, warmup: bool = True,
                 jit_compile: bool = False, tta: str | None = None) -> Path:
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
        tta: ``"flip"`` or ``"six"``: every answer averaged over views of each face (test-time augmentation, as
            ``kfacemtl evaluate --tta``), 2 or 6 forward passes per face; default none. The model card says which.

    Returns:
        ``Path`` of ``base/name/version``.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> [export_model(model, "saved_models", "years", warmup=False).name for _ in range(2)]   # 1, then 2
        ['1', '2']
        >>> export_model(model, "saved_models", "years", version=7, warmup=False).name
        '7'
        >>> try:
        ...     export_model(model, "saved_models", "years", version=2)
        ... except ExportError as e:
        ...     print(e)
        saved_models/years/2 already exists; exports never overwrite a version (next free version: 8)
    """
    check_name(name)  # before the model is loaded: a bad name fails at once
    tta_views(tta)  # and a bad test-time augmentation
    model, run_dir = load_exportable(model_or_path)
    final, tmp = new_version(base, name, version)
    model_dir, version = final.parent, int(final.name)
    versions = sorted(set(list_versions(model_dir)) | {version})
    if labels is None:
        older = [v for v in versions if v < version]
        labels = {"stable": max(older), "canary": version} if older else {"stable": version}
    unknown = {k: v for k, v in labels.items() if int(v) not in versions}
    if unknown:
        raise ExportError(f"version labels {unknown} name versions that do not exist under {model_dir}")
    try:
        archive = keras.export.ExportArchive()
        archive.track(model)
        for sig, (fn, spec) in serving_functions(model, max_bytes=max_bytes, max_pixels=max_pixels,
                                                   jit_compile=jit_compile, tta=tta).items():
            archive.add_endpoint(sig, fn, input_signature=spec)
        archive.write_out(str(tmp), verbose=False)
        if warmup:
            (tmp / "assets.extra").mkdir(exist_ok=True)
            (tmp / "assets.extra" / WARMUP_FILE).write_bytes(_warmup_records(name, model.input_shape[1:3]))
        card = model_card(model, name, version, run_dir, max_bytes, max_pixels)
        card["xla"] = bool(jit_compile)
        card["tta"] = tta or "none"
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
        (tmp / "model_card.md").write_text(_card_markdown(card))
        publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_text(model_dir / "models.config",
                  models_config(name, versions, labels, f"{serving_base.rstrip('/')}/{name}"))
    atomic_write_text(model_dir / "batching_parameters.txt", BATCHING_PARAMETERS)
    return final
