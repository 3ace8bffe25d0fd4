"""A small residual backbone (ResNet's basic blocks): a second trunk to set beside the VGG one.

Example:
    >>> backbone = ResidualBackbone(input_shape=(64, 64, 3), widths=(16, 32), depths=1)
    >>> backbone.output.shape
    (None, 16, 16, 32)
"""
from __future__ import annotations

from typing import Sequence

import keras

from kfacemtl.models.backbones.base import Backbone, check_branching, check_trunk
from kfacemtl.models.backbones.registry import register_backbone


@register_backbone("residual")
@keras.saving.register_keras_serializable(package="kfacemtl")
class ResidualBackbone(Backbone):
    """A residual trunk (a functional ``keras.Model``): a 3×3 stem, then per stage ``depths[s]`` residual blocks.

    A block is (conv 3×3 → BN → ReLU → conv 3×3 → BN) added to its input (through an average pool and a 1×1
    convolution where the size or the width changes, as ResNet-D) → ReLU. Every stage after the first halves the
    feature map in its first block. Layers are named ``stem_*`` and ``stage{s}_block{b}_*``; the output is the last
    block's ``..._out`` ReLU.

    Args:
        input_shape: ``(height, width, 3)``.
        widths: channels of each stage (the stem has the first stage's width).
        depths: residual blocks per stage (one int for all stages, or one per stage).
        stem_stride: stride of the stem convolution.
        dtype: the layers' dtype policy.
        branch_at, branches: stages ``1 ... branch_at`` shared, then a copy of the rest per group named in
            ``branches`` (its layers ``<group>_stage...``; one output per group).

    Example:
        >>> backbone = ResidualBackbone(input_shape=(32, 32, 3), widths=(8, 16), depths=(1, 1))
        >>> backbone.layers[-1].name, backbone.count_params() < 6000
        ('stage2_block1_out', True)
    """

    def __init__(self, input_shape: Sequence[int] = (64, 64, 3), widths: Sequence[int] = (32, 64, 128, 256),
                 depths: Sequence[int] | int = 1, stem_stride: int = 2, dtype=None, branch_at=None, branches=(),
                 **kwargs):
        widths, depths, stem_stride = check_trunk(widths, depths, stem_stride)
        branch_at, branches = check_branching(branch_at, branches, len(widths))
        input_shape = tuple(int(v) for v in input_shape)
        layers = keras.layers
        inputs = keras.Input(input_shape, name="image")
        x = layers.Conv2D(widths[0], 3, strides=stem_stride, padding="same", use_bias=False, name="stem_conv",
                          dtype=dtype)(inputs)
        x = layers.BatchNormalization(name="stem_bn", dtype=dtype)(x)
        x = layers.ReLU(name="stem_relu", dtype=dtype)(x)
        shared = branch_at or len(widths)

        def stages(x, first, last, prefix=""):
            for s in range(first, last + 1):
                width = widths[s - 1]
                for b in range(1, depths[s - 1] + 1):
                    name = f"{prefix}stage{s}_block{b}"
                    stride = 2 if s > 1 and b == 1 else 1
                    shortcut = x
                    y = layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                                      name=f"{name}_conv1", dtype=dtype)(x)
                    y = layers.BatchNormalization(name=f"{name}_bn1", dtype=dtype)(y)
                    y = layers.ReLU(name=f"{name}_relu1", dtype=dtype)(y)
                    y = layers.Conv2D(width, 3, padding="same", use_bias=False, name=f"{name}_conv2", dtype=dtype)(y)
                    y = layers.BatchNormalization(name=f"{name}_bn2", dtype=dtype)(y)
                    if stride != 1:  # ResNet-D's shortcut: average, then a 1×1 convolution (a strided 1×1 one
                        # crashes TensorFlow 2.21's oneDNN CPU kernels when gradients flow to its input, as saliency
                        # maps need)
                        shortcut = layers.AveragePooling2D(2, name=f"{name}_shortcut_pool", dtype=dtype)(shortcut)
                    if stride != 1 or shortcut.shape[-1] != width:
                        shortcut = layers.Conv2D(width, 1, use_bias=False, name=f"{name}_shortcut",
                                                 dtype=dtype)(shortcut)
                        shortcut = layers.BatchNormalization(name=f"{name}_shortcut_bn", dtype=dtype)(shortcut)
                    x = layers.Add(name=f"{name}_add", dtype=dtype)([y, shortcut])
                    x = layers.ReLU(name=f"{name}_out", dtype=dtype)(x)
            return x

        x = stages(x, 1, shared)
        outputs = [stages(x, shared + 1, len(widths), f"{g}_") for g in branches] if branches else x
        kwargs.setdefault("name", "residual_backbone")
        super().__init__(inputs, outputs, input_shape, widths, depths, stem_stride, dtype=dtype, branch_at=branch_at,
                         branches=branches, shared_layer=f"stage{shared}_block{depths[shared - 1]}_conv2", **kwargs)
