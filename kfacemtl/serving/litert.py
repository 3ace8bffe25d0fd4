"""On devices: the model as LiteRT (TensorFlow Lite) flatbuffers, float32 and quantised, and a predictor that runs
them with the LiteRT interpreter.

``export_litert`` writes ``BASE/NAME/VERSION/`` (never overwriting a version; written to a temporary folder and
renamed) with one ``.tflite`` file per variant of the float signature (``images``: float32 ``[batch, H, W, 3]`` RGB
in [0, 1], decoded and resized by the app as :func:`kfacemtl.data.images.decode_image` does):

- ``float32``: the model as trained (equal to the Keras model within float rounding);
- ``float16``: weights stored as float16 (half the size; computed in float32 on most CPUs);
- ``int8``: weights and activations quantised to 8 bits, calibrated on a representative set of faces (a quarter
  of the size; inputs and outputs stay float32).

The outputs are the SavedModel's numeric ones (``<task>_probs``, ``<task>_label``, ``age``, ``valence_arousal``,
``age_interval``); the class and action-unit names are in ``model_card.json`` beside them.

Example:
    >>> import numpy as np
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
    >>> folder = export_litert(model, "litert_models", "faces", variants=("float32",))
    >>> sorted(p.name for p in folder.iterdir())
    ['model_card.json', 'model_float32.tflite']
    >>> out = LiteRTPredictor(folder / "model_float32.tflite").run(np.zeros((2, 16, 16, 3), "float32"))
    >>> sorted(out), out["gender_probs"].shape
    (['age', 'gender_label', 'gender_probs'], (2, 2))
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf
import yaml

from kfacemtl.data import make_dataset, make_source
from kfacemtl.models import model_tasks
from kfacemtl.models.answers import task_outputs
from kfacemtl.serving.export import (MAX_BYTES, MAX_PIXELS, ExportError, check_name, load_exportable, model_card,
                                     new_version, publish)
from kfacemtl.tasks import Task

VARIANTS = ("float32", "float16", "int8")


def litert_function(model):
    """The float signature for LiteRT: ``images`` → the numeric outputs of :func:`task_outputs` (strings are
    left to the app: LiteRT's built-in ops have none).

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["expression"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> sorted(litert_function(model)(tf.zeros((1, 16, 16, 3))))
        ['expression_label', 'expression_probs']
    """
    tasks = model_tasks(model)
    h, w = model.input_shape[1:3]

    @tf.function(input_signature=[tf.TensorSpec([None, h, w, 3], tf.float32, name="images")])
    def serve(images):
        outs = model(images, training=False)
        named = task_outputs(tasks, outs if isinstance(outs, (list, tuple)) else [outs],
                             getattr(model, "intervals", None))
        return {k: v for k, v in named.items() if v.dtype != tf.string}

    return serve


def representative_images(run_dir: Path, image_size, n: int = 200) -> np.ndarray:
    """Up to ``n`` faces from a run's training sources (an equal share of each), as the model sees them: what int8
    quantisation calibrates its ranges on.

    Example:
        >>> import yaml
        >>> run = Path("runs/tiny"); run.mkdir(parents=True, exist_ok=True)
        >>> _ = (run / "config.yaml").write_text(yaml.safe_dump({"sources": ["synthetic:lab?n=8"]}))
        >>> representative_images(run, (16, 16), n=4).shape
        (4, 16, 16, 3)
    """
    specs = (yaml.safe_load((run_dir / "config.yaml").read_text()) or {}).get("sources") or []
    if not specs:
        raise ExportError(f"{run_dir / 'config.yaml'}: no training sources to calibrate int8 on; pass representative=")
    per = max(1, n // len(specs))
    batches = []
    for spec in specs:
        ds = make_dataset([make_source(spec)], [], batch_size=per, image_size=tuple(image_size), training=False)
        batches += [x.numpy() for x, _, _ in ds.take(1)]
    return np.concatenate(batches)[:n]


def _saved_float_signature(model, serve, folder: Path) -> Path:
    """``serve`` (:func:`litert_function`) written as a SavedModel (Keras's ``ExportArchive``, as
    :func:`export_model` does): from there the converter freezes every weight, the heads' temperatures included."""
    archive = keras.export.ExportArchive()
    archive.track(model)
    archive.add_endpoint("serving_default", serve)
    archive.write_out(str(folder), verbose=False)
    return folder


def _convert(saved: Path, variant: str, representative) -> bytes:
    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved), signature_keys=["serving_default"])
    if variant == "float16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif variant == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ({"images": x[None].astype("float32")} for x in representative)
    return converter.convert()


