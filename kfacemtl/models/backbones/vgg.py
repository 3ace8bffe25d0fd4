"""The VGG-style backbone: blocks of (conv 3×3 → BN → ReLU) × depth, then max-pool.

Example:
    >>> import keras
    >>> VGGBackbone(widths=(16, 32), depths=1)(keras.Input((64, 64, 3))).shape
    (None, 256)
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import keras

from kfacemtl.errors import ConfigError, check_choice


POOLINGS = ("flatten", "avg")


SHARED_LAYER = "embedding_dense"  # the last shared layer with weights (GradNorm balances gradients on it)


@dataclasses.dataclass
class VGGBackbone:
    """A VGG-style convolutional trunk: blocks of (conv 3×3 → BN → ReLU) × depth, then max-pool.

    Args:
        widths: channels of each block.
        depths: convolutions per block (one int for all blocks, or one per block).
        stem_stride: stride of the very first convolution (2 halves the work of a 64×64 input).
        pooling: how the last feature map becomes a vector: ``flatten`` keeps where each
            feature is (aligned faces: a mouth corner is always near the same place; VGG-Face
            does the same) or ``avg`` (global average pooling, translation-invariant, fewer
            weights). On the synthetic benchmark with shift augmentation, ``avg`` leaves
            expression at chance for the demo budget, ``flatten`` learns it.
        embedding_dim: width of the shared embedding after the pooling.
        dropout: dropout on the embedding.
        dtype: the layers' dtype policy (None: Keras's global one; ``mixed_float16``: compute in float16,
            weights in float32).

    Example:
        >>> import keras
        >>> x = keras.Input((64, 64, 3))
        >>> VGGBackbone(widths=(16, 32), depths=1)(x).shape
        (None, 256)
    """

    widths: Sequence[int] = (32, 64, 128, 256)
    depths: Sequence[int] | int = (1, 2, 2, 1)
    stem_stride: int = 2
    pooling: str = "flatten"
    embedding_dim: int = 256
    dropout: float = 0.3
    dtype: str | None = None

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        depths = self.depths
        self.depths = (int(depths),) * len(self.widths) if isinstance(depths, int) else tuple(int(d) for d in depths)
        if not self.widths or any(w < 1 for w in self.widths):
            raise ConfigError("model.widths", f"expected a non-empty list of positive integers, got {self.widths}")
        if len(self.depths) != len(self.widths) or any(d < 1 for d in self.depths):
            raise ConfigError("model.depths", f"expected {len(self.widths)} positive integers (one per block), got {self.depths}")
        if self.stem_stride not in (1, 2):
            raise ConfigError("model.stem_stride", f"expected 1 or 2, got {self.stem_stride}")
        check_choice("model.pooling", self.pooling, POOLINGS)
        if not 0 <= self.dropout < 1:
            raise ConfigError("model.dropout", f"expected a number in [0, 1), got {self.dropout}")

    def __call__(self, inputs):
        """Apply the trunk to an input tensor; returns the shared embedding."""
        x = inputs
        for b, (width, depth) in enumerate(zip(self.widths, self.depths), start=1):
            for c in range(1, depth + 1):
                stride = self.stem_stride if (b, c) == (1, 1) else 1
                x = keras.layers.Conv2D(width, 3, strides=stride, padding="same", use_bias=False,
                                        name=f"block{b}_conv{c}", dtype=self.dtype)(x)
                x = keras.layers.BatchNormalization(name=f"block{b}_bn{c}", dtype=self.dtype)(x)
                x = keras.layers.ReLU(name=f"block{b}_relu{c}", dtype=self.dtype)(x)
            if b < len(self.widths):
                x = keras.layers.MaxPooling2D(2, name=f"block{b}_pool", dtype=self.dtype)(x)
        if self.pooling == "flatten":
            x = keras.layers.Flatten(name="flatten", dtype=self.dtype)(x)
        else:
            x = keras.layers.GlobalAveragePooling2D(name="gap", dtype=self.dtype)(x)
        x = keras.layers.Dense(self.embedding_dim, use_bias=False, name=SHARED_LAYER, dtype=self.dtype)(x)
        x = keras.layers.BatchNormalization(name="embedding_bn", dtype=self.dtype)(x)
        x = keras.layers.ReLU(name="embedding", dtype=self.dtype)(x)
        if self.dropout:
            x = keras.layers.Dropout(self.dropout, name="embedding_dropout", dtype=self.dtype)(x)
        return x

    def to_config(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(self).items()}
