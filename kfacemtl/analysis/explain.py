"""What each head looks at: saliency maps with tf-keras-vis (Saliency + SmoothGrad, Grad-CAM++, ScoreCAM).

:func:`explain` works on the list-output model through a per-head sub-model (the head's
output, its softmax/sigmoid replaced by a linear output for the gradient methods, as
tf-keras-vis recommends) and batches the work: many images per call. The Grad-CAM layer is the
last convolution of the backbone unless ``layer`` names another. :func:`region_ratio` turns a
map into a falsifiable number on the synthetic benchmark, whose renderer knows where the cues
live (:func:`kfacemtl.data.synthetic.generate` with ``regions=True``).

Example:
    >>> from kfacemtl.data.synthetic import generate
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> images, labels, regions = generate("lab", 4, split="test", regions=True)   # the renderer knows the cues
    >>> model = build_model(resolve_tasks(["expression"]), widths=(8, 16), depths=1)   # (an untrained one here)
    >>> maps = explain(model, images / 255.0, "expression", target="happy", method="gradcam++")
    >>> maps.shape, region_ratio(maps, regions["expression"]).shape   # ratio > 1: attention on the expression
    ((4, 64, 64), (4,))
"""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Sequence

import keras
import matplotlib
import numpy as np
import tensorflow as tf
from matplotlib.image import imsave
from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
from tf_keras_vis.saliency import Saliency
from tf_keras_vis.scorecam import Scorecam

from kfacemtl.analysis.plots import save_figure, subplots
from kfacemtl.data import decode_image
from kfacemtl.errors import SourceError
from kfacemtl.files import atomic_write
from kfacemtl.models import flat_graph, model_tasks

METHODS = ("saliency", "gradcam++", "scorecam")
#: The default method: on real faces (CK+, the real-face recipe's model) SmoothGrad's maps put 73 % of their mass on
#: the inner face (1.39 times its share of the image) where Grad-CAM++ at the last feature map puts 47 % (0.88):
#: docs/guide/saliency.md.
DEFAULT_METHOD = "saliency"
#: Grad-CAM++'s default layer is the last feature map at least this many pixels on a side: a 3x3 map, upsampled,
#: puts its weight on the image's borders (measured as above).
GRADCAM_MIN_SIZE = 6


def last_conv_layer(model, head: str | None = None) -> str:
    """The Grad-CAM layer: the backbone's feature map (its output layer; with branches, that of ``head``'s group) for
    a multi-task model; otherwise the rectified output of the last convolution.

    That is the ReLU (or activation) that follows the last ``Conv2D`` (through its BatchNormalization); the convolution
    itself when none follows. CAM methods weight these feature maps, which must be the non-negative activations: the
    raw convolution output before BatchNormalization is mostly negative in a trained network and gives empty maps.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> last_conv_layer(build_model(resolve_tasks(["gender"]), widths=(8, 16), depths=1))
        'block2_relu1'
    """
    backbone = getattr(model, "backbone", None)
    if _is_functional(backbone):
        groups = list(getattr(model, "embeddings", dict)())
        if len(groups) > 1:  # a branched backbone: its layers of the head's group are named <group>_...
            group = model.group_of(head) if head is not None else groups[0]
            own = [layer.name for layer in backbone.layers if layer.name.startswith(f"{group}_")]
            return own[-1] if own else backbone.layers[-1].name
        return backbone.layers[-1].name
    if backbone is not None:
        return backbone.name
    layers = model.layers
    convs = [i for i, layer in enumerate(layers) if isinstance(layer, keras.layers.Conv2D)]
    if not convs:
        raise ValueError("layer: the model has no Conv2D layer to compute a class activation map on")
    for layer in layers[convs[-1] + 1:]:
        if isinstance(layer, (keras.layers.ReLU, keras.layers.Activation)):
            return layer.name
        if not isinstance(layer, keras.layers.BatchNormalization):
            break
    return layers[convs[-1]].name


