"""Building, loading and measuring multi-task models.

Example:
    >>> from kfacemtl.tasks import resolve_tasks
    >>> model = build_model(resolve_tasks(["expression"]), input_shape=(32, 32, 3), widths=(8, 16), depths=1)
    >>> model.output_shape, count_flops(model) > 0
    ((None, 7), True)
"""
from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import keras

from kfacemtl.errors import KfacemtlError
from kfacemtl.models.backbones import make_backbone
from kfacemtl.models.heads import TaskOutput
from kfacemtl.models.legacy import is_flat_model_file, load_flat_model
from kfacemtl.models.multitask import MultiTaskModel, check_groups
from kfacemtl.tasks import Task


def build_model(tasks: Sequence[Task], input_shape=(64, 64, 3), widths=(32, 64, 128, 256), depths=(1, 2, 2, 1),
                stem_stride: int = 2, pooling: str = "flatten", embedding_dim: int = 256, head_units: int = 64,
                dropout: float = 0.3, mixed_precision: bool = False, backbone="vgg", fusions: Sequence = (),
                branch_at: int | None = None, branches: Mapping[str, Sequence[str]] | None = None,
                name: str = "kfacemtl") -> MultiTaskModel:
    """Build the multi-task network: a backbone, the shared embedding, one head per task.

    Args:
        tasks: the tasks, in output order.
        input_shape: ``(height, width, 3)``; images are float32 in [0, 1].
        widths, depths, stem_stride: the backbone's trunk, when ``backbone`` is a registered name.
        pooling, embedding_dim, head_units, dropout: what the model adds after the backbone
            (:class:`~kfacemtl.models.MultiTaskModel`).
        mixed_precision: compute in float16 (``mixed_float16``: float32 weights; the task outputs, and so the
            losses, stay float32; ``compile`` then scales the loss). Pays on GPUs with tensor cores; slower on CPUs.
        backbone: a registered backbone's name (``vgg``, the default, or ``residual``:
            :mod:`kfacemtl.models.backbones`), or any Keras model from images to a feature map (its own input
            shape and dtype policy are used).
        fusions: :class:`~kfacemtl.models.fusion.OutputFusion` layers: fused outputs.
        branch_at: task-specific capacity: the first ``branch_at`` blocks of a registered backbone are shared and
            every group of ``branches`` gets its own copy of the later blocks, pooling and embedding (``branch_at`` =
            the number of blocks: only the embedding per group). None: everything up to the heads shared.
        branches: ``{group: [task, ...]}`` with ``branch_at`` (default: a group per task), e.g. ``{"face": ["age",
            "gender", "race"], "expression": ["expression"]}``.

    Returns:
        A :class:`~kfacemtl.models.MultiTaskModel` with one output per task, named after it, in task order.

    Raises:
        ValueError: an argument out of range, naming it.

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> tasks = resolve_tasks(["expression", "age"])
        >>> build_model(tasks, widths=(8, 16), depths=1).output_shape
        [(None, 7), (None, 1)]
        >>> import keras                                   # any Keras model as the backbone
        >>> inputs = keras.Input((48, 48, 3))
        >>> mine = keras.Model(inputs, keras.layers.Conv2D(8, 3, strides=4)(inputs))
        >>> build_model(tasks, backbone=mine, embedding_dim=16).input_shape
        (None, 48, 48, 3)
        >>> branched = build_model(tasks, widths=(8, 16), depths=1, branch_at=1)   # block 2 per task
        >>> branched.branches, branched.get_layer("vgg_backbone").get_layer("expression_block2_conv1").filters
        ({'expression': ('expression',), 'age': ('age',)}, 16)
    """
    tasks = list(tasks)
    if branch_at is not None and branches is None:
        branches = {t.name: [t.name] for t in tasks}
    groups = check_groups(branches, [t.name for t in tasks]) if branch_at is not None or branches else {}
    if isinstance(backbone, str):
        input_shape = tuple(int(v) for v in input_shape)
        if len(input_shape) != 3 or input_shape[-1] != 3:
            raise ValueError(f"input_shape: expected [height, width, 3], got {list(input_shape)}")
        backbone = make_backbone(backbone, input_shape=input_shape, widths=widths, depths=depths,
                                 stem_stride=stem_stride, dtype="mixed_float16" if mixed_precision else None,
                                 **(dict(branch_at=branch_at, branches=tuple(groups)) if groups else {}))
    elif branch_at is not None:
        raise ValueError("branch_at: needs a registered backbone (by name); a Keras model with one output per group "
                         "is branched already: pass branches alone")
    return MultiTaskModel(backbone, tasks, pooling=pooling, embedding_dim=embedding_dim, head_units=head_units,
                          dropout=dropout, fusions=fusions, branches=groups or None, name=name)


