"""From photos to every answer: find the faces, cut them as the training crops were cut, and run every head on all
the faces of many photos in batches.

``analyze(photos, model)`` takes photo files, folders (searched recursively) and ``.txt`` lists of paths (one per
line, relative to the list's folder), and returns one record per photo: its ``status`` (``ok``, ``no face``,
``unreadable: ...`` or ``too large: ...``; a bad photo never stops the run) and its ``faces``, each with its
``box``, ``landmarks``, detector ``score`` and ``answers`` (the exported signatures' outputs: ``age``,
``gender: {class, label, probs}`` ...). The model is a Keras model or ``.keras`` file, a run folder, an exported
SavedModel version, or a :class:`~kfacemtl.serving.Client` of a TF Serving server (the detector then runs here and
the aligned faces go to the server in batches).

Example:
    >>> import numpy as np, tensorflow as tf
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> model = build_model(resolve_tasks(["gender"]), input_shape=(32, 32, 3), widths=(4,), depths=1)
    >>> _ = open("face.png", "wb").write(tf.io.encode_png(np.zeros((32, 32, 3), np.uint8)).numpy())
    >>> record = analyze(["face.png"], model, detector="whole", progress=False)[0]
    >>> record["status"], sorted(record["faces"][0]["answers"]["gender"])
    ('ok', ['class', 'label', 'probs'])
"""
from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Sequence

import keras
import numpy as np
import tensorflow as tf

from kfacemtl.data import IMAGE_EXTENSIONS, decode_rgb
from kfacemtl.data.alignment import align_faces
from kfacemtl.data.detection import make_detector
from kfacemtl.data.images import MAX_PIXELS, declared_size
from kfacemtl.files import atomic_write_text
from kfacemtl.models import load_model, model_tasks
from kfacemtl.models.answers import group_outputs, task_outputs
from kfacemtl.models.views import predict_batches, tta_views, view_predictor


def photo_paths(inputs: Sequence) -> list[Path]:
    """The photo files named by ``inputs``: files as given, folders searched recursively (sorted), and ``.txt``
    files read as lists of paths (relative to the list's folder). A path that does not exist is an error naming it.

    Example:
        >>> import pathlib
        >>> _ = pathlib.Path("album/trip").mkdir(parents=True, exist_ok=True)
        >>> for name in ("album/a.jpg", "album/trip/b.png", "album/notes.md"):
        ...     _ = pathlib.Path(name).write_bytes(b"")
        >>> [str(p) for p in photo_paths(["album"])]
        ['album/a.jpg', 'album/trip/b.png']
    """
    found = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found += sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        elif path.is_file() and path.suffix.lower() == ".txt":
            lines = [ln.strip() for ln in path.read_text().splitlines()]
            found += photo_paths([path.parent / ln for ln in lines if ln and not ln.startswith("#")])
        elif path.is_file():
            found.append(path)
        else:
            raise FileNotFoundError(f"photos: {str(path)!r} is not a file or folder")
    return found


class _KerasAnswers:
    """Answers from a Keras model in this process: crops in, the exported signatures' outputs per face out."""

    def __init__(self, model, batch_size=64, tta=None):
        self.model, self.tasks, self.batch_size = model, model_tasks(model), batch_size
        self.image_size = tuple(model.input_shape[1:3])
        views = tta_views(tta)
        self.views = None if views is None else view_predictor(model, views)

    def __call__(self, crops: np.ndarray) -> list[dict]:
        x = crops.astype("float32") / 255.0
        if self.views is None:
            outputs = self.model.predict(x, batch_size=self.batch_size, verbose=0)
        else:  # each output averaged over the views, batch by batch
            outputs = predict_batches(self.views, (x[i:i + self.batch_size] for i in range(0, len(x), self.batch_size)))
        named = task_outputs(self.tasks, outputs, getattr(self.model, "intervals", None))
        named = {k: v.numpy() for k, v in named.items()}
        return group_outputs(named, len(crops))


class _ServedAnswers:
    """Answers from a served model (a :class:`~kfacemtl.serving.Client`, or anything with its ``predict`` of encoded
    images): the crops go as PNG images to its ``serving_default`` signature, which decodes them to the same
    pixels."""

    def __init__(self, predictor, image_size):
        self.predictor, self.image_size = predictor, tuple(image_size)

    def __call__(self, crops: np.ndarray) -> list[dict]:
        return self.predictor.predict([tf.io.encode_png(c).numpy() for c in crops])


class _SavedModelAnswers:
    """Answers from an exported SavedModel version run in this process, through its ``serving_float`` signature."""

    def __init__(self, path, batch_size=64):
        self.signature = tf.saved_model.load(str(path)).signatures["serving_float"]
        spec = self.signature.structured_input_signature[1]
        self.image_size, self.batch_size = tuple(next(iter(spec.values())).shape[1:3]), batch_size

    def __call__(self, crops: np.ndarray) -> list[dict]:
        results = []
        for start in range(0, len(crops), self.batch_size):
            batch = tf.constant(crops[start:start + self.batch_size], tf.float32) / 255.0
            out = {k: v.numpy() for k, v in self.signature(images=batch).items()}
            results += group_outputs(out, len(batch))
        return results