def cam_layer(model, head: str | None = None, method: str = "gradcam++") -> str:
    """The default feature map of a CAM method: for ``scorecam`` :func:`last_conv_layer`; for ``gradcam++`` the last
    rectified feature map on the head's path that is at least :data:`GRADCAM_MIN_SIZE` pixels on a side (the last
    one when none is).

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(48, 48, 3), widths=(8, 8, 8, 8), depths=1)
        >>> last_conv_layer(model), cam_layer(model, "gender", "gradcam++")      # 3x3 at the end, 6x6 before it
        ('block4_relu1', 'block3_relu1')
    """
    last = last_conv_layer(model, head)
    backbone = getattr(model, "backbone", None)
    if method != "gradcam++" or not _is_functional(backbone):
        return last
    names = [layer.name for layer in backbone.layers]
    if last not in names:
        return last
    group = model.group_of(head) if head is not None and hasattr(model, "group_of") else None
    path = [layer for layer in backbone.layers[:names.index(last) + 1]
            if isinstance(layer, keras.layers.ReLU) and ("_block" not in layer.name or
                                                         layer.name.startswith(f"{group}_"))]
    big = [layer.name for layer in path if min(layer.output.shape[1:3]) >= GRADCAM_MIN_SIZE]
    return big[-1] if big else last


def _is_functional(model) -> bool:
    return isinstance(model, keras.Model) and getattr(model, "output", None) is not None and bool(model.layers) \
        and isinstance(model.layers[0], keras.layers.InputLayer)


def head_task(model, head: str):
    """The :class:`Task` of output ``head``; an unknown head is an error listing the valid ones.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["expression", "age"]), input_shape=(32, 32, 3), widths=(8, 16), depths=1,
        ...                     embedding_dim=8, head_units=4)
        >>> head_task(model, "age").kind
        'regression'
    """
    tasks = {t.name: t for t in model_tasks(model)}
    if head not in tasks:
        raise ValueError(f"head: unknown head {head!r}; the model's heads are {sorted(tasks)}")
    return tasks[head]


def resolve_target(task, target) -> int | None:
    """The output index to explain: a class name or index, an AU name, a value name
    (``valence``/``arousal``), or ``None`` (the predicted class; the first value of a regression).

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> resolve_target(get_task("expression"), "happy")
        3
    """
    names = list(task.classes) if task.kind != "regression" else \
        list(task.value_names) or [f"{task.name}[{i}]" for i in range(task.dim)]
    if target is None:
        return None if task.kind == "classification" else 0
    if isinstance(target, (int, np.integer)) or (isinstance(target, str) and target.isdigit()):
        index = int(target)
        if not 0 <= index < len(names):
            raise ValueError(f"target: index {index} is out of range for head {task.name!r}: "
                             f"valid are 0..{len(names) - 1} ({', '.join(names)})")
        return index
    if target not in names:
        raise ValueError(f"target: unknown class {target!r} for head {task.name!r}; valid are {', '.join(names)}")
    return names.index(target)


def head_model(model, head: str, linear: bool = False) -> keras.Model:
    """A model ``image → one head`` that shares ``model``'s layers (and weights). For a multi-task model with a
    functional backbone it runs through the backbone's own graph, so every backbone layer is one of its layers (the
    CAM methods' feature maps); with ``linear`` the head's softmax or sigmoid is left out (a copy of its output layer
    with a linear activation): gradients of logits, not of saturated probabilities. Fused outputs are not applied.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> sub = head_model(build_model(resolve_tasks(["expression", "age"]), widths=(8, 16), depths=1), "expression")
        >>> sub.output_shape, "block2_relu1" in [layer.name for layer in sub.layers]
        ((None, 7), True)
    """
    task = head_task(model, head)
    backbone = getattr(model, "backbone", None)
    if _is_functional(backbone):
        inputs, heads, _ = flat_graph(model, linear=[head] if linear else [])
        return keras.Model(inputs, heads[head], name=f"{head}_head_model")
    if backbone is not None:  # a subclassed backbone: the CAM methods see its output only
        inputs, out_layer = model.inputs, model.task_output(head)
    else:  # a flat graph (kfacemtl 0.1)
        inputs, out_layer = model.inputs, model.get_layer(head)
    out = out_layer.output
    if linear and task.kind != "regression":
        copy = type(out_layer).from_config({**out_layer.get_config(), "activation": "linear", "name": f"{head}_linear"})
        out = copy(out_layer.input)
        copy.set_weights(out_layer.get_weights())
    return keras.Model(inputs, out, name=f"{head}_head_model")


