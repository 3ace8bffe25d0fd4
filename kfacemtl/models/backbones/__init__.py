"""Backbones: Keras models that turn images into a feature map, registered by name.

Any Keras model from images ``(batch, H, W, 3)`` in [0, 1] to a feature map ``(batch, h, w, channels)`` (or a feature
vector) can be the backbone of :func:`~kfacemtl.models.build_model`. The built-in ones are functional
``keras.Model`` subclasses in the KerasHub ``Backbone`` pattern (``get_config`` returns their constructor arguments), so
a saved model rebuilds them from a few numbers, and their layers stay reachable for Grad-CAM. A new one is one new
module with a class registered by :func:`register_backbone`; ``model.backbone`` in a config names it.

Example:
    >>> sorted(BACKBONES)
    ['residual', 'vgg']
    >>> make_backbone("vgg", input_shape=(32, 32, 3), widths=(8, 16), depths=1).output.shape
    (None, 8, 8, 16)
"""
from __future__ import annotations

from kfacemtl.models.backbones.base import Backbone, check_branching, check_trunk
from kfacemtl.models.backbones.registry import BACKBONES, make_backbone, register_backbone
from kfacemtl.models.backbones.residual import ResidualBackbone
from kfacemtl.models.backbones.vgg import VGGBackbone

__all__ = ["Backbone", "check_branching", "check_trunk", "BACKBONES", "make_backbone", "register_backbone", "ResidualBackbone",
           "VGGBackbone"]
