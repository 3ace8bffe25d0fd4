"""The VGG-style backbone: blocks of (conv 3×3 → BN → ReLU) × depth, a max-pool between blocks.

Example:
    >>> import keras
    >>> backbone = VGGBackbone(input_shape=(64, 64, 3), widths=(16, 32), depths=1)
    >>> backbone.output.shape, backbone.get_config()["widths"]
    ((None, 16, 16, 32), [16, 32])
"""
from __future__ import annotations

from typing import Sequence

import keras

from kfacemtl.models.backbones.base import Backbone, check_branching, check_trunk
from kfacemtl.models.backbones.registry import register_backbone


@register_backbone("vgg")
@keras.saving.register_keras_serializable(package="kfacemtl")
class VGGBackbone(Backbone):
    """A VGG-style convolutional trunk (a functional ``keras.Model``): images in [0, 1] → a feature map.

    Layers are named ``block{b}_conv{c}``, ``block{b}_bn{c}``, ``block{b}_relu{c}`` and ``block{b}_pool``; the output is
    the last block's ReLU (no pooling after it: the multi-task model pools).

    Args:
        input_shape: ``(height, width, 3)``.
        widths: channels of each block.
        depths: convolutions per block (one int for all blocks, or one per block).
        stem_stride: stride of the very first convolution (2 halves the work of a 64×64 input).
        dtype: the layers' dtype policy (None: Keras's global one; ``mixed_float16``: compute in float16, weights in
            float32).
        branch_at, branches: blocks ``1 ... branch_at`` shared, then a copy of the rest per group named in
            ``branches`` (its layers ``<group>_block...``; one output per group).

    Example:
        >>> backbone = VGGBackbone(input_shape=(32, 32, 3), widths=(8, 16), depths=(1, 2))
        >>> [layer.name for layer in backbone.layers][-3:]
        ['block2_conv2', 'block2_bn2', 'block2_relu2']
        >>> branched = VGGBackbone(input_shape=(32, 32, 3), widths=(8, 16), depths=1, branch_at=1, branches=("a", "b"))
        >>> [tuple(o.shape) for o in branched.outputs], branched.shared_layer
        ([(None, 8, 8, 16), (None, 8, 8, 16)], 'block1_conv1')
    """

    def __init__(self, input_shape: Sequence[int] = (64, 64, 3), widths: Sequence[int] = (32, 64, 128, 256),
                 depths: Sequence[int] | int = (1, 2, 2, 1), stem_stride: int = 2, dtype=None, branch_at=None,
                 branches=(), **kwargs):
        widths, depths, stem_stride = check_trunk(widths, depths, stem_stride)
        branch_at, branches = check_branching(branch_at, branches, len(widths))
        input_shape = tuple(int(v) for v in input_shape)
        inputs = keras.Input(input_shape, name="image")
        shared = branch_at or len(widths)

        def blocks(x, first, last, prefix=""):
            for b in range(first, last + 1):
                if b > 1:
                    x = keras.layers.MaxPooling2D(2, name=f"{prefix}block{b - 1}_pool", dtype=dtype)(x)
                for c in range(1, depths[b - 1] + 1):
                    stride = stem_stride if (b, c) == (1, 1) else 1
                    x = keras.layers.Conv2D(widths[b - 1], 3, strides=stride, padding="same", use_bias=False,
                                            name=f"{prefix}block{b}_conv{c}", dtype=dtype)(x)
                    x = keras.layers.BatchNormalization(name=f"{prefix}block{b}_bn{c}", dtype=dtype)(x)
                    x = keras.layers.ReLU(name=f"{prefix}block{b}_relu{c}", dtype=dtype)(x)
            return x

        x = blocks(inputs, 1, shared)
        outputs = [blocks(x, shared + 1, len(widths), f"{g}_") for g in branches] if branches else x
        kwargs.setdefault("name", "vgg_backbone")
        super().__init__(inputs, outputs, input_shape, widths, depths, stem_stride, dtype=dtype, branch_at=branch_at,
                         branches=branches, shared_layer=f"block{shared}_conv{depths[shared - 1]}", **kwargs)