def explain(model, images, head: str, target=None, method: str = DEFAULT_METHOD, layer: str | None = None,
            batch_size: int = 32, smooth_samples: int = 20, smooth_noise: float = 0.15,
            scorecam_max_n: int | None = 32) -> np.ndarray:
    """Saliency maps of one head for a batch of images.

    Args:
        model: a kfacemtl model (list outputs named after tasks).
        images: float32 ``(n, H, W, 3)`` in [0, 1] (as the pipeline feeds the model).
        head: the task to explain.
        target: class name/index (classification), AU name (multilabel), value name
            (``valence``; regression), or ``None``: each image's predicted class, or the first value.
        method: ``saliency`` (gradients with SmoothGrad), ``gradcam++`` or ``scorecam``.
        layer: the feature-map layer of the CAM methods (default :func:`cam_layer`).
        batch_size: images per tf-keras-vis call.
        smooth_samples, smooth_noise: SmoothGrad's noisy copies and noise level.
        scorecam_max_n: ScoreCAM's number of activation channels used (``None``: all).

    Returns:
        float32 ``(n, H, W)`` maps, each normalised to [0, 1].

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["expression", "age"]), input_shape=(32, 32, 3), widths=(8, 16), depths=1,
        ...                     embedding_dim=8, head_units=4)
        >>> maps = explain(model, np.random.default_rng(0).random((2, 32, 32, 3), dtype="float32"), "expression",
        ...                target="happy", method="gradcam++")
        >>> maps.shape, bool(maps.min() >= 0 and maps.max() <= 1)
        ((2, 32, 32), True)
    """
    if method not in METHODS:
        raise ValueError(f"method: unknown method {method!r}; valid are {', '.join(METHODS)}")
    images = np.asarray(images, dtype="float32")
    if images.ndim != 4 or images.shape[1:] != tuple(model.input_shape[1:]):
        raise ValueError(f"images: expected images of shape (n, {', '.join(map(str, model.input_shape[1:]))}), "
                         f"got {images.shape}")
    task = head_task(model, head)
    index = resolve_target(task, target)
    layer = layer or cam_layer(model, head, method)
    sub = head_model(model, head, linear=(method != "scorecam"))
    channels = int(sub.get_layer(layer).output.shape[-1])
    max_n = None if scorecam_max_n is None else max(1, min(int(scorecam_max_n), channels))
    maps = []
    with warnings.catch_warnings():  # tf-keras-vis passes the one input as a list; Keras warns about it
        warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
        for start in range(0, len(images), batch_size):
            maps.append(_explain_batch(sub, images[start:start + batch_size], index, method, layer,
                                       smooth_samples, smooth_noise, max_n, batch_size))
    return np.nan_to_num(np.concatenate(maps), nan=0.0)