def model_tasks(model: keras.Model) -> list[Task]:
    """The tasks of a built or loaded model, in output order.

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["expression"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> [(t.name, len(t.classes)) for t in model_tasks(model)]
        [('expression', 7)]
    """
    if isinstance(model, MultiTaskModel):
        return list(model.tasks)
    tasks = []
    for name in model.output_names:
        layer = model.get_layer(name)
        if not isinstance(layer, TaskOutput):
            raise ValueError(f"output {name!r} is not a kfacemtl TaskOutput layer; was this model built by build_model?")
        tasks.append(layer.task)
    return tasks


def model_file(path) -> Path:
    """The ``.keras`` file that ``path`` names: the file itself, or a run directory's ``model.keras``.

    Raises:
        KfacemtlError: ``path`` does not exist, or is a directory without ``model.keras``.

    Example:
        >>> try:
        ...     model_file("no/such/run")
        ... except KfacemtlError as e:
        ...     print(e)
        model file 'no/such/run' does not exist; pass a run directory or a .keras file
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "model.keras").is_file():
            raise KfacemtlError(f"{path} is a directory without model.keras; pass a run directory or a .keras file")
        return path / "model.keras"
    if not path.is_file():
        raise KfacemtlError(f"model file {str(path)!r} does not exist; pass a run directory or a .keras file")
    return path


def load_model(path, compile: bool = True) -> MultiTaskModel:
    """Load a ``.keras`` file saved from a kfacemtl model (safe mode: no arbitrary code).

    Files saved by kfacemtl 0.1 (one flat graph) are converted: the same network, the same answers, in today's
    structure (compiled as it was, its optimizer's state starting afresh).

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1).save("m.keras")
        >>> load_model("m.keras").output_names
        ['age']
    """
    if is_flat_model_file(path):
        return load_flat_model(path, compile=compile)
    return keras.saving.load_model(path, compile=compile, safe_mode=True)


def flat_graph(model: MultiTaskModel, linear: Sequence[str] = ()) -> tuple:
    """The model's graph replayed on its backbone's own input, so every backbone layer is a layer of one plain
    functional graph: ``(inputs, {task: head output}, [outputs in task order])``, sharing the model's layers (and
    weights). ``linear`` names tasks whose head comes without its softmax or sigmoid (a copy of the output layer with a
    linear activation: gradients of logits, for saliency). Needs a functional backbone.

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4, 8), depths=1)
        >>> inputs, heads, outputs = flat_graph(model)
        >>> keras.Model(inputs, outputs).get_layer("block2_relu1").output.shape
        (None, 4, 4, 8)
    """
    backbone = model.backbone
    if getattr(backbone, "output", None) is None or not hasattr(backbone, "inputs"):
        raise ValueError(f"backbone: {type(backbone).__name__} is not a functional Keras model; its layers cannot "
                         "join one graph")
    names = {layer.name for layer in model.layers}
    embedded = {}
    for group, x in zip(model.embeddings(), backbone.outputs):
        p = f"{group}_" if group else ""
        for name in ("flatten", "gap", "embedding_dense", "embedding_bn", "embedding", "embedding_dropout"):
            if p + name in names:
                x = model.get_layer(p + name)(x)
        embedded[group] = x
    heads = {}
    for task in model.tasks:
        x = embedded[model.group_of(task.name)]
        h = model.get_layer(f"{task.name}_hidden")(x) if f"{task.name}_hidden" in names else x
        layer = model.task_output(task.name)
        if task.name in linear and task.kind != "regression":
            copy = type(layer).from_config({**layer.get_config(), "activation": "linear",
                                            "name": f"{task.name}_linear"})
            heads[task.name] = copy(h)
            copy.set_weights(layer.get_weights())
        else:
            heads[task.name] = layer(h)
    outputs = dict(heads)
    for f in model.fusions:
        outputs[f.target] = f([heads[f.source], heads[f.target]])
    return backbone.inputs, heads, [outputs[t.name] for t in model.tasks]


def flat_model(model: MultiTaskModel) -> keras.Model:
    """The same network (the same layers and weights) as one plain functional ``keras.Model``, every layer at one
    level: for tools that walk a model's layers or configs (a portable architecture, saliency libraries).

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
        >>> flat = flat_model(model)
        >>> "block1_conv1" in [layer.name for layer in flat.layers], flat.output_names
        (True, ['gender'])
    """
    inputs, _, outputs = flat_graph(model)
    return keras.Model(inputs, outputs, name=f"{model.name}_flat")


def count_flops(model: keras.Model) -> int:
    """Multiply-adds × 2 of one forward pass of one image through the conv and dense layers (nested models
    included).

    Example:
        >>> inputs = keras.Input((4,))
        >>> count_flops(keras.Model(inputs, keras.layers.Dense(3)(inputs)))   # 4 x 3 multiply-adds x 2
        24
    """
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.Model):
            flops += count_flops(layer)
        elif isinstance(layer, keras.layers.SeparableConv2D):
            _, h, w, c_out = layer.output.shape
            k = layer.depthwise_kernel.shape
            flops += 2 * h * w * (k[0] * k[1] * k[2] * k[3] + k[2] * k[3] * c_out)
        elif isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            k = layer.kernel.shape
            flops += 2 * h * w * c_out * k[0] * k[1] * k[2]
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(flops)
