"""Backbones: the shared trunk that turns images into features.

Example:
    >>> from kfacemtl.models.backbones import VGGBackbone
    >>> VGGBackbone().widths
    (32, 64, 128, 256)
"""
from kfacemtl.models.backbones.vgg import POOLINGS, SHARED_LAYER, VGGBackbone

__all__ = ["POOLINGS", "SHARED_LAYER", "VGGBackbone"]
