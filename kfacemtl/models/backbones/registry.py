"""The backbone registry: ``model.backbone`` names a class registered here.

Example:
    >>> import keras
    >>> @register_backbone("tiny-example")
    ... def tiny(input_shape=(16, 16, 3)):
    ...     inputs = keras.Input(input_shape)
    ...     return keras.Model(inputs, keras.layers.Conv2D(4, 3, strides=2)(inputs))
    >>> make_backbone("tiny-example").output.shape
    (None, 7, 7, 4)
"""
from __future__ import annotations

from typing import Callable

BACKBONES: dict[str, Callable] = {}


def register_backbone(name: str):
    """Decorator: make a backbone class (or a function returning a Keras model) available by ``name``.

    The callable takes ``input_shape`` and its own options as keyword arguments.

    Example:
        >>> "vgg" in BACKBONES
        True
    """
    def register(factory):
        if not name or BACKBONES.get(name, factory) is not factory:
            raise ValueError(f"backbone name {name!r}: empty, or registered already")
        BACKBONES[name] = factory
        return factory
    return register


def make_backbone(name: str, **options):
    """The backbone registered as ``name``, built with ``options`` (``input_shape``, widths, ...).

    Raises:
        ValueError: an unknown name (the known ones listed), or options the backbone does not take.

    Example:
        >>> make_backbone("residual", input_shape=(32, 32, 3), widths=(8, 16), depths=1).name
        'residual_backbone'
    """
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; backbones are {sorted(BACKBONES)}")
    try:
        return BACKBONES[name](**options)
    except TypeError as e:
        raise ValueError(f"options of backbone {name!r}: {e}") from None