def answers_for(model, image_size=None, batch_size=64, tta=None):
    """What :func:`analyze` runs the faces through, from a Keras model, a ``.keras`` file, a run folder (its
    ``model.keras``), an exported SavedModel version folder, or a serving client (with ``image_size``): a callable
    from ``uint8`` crops ``(N, H, W, 3)`` to one answers dict per crop, with its ``image_size``. ``tta`` (``"flip"``
    or ``"six"``, Keras models only) averages every answer over views of each face; an exported model answers as it
    was exported (``kfacemtl export --tta``).

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> answers = answers_for(build_model(resolve_tasks(["age"]), input_shape=(24, 24, 3), widths=(4,), depths=1))
        >>> answers.image_size, list(answers(np.zeros((2, 24, 24, 3), np.uint8))[1])
        ((24, 24), ['age'])
    """
    if isinstance(model, keras.Model):
        return _KerasAnswers(model, batch_size, tta)
    if isinstance(model, (str, Path)):
        path = Path(model) / "model.keras" if (Path(model) / "model.keras").is_file() else Path(model)
        if path.suffix == ".keras" and path.is_file():
            return _KerasAnswers(load_model(path, compile=False), batch_size, tta)
        if not (path / "saved_model.pb").is_file():
            raise FileNotFoundError(f"model: {str(path)!r} is not a .keras file, a run folder or a SavedModel "
                                    "version folder")
        _refuse_views(tta)
        return _SavedModelAnswers(path, batch_size)
    if hasattr(model, "predict") and hasattr(model, "describe"):  # a serving client or local predictor
        _refuse_views(tta)
        if image_size is None:
            raise ValueError("image_size: needed for a served model (the model's input size, e.g. 48)")
        return _ServedAnswers(model, _pair(image_size))
    raise TypeError(f"model: expected a Keras model, a path or a serving client, got {type(model).__name__}")


def _refuse_views(tta):
    """An exported or served model answers as it was exported: test-time augmentation is an error there."""
    if tta_views(tta) is not None:
        raise ValueError(f"tta: {tta!r} needs a Keras model (a run folder or .keras file); an exported or served "
                         "model answers as it was exported: export it with tta (kfacemtl export --tta)")


def _pair(size):
    return (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)


def _read(path: Path, max_pixels: int):
    """``(photo, status)``: the decoded photo, or None and why not."""
    try:
        data = path.read_bytes()
        width, height = (int(v) for v in declared_size(data).numpy())
        if width * height > max_pixels:
            return None, f"too large: {width}x{height} pixels (the limit is {max_pixels:,})"
        return decode_rgb(data).numpy(), "ok"
    except OSError as e:
        return None, f"unreadable: {e.strerror or e}"
    except tf.errors.OpError as e:
        reason = re.sub(r"\{\{[^}]*\}\}|\[Op:[^\]]*\]", "", e.message.splitlines()[0]).strip()  # TF's graph details
        if "Unknown image file format" in reason or not data:
            reason = "not a JPEG, PNG, GIF, BMP or WebP image" + ("" if data else " (an empty file)")
        return None, f"unreadable: {reason[:200]}"


