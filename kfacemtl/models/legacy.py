"""Loading ``.keras`` files saved by kfacemtl 0.1, whose multi-task model was one flat functional graph (backbone,
embedding and heads side by side, fused outputs in its config), into today's :class:`~kfacemtl.models.MultiTaskModel`.

The file is loaded as Keras saved it (a plain functional model: its weights, its compile settings), then rebuilt:
the VGG trunk's widths, depths and stride are read from its ``block{b}_conv{c}`` layers, pooling, embedding width,
dropout and head units from the layers after it, and every layer's weights are copied by name. The answers are the
same to the last bit; the optimizer's state (its moments) starts afresh.

Example:
    >>> is_flat_model_file("no-such-file.keras")
    False
"""
from __future__ import annotations

import json
import re
import zipfile

import keras

from kfacemtl.models.backbones import VGGBackbone
from kfacemtl.models.fusion import OutputFusion
from kfacemtl.models.heads import TaskOutput
from kfacemtl.models.multitask import MultiTaskModel
from kfacemtl.tasks import get_task

_BLOCK = re.compile(r"^block(\d+)_conv(\d+)$")


def is_flat_model_file(path) -> bool:
    """Whether ``path`` is a ``.keras`` file holding a kfacemtl 0.1 multi-task model (a flat graph).

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1).save("new.keras")
        >>> is_flat_model_file("new.keras")
        False
    """
    try:
        with zipfile.ZipFile(path) as z:
            config = json.loads(z.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile):
        return False  # not a .keras file: Keras's own loader says what is wrong
    return config.get("registered_name") == "kfacemtl>MultiTaskModel" and "layers" in config.get("config", {})


class FlatModel(keras.Model):
    """kfacemtl 0.1's ``MultiTaskModel`` as Keras saved it: a functional graph, plus its fusions' configs.

    Example:
        >>> FlatModel.__name__
        'FlatModel'
    """

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        fusions = config.pop("fusions", [])
        model = keras.Model.from_config(config, custom_objects)
        model.flat_fusions = fusions
        return model


def load_flat_model(path, compile: bool = True) -> MultiTaskModel:
    """A kfacemtl 0.1 ``.keras`` file as today's :class:`~kfacemtl.models.MultiTaskModel` (see the module docstring).

    Example:
        >>> flat = flat_example()                                       # a 0.1-style graph (see convert)
        >>> flat.save("old.keras")
        >>> load_flat_model("old.keras").backbone.widths                 # kfacemtl.load_model calls it for 0.1 files
        (4,)
    """
    with keras.saving.custom_object_scope({"kfacemtl>MultiTaskModel": FlatModel}):
        flat = keras.saving.load_model(path, compile=compile, safe_mode=True)
    return convert(flat)


def convert(flat: keras.Model) -> MultiTaskModel:
    """Today's model of a kfacemtl 0.1 flat graph, with its weights (and compiled as it was).

    Example:
        >>> model = convert(flat_example())
        >>> type(model.backbone).__name__, model.output_names, model.head_units, model.dropout
        ('VGGBackbone', ['gender'], 0, 0.0)
    """
    names = {layer.name for layer in flat.layers}
    blocks: dict[int, list] = {}
    for layer in flat.layers:
        m = _BLOCK.match(layer.name)
        if m:
            blocks.setdefault(int(m.group(1)), []).append(layer)
    if not blocks or "embedding_dense" not in names:
        raise ValueError(f"{flat.name}: not a kfacemtl 0.1 model (no block1_conv1 or embedding_dense layer)")
    first = blocks[min(blocks)][0]
    backbone = VGGBackbone(flat.input_shape[1:], [blocks[b][0].filters for b in sorted(blocks)],
                           [len(blocks[b]) for b in sorted(blocks)], first.strides[0], dtype=first.dtype_policy.name)
    tasks = [flat.get_layer(n).task for n in flat.output_names]
    hidden = f"{tasks[0].name}_hidden"
    model = MultiTaskModel(
        backbone, tasks, pooling="flatten" if "flatten" in names else "avg",
        embedding_dim=flat.get_layer("embedding_dense").units,
        head_units=flat.get_layer(hidden).units if hidden in names else 0,
        dropout=flat.get_layer("embedding_dropout").rate if "embedding_dropout" in names else 0.0,
        fusions=[OutputFusion(**f) for f in getattr(flat, "flat_fusions", [])], name=flat.name)
    for layer in [*backbone.layers, *model.layers]:
        if layer.weights and layer is not backbone:
            source = layer.task.name if isinstance(layer, TaskOutput) else layer.name
            layer.set_weights(flat.get_layer(source).get_weights())
    if flat.compiled:
        model.compile_from_config(flat.get_compile_config())
    return model


def flat_example() -> keras.Model:
    """A small model in kfacemtl 0.1's flat layout (one VGG block, no hidden layers, gender only): the shape
    :func:`convert` reads, for the examples.

    Example:
        >>> [layer.name for layer in flat_example().layers][1:4]
        ['block1_conv1', 'block1_bn1', 'block1_relu1']
    """
    layers = keras.layers
    inputs = keras.Input((16, 16, 3), name="image")
    x = layers.Conv2D(4, 3, strides=2, padding="same", use_bias=False, name="block1_conv1")(inputs)
    x = layers.ReLU(name="block1_relu1")(layers.BatchNormalization(name="block1_bn1")(x))
    x = layers.Dense(8, use_bias=False, name="embedding_dense")(layers.Flatten(name="flatten")(x))
    x = layers.ReLU(name="embedding")(layers.BatchNormalization(name="embedding_bn")(x))
    return keras.Model(inputs, [TaskOutput(get_task("gender"), name="gender")(x)], name="kfacemtl")