def export_litert(model_or_path, base="litert_models", name: str = "kfacemtl", version: int | None = None,
                  variants: Sequence[str] = VARIANTS, representative=None, representative_n: int = 200) -> Path:
    """Write LiteRT models of the float signature and return their folder ``base/name/version``.

    Args:
        model_or_path: a kfacemtl model, a ``.keras`` file, or a run directory.
        base, name, version: where (as :func:`~kfacemtl.serving.export.export_model`; never overwrites).
        variants: any of ``float32``, ``float16``, ``int8``.
        representative: images (float32 ``[n, H, W, 3]`` in [0, 1]) to calibrate ``int8`` on; default
            ``representative_n`` faces of a run directory's training sources.

    Returns:
        ``Path`` of the folder: ``model_<variant>.tflite`` each, and ``model_card.json`` (tasks, classes,
        outputs, each variant's file and size).

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> try:
        ...     export_litert(model, "litert_models", "ages", variants=("int8",))
        ... except ExportError as e:
        ...     print(e)
        int8 quantisation needs representative images: pass representative= (or export a run directory)
    """
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise ExportError(f"LiteRT variants {list(unknown or variants)}: choose from {list(VARIANTS)}")
    check_name(name)
    model, run_dir = load_exportable(model_or_path)
    if "int8" in variants and representative is None:
        if run_dir is None:
            raise ExportError("int8 quantisation needs representative images: pass representative= (or export a "
                              "run directory)")
        representative = representative_images(run_dir, model.input_shape[1:3], representative_n)
    final, tmp = new_version(base, name, version)
    try:
        tmp.mkdir()
        card = model_card(model, name, int(final.name), run_dir, MAX_BYTES, MAX_PIXELS)
        card["format"] = "litert"
        card["input"] = {"images": f"float32 [batch, {model.input_shape[1]}, {model.input_shape[2]}, 3] RGB in "
                                   f"[0, 1], decoded and resized (bilinear, antialiased) by the app"}
        serve = litert_function(model)  # traced once: for the card's outputs and for the SavedModel
        card["outputs"] = sorted(serve.get_concrete_function().structured_outputs)
        card["variants"] = {}
        saved = _saved_float_signature(model, serve, tmp / "savedmodel")
        for variant in variants:
            data = _convert(saved, variant, representative)
            (tmp / f"model_{variant}.tflite").write_bytes(data)
            card["variants"][variant] = {"file": f"model_{variant}.tflite", "bytes": len(data)}
        (tmp / "model_card.json").write_text(json.dumps(card, indent=2, default=str))
        shutil.rmtree(saved)
        publish(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def _interpreter(path: str):
    try:
        from ai_edge_litert.interpreter import Interpreter  # LiteRT's own runtime, what a device runs
    except ImportError:  # pragma: no cover - ai-edge-litert is a dependency; TF's copy is the fallback
        Interpreter = tf.lite.Interpreter
    return Interpreter(model_path=path)


class LiteRTPredictor:
    """Run an exported ``.tflite`` file: float images in, the named outputs out; ``predict`` gives the heads in
    task order like ``keras.Model.predict``, so :func:`kfacemtl.analysis.evaluation.evaluate_sources` can score a
    variant as it scores the Keras model.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> predictor = LiteRTPredictor(export_litert(model, "litert_models", "years", variants=("float16",))
        ...                             / "model_float16.tflite")
        >>> predictor.input_shape, [t.name for t in predictor.tasks]
        ((None, 16, 16, 3), ['age'])
    """

    def __init__(self, path, batch_size: int = 64):
        self.path, self.batch_size = Path(path), int(batch_size)
        if not self.path.is_file():
            raise ExportError(f"{self.path} is not a LiteRT file; pass BASE/NAME/VERSION/model_<variant>.tflite")
        self._runner = _interpreter(str(self.path)).get_signature_runner()
        card = self.path.parent / "model_card.json"
        tasks = json.loads(card.read_text())["tasks"] if card.is_file() else []
        self.tasks = [Task.from_config({k: v for k, v in t.items() if k != "outputs"}) for t in tasks]
        shape = self._runner.get_input_details()["images"]["shape_signature"]
        self.input_shape = (None, *[int(d) for d in shape[1:]])
        self.output_names = [t.name for t in self.tasks]
        self.intervals = {}

    def run(self, images) -> dict:
        """float32 ``[n, H, W, 3]`` → ``{output: array [n, ...]}``, in batches of ``batch_size``."""
        images = np.asarray(images, np.float32)
        parts = [self._runner(images=images[i:i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}

    def predict(self, x, verbose=0) -> list:
        """The heads in task order (probabilities; regression values ``[n, dim]``) for an array or a dataset of
        image batches."""
        batches = [np.asarray(b) for b in x] if isinstance(x, tf.data.Dataset) else [np.asarray(x)]
        out = self.run(np.concatenate(batches))
        return [out[f"{t.name}_probs"] if t.kind in ("classification", "multilabel")
                else out[t.name].reshape(len(out[t.name]), -1) for t in self.tasks]