def analyze(photos, model, *, detector="mtcnn", image_size=None, batch_size=64, photos_per_batch=16,
            max_pixels=MAX_PIXELS, progress=True, timings=None, explain_heads: Sequence[str] = (),
            explain_dir=None, tta=None) -> list[dict]:
    """One record per photo (see the module docstring), in input order.

    ``detector``: a registered detector name (``mtcnn``; ``whole`` when each photo is already a face crop) or a
    :class:`~kfacemtl.data.detection.FaceDetector`; ``photos_per_batch`` photos are read, detected and aligned
    together, and their faces answered in one batch; ``timings`` (a dict) receives the seconds spent reading,
    detecting, aligning and answering. ``explain_heads`` (with a Keras model): a saliency map of each face for each
    of these heads (the default method, :data:`~kfacemtl.analysis.explain.DEFAULT_METHOD`; each face's answer as
    target), written to ``explain_dir`` as ``<n>_<photo>_face<k>_<head>_<method>_{image,map,overlay}.png``; each
    face's ``explanations`` names its overlays. ``tta`` (``"flip"``, ``"six"``; a Keras model): every answer averaged
    over views of each face (:func:`answers_for`).

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["age"]), input_shape=(24, 24, 3), widths=(4,), depths=1)
        >>> _ = open("empty.png", "wb").write(b"")
        >>> [r["status"] for r in analyze(["empty.png"], model, detector="whole", progress=False)]
        ['unreadable: ...']
    """
    paths = photo_paths(photos)
    answer = answers_for(model, image_size, batch_size, tta)
    if explain_heads and (not isinstance(answer, _KerasAnswers) or explain_dir is None):
        raise ValueError("explain_heads: saliency maps need a Keras model (a run folder or .keras file, not a served "
                         "model) and an explain_dir")
    detector = make_detector(detector) if isinstance(detector, str) else detector
    spent = timings if timings is not None else {}
    for key in ("read", "detect", "align", "answer"):
        spent.setdefault(key, 0.0)
    bar = keras.utils.Progbar(len(paths), unit_name="photo") if progress and len(paths) > photos_per_batch else None
    records = []
    for start in range(0, len(paths), photos_per_batch):
        chunk = paths[start:start + photos_per_batch]
        t = time.perf_counter()
        read = [_read(p, max_pixels) for p in chunk]
        spent["read"] += time.perf_counter() - t
        good = [i for i, (photo, _) in enumerate(read) if photo is not None]
        t = time.perf_counter()
        found = dict(zip(good, detector.detect([read[i][0] for i in good]))) if good else {}
        spent["detect"] += time.perf_counter() - t
        t = time.perf_counter()
        crops = [align_faces(read[i][0], np.stack([f.landmarks for f in faces]), answer.image_size)
                 for i, faces in found.items() if faces]
        crops = tf.cast(tf.round(tf.concat(crops, 0) * 255.0), tf.uint8).numpy() if crops else None
        spent["align"] += time.perf_counter() - t
        t = time.perf_counter()
        answers = iter(answer(crops) if crops is not None else [])
        spent["answer"] += time.perf_counter() - t
        overlays = iter([])
        if explain_heads and crops is not None:
            names = [f"{start + i:04d}_{path.stem}_face{k}" for i, path in enumerate(chunk)
                     for k in range(len(found.get(i, [])))]
            overlays = iter(_explained(answer.model, crops, names, explain_heads, explain_dir))
        for i, path in enumerate(chunk):
            photo, status = read[i]
            faces = [dict(f.to_dict(), answers=next(answers)) for f in found.get(i, [])]
            if explain_heads:
                for face in faces:
                    face["explanations"] = next(overlays)
            record = {"photo": str(path), "status": status if photo is None or faces else "no face", "faces": faces}
            if photo is not None:
                record["width"], record["height"] = int(photo.shape[1]), int(photo.shape[0])
            records.append(record)
        if bar is not None:
            bar.update(len(records))
    return records


def _explained(model, crops, names, heads, out_dir) -> list[dict]:
    """Saliency maps of ``heads`` for the ``crops`` (``uint8``); per crop ``{head: overlay path}``."""
    from kfacemtl.analysis.explain import DEFAULT_METHOD, explain, save_maps
    images = crops.astype("float32") / 255.0
    per_face = [{} for _ in names]
    for head in heads:
        written = save_maps(images, explain(model, images, head), out_dir, names, head, DEFAULT_METHOD)
        for face, overlay_path in zip(per_face, [p for p in written if p.stem.endswith("_overlay")]):
            face[head] = str(overlay_path)
    return per_face


def main_answers(answers: dict) -> dict:
    """The short answer per task: a class name with its probability, an age in years, the active AUs.

    Example:
        >>> main_answers({"age": 31.46, "age_interval": [24.2, 41.9],
        ...               "gender": {"class": "female", "label": 1, "probs": [0.2, 0.8]}})
        {'age': 31.5, 'age_interval': '24-42', 'gender': 'female', 'gender_p': 0.8}
    """
    out = {}
    for task, value in answers.items():
        if isinstance(value, dict) and "class" in value:
            out[task], out[f"{task}_p"] = value["class"], round(float(max(value["probs"])), 3)
        elif isinstance(value, dict) and "active" in value:
            out[task] = value["active"]
        elif task.endswith("_interval"):  # a calibrated regression head's low and high ends
            out[task] = f"{value[0]:.0f}-{value[1]:.0f}"
        elif isinstance(value, list):
            out[task] = ",".join(f"{v:.3f}" for v in value)
        else:
            out[task] = round(float(value), 1)
    return out


def write_records(records: Sequence[dict], out_dir) -> dict:
    """Write ``results.jsonl`` (a photo per line, everything) and ``results.csv`` (a face per row, the main
    answers; a photo without faces is one row with its status) into ``out_dir``; returns their paths.

    Example:
        >>> paths = write_records([{"photo": "a.jpg", "status": "no face", "faces": []}], "analysis")
        >>> open(paths["csv"]).read().splitlines()
        ['photo,status,face,x,y,width,height,score', 'a.jpg,no face,,,,,,']
    """
    import pandas as pd
    out = Path(out_dir)
    rows = []
    for r in records:
        for k, face in list(enumerate(r["faces"])) or [(None, None)]:
            row = {"photo": r["photo"], "status": r["status"], "face": k}
            if face is not None:
                row.update(zip(("x", "y", "width", "height"), face["box"]), score=face["score"])
                row.update(main_answers(face["answers"]))
            rows.append(row)
    columns = ["photo", "status", "face", "x", "y", "width", "height", "score"]
    table = pd.DataFrame(rows, columns=columns + [c for c in pd.DataFrame(rows).columns if c not in columns])
    table["face"] = table["face"].astype("Int64")  # blank, not NaN, for a photo without faces
    paths = {"jsonl": out / "results.jsonl", "csv": out / "results.csv"}
    atomic_write_text(paths["jsonl"], "".join(json.dumps(r) + "\n" for r in records))
    atomic_write_text(paths["csv"], table.to_csv(index=False))
    return paths