def _explain_batch(head_model, x, index, method, layer, smooth_samples, smooth_noise, max_n, batch_size):
    if index is None:  # each image's predicted class
        idx = np.argmax(np.asarray(head_model(x, training=False)), axis=-1)
    else:
        idx = np.full(len(x), index)

    def score(output):
        return tf.gather(output, idx, axis=-1, batch_dims=1)

    if method == "saliency":
        m = Saliency(head_model, clone=False)(score, x, smooth_samples=smooth_samples, smooth_noise=smooth_noise)
    elif method == "gradcam++":
        m = GradcamPlusPlus(head_model, clone=False)(score, x, penultimate_layer=layer,
                                                     seek_penultimate_conv_layer=False)
    else:
        with contextlib.redirect_stdout(io.StringIO()):  # ScoreCAM's model.predict prints a progress bar
            m = Scorecam(head_model, clone=False)(score, x, penultimate_layer=layer, max_N=max_n,
                                                  seek_penultimate_conv_layer=False, batch_size=batch_size)
    return np.asarray(m, dtype="float32").reshape(x.shape[:3])


def region_ratio(maps: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """Per image: (share of saliency mass inside ``masks``) / (share of the image area they cover).

    1 = no preference for the region; > 1 = attention concentrated there. Images whose map is
    all zero, or whose mask is empty, give NaN.

    Example:
        >>> m = np.zeros((1, 4, 4)); m[0, 0, 0] = 1.0
        >>> r = np.zeros((1, 4, 4), bool); r[0, :2, :2] = True
        >>> region_ratio(m, r).tolist()   # all the mass on a quarter of the image
        [4.0]
    """
    maps = np.asarray(maps, dtype="float64")
    masks = np.asarray(masks, dtype=bool)
    total = maps.sum(axis=(1, 2))
    area = masks.mean(axis=(1, 2))
    with np.errstate(invalid="ignore", divide="ignore"):
        share = (maps * masks).sum(axis=(1, 2)) / total
        return np.where((total > 0) & (area > 0), share / area, np.nan)


def _colormap(values: np.ndarray) -> np.ndarray:
    return matplotlib.colormaps["jet"](np.clip(values, 0, 1))[..., :3]


def overlay(image: np.ndarray, heat: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """An RGB float image with the map ``heat`` (H, W) in [0, 1] blended over it.

    Example:
        >>> overlay(np.zeros((4, 4, 3)), np.ones((4, 4))).shape
        (4, 4, 3)
    """
    return np.clip((1 - alpha) * np.asarray(image, dtype="float32") + alpha * _colormap(heat), 0, 1)


def save_maps(images, maps, out_dir, names: Sequence[str], head: str, method: str) -> list[Path]:
    """Write ``<name>_<head>_<method>_{image,map,overlay}.png`` per image; returns the paths.

    Example:
        >>> paths = save_maps(np.zeros((1, 8, 8, 3)), np.ones((1, 8, 8)), "saliency", ["face1.jpg"], "expression",
        ...                   "gradcam++")
        >>> [p.name for p in paths]   # doctest: +NORMALIZE_WHITESPACE
        ['face1_expression_gradcampp_image.png', 'face1_expression_gradcampp_map.png',
         'face1_expression_gradcampp_overlay.png']
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    tag = method.replace("+", "p")
    paths = []
    for image, heat, name in zip(images, maps, names):
        stem = f"{Path(name).stem}_{head}_{tag}"
        for kind, arr in (("image", image), ("map", _colormap(heat)), ("overlay", overlay(image, heat))):
            paths.append(atomic_write(out_dir / f"{stem}_{kind}.png",
                                      lambda tmp, arr=arr: imsave(tmp, np.clip(arr, 0, 1))))
    return paths


def save_grid(images, maps_by_method: dict, path, names: Sequence[str] | None = None, title: str = "",
              labels: Sequence[str] | None = None):
    """One figure: a row per image, the image then one overlay per method; written atomically. Each row is named by
    ``labels`` (e.g. the predicted class and its probability) or the image's file name.

    Example:
        >>> maps = {"saliency": np.ones((2, 8, 8)), "gradcam++": np.zeros((2, 8, 8))}
        >>> save_grid(np.zeros((2, 8, 8, 3)), maps, "grid.png", names=["a.jpg", "b.jpg"], title="expression").name
        'grid.png'
    """
    methods = list(maps_by_method)
    n = len(images)
    fig, axes = subplots(n, 1 + len(methods), figsize=(1.8 * (1 + len(methods)), 1.8 * n + 0.4), squeeze=False)
    for i in range(n):
        axes[i, 0].imshow(np.clip(images[i], 0, 1))
        axes[i, 0].set_ylabel(labels[i] if labels else Path(names[i]).stem if names else str(i), fontsize=7)
        for j, m in enumerate(methods, start=1):
            axes[i, j].imshow(overlay(images[i], maps_by_method[m][i]))
            if i == 0:
                axes[i, j].set_title(m, fontsize=8)
        for ax in axes[i]:
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_title("image", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=9)
    return save_figure(fig, path, dpi=100)


def load_images(paths: Sequence, image_size) -> np.ndarray:
    """Image files → float32 ``(n, H, W, 3)`` in [0, 1] with the training pipeline's decode and resize.

    Example:
        >>> import tensorflow as tf
        >>> _ = open("face.png", "wb").write(tf.io.encode_png(tf.zeros((20, 10, 3), tf.uint8)).numpy())
        >>> load_images(["face.png"], (16, 16)).shape
        (1, 16, 16, 3)
    """

    out = []
    for path in paths:
        if not Path(path).is_file():
            raise SourceError(f"image file {str(path)!r} does not exist")
        try:
            out.append(decode_image(Path(path).read_bytes(), tuple(image_size)).numpy())
        except tf.errors.InvalidArgumentError:
            raise SourceError(f"image file {str(path)!r} is not a readable JPEG/PNG/BMP/GIF image") from None
    return np.stack(out)


def explain_files(model, paths: Sequence, out_dir, heads: Sequence[str] | None = None, target=None,
                  methods: Sequence[str] = (DEFAULT_METHOD,), layer: str | None = None) -> list[Path]:
    """Explain image files for each head and method; write per-image PNGs and a grid per head.

    Writes ``<image>_<head>_<method>_{image,map,overlay}.png`` and ``grid_<head>.png`` (rows:
    images, each named with the head's answer: a class and its probability, calibrated where the model is; columns:
    the image, then one overlay per method) under ``out_dir``.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> _ = open("a.png", "wb").write(tf.io.encode_png(tf.zeros((40, 40, 3), tf.uint8)).numpy())
        >>> model = build_model(resolve_tasks(["expression"]), input_shape=(32, 32, 3), widths=(8,), depths=1)
        >>> sorted(p.name for p in explain_files(model, ["a.png"], "saliency", methods=["saliency"]))
        ... # doctest: +NORMALIZE_WHITESPACE
        ['a_expression_saliency_image.png', 'a_expression_saliency_map.png', 'a_expression_saliency_overlay.png',
         'grid_expression.png']
    """
    heads = list(heads or [t.name for t in model_tasks(model)])
    for head in heads:
        head_task(model, head)  # unknown heads fail before any work
    images = load_images(paths, model.input_shape[1:3])
    names = [str(p) for p in paths]
    answers = model.predict_dict(images, verbose=0) if hasattr(model, "predict_dict") else {}
    written = []
    for head in heads:
        maps = {m: explain(model, images, head, target=target, method=m, layer=layer) for m in methods}
        for m, arr in maps.items():
            written += save_maps(images, arr, out_dir, names, head, m)
        what = f"class {target}" if target is not None else "predicted class" if \
            head_task(model, head).kind == "classification" else "value"
        task, labels = head_task(model, head), None
        if task.kind == "classification" and head in answers:
            labels = [f"{Path(n).stem}\n{task.classes[int(np.argmax(p))]} {float(np.max(p)):.2f}"
                      for n, p in zip(names, answers[head])]
        written.append(save_grid(images, maps, Path(out_dir) / f"grid_{head}.png", names, title=f"{head}: {what}",
                                 labels=labels))
    return written
