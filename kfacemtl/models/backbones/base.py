"""What the built-in backbones share: their arguments checked, and a ``get_config`` that returns them.

Example:
    >>> check_trunk([8, 16], 2, 2)
    ((8, 16), (2, 2), 2)
"""
from __future__ import annotations

import keras


def check_trunk(widths, depths, stem_stride) -> tuple[tuple, tuple, int]:
    """``(widths, depths, stem_stride)`` as integers, checked: a ``ValueError`` names the argument otherwise.

    ``depths`` may be one integer for every block.

    Example:
        >>> check_trunk((32, 64), (1, 2), 1)
        ((32, 64), (1, 2), 1)
    """
    try:
        widths = tuple(int(w) for w in widths)
        depths = (int(depths),) * len(widths) if isinstance(depths, int) else tuple(int(d) for d in depths)
    except (TypeError, ValueError):
        raise ValueError(f"widths and depths: expected integers, got {widths!r} and {depths!r}") from None
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"widths: expected a non-empty list of positive integers, got {list(widths)}")
    if len(depths) != len(widths) or any(d < 1 for d in depths):
        raise ValueError(f"depths: expected {len(widths)} positive integers (one per block), got {list(depths)}")
    if stem_stride not in (1, 2):
        raise ValueError(f"stem_stride: expected 1 or 2, got {stem_stride!r}")
    return widths, depths, int(stem_stride)


def check_branching(branch_at, branches, n_blocks: int) -> tuple[int | None, tuple]:
    """``(branch_at, branches)`` checked: ``branches`` the names of the groups of tasks that each get their own copy
    of the blocks after ``branch_at`` (1 ... ``n_blocks``; ``n_blocks``: every block shared, each group its own
    embedding). A ``ValueError`` names the argument otherwise.

    Example:
        >>> check_branching(3, ["face", "expression"], 4)
        (3, ('face', 'expression'))
        >>> check_branching(None, (), 4)
        (None, ())
    """
    branches = tuple(str(b) for b in (branches or ()))
    if branch_at is None and not branches:
        return None, ()
    if isinstance(branch_at, bool) or not isinstance(branch_at, int) or not 1 <= branch_at <= n_blocks:
        raise ValueError(f"branch_at: expected the number of shared blocks, 1 ... {n_blocks}, got {branch_at!r}")
    if len(branches) < 2 or len(set(branches)) != len(branches) or not all(b.isidentifier() for b in branches):
        raise ValueError(f"branches: expected two or more distinct group names (letters, digits, _), got "
                         f"{list(branches)}")
    return int(branch_at), branches


class Backbone(keras.Model):
    """Base of the built-in backbones, as KerasHub writes a ``Backbone``: a functional ``keras.Model`` (images → a
    feature map) whose ``get_config`` returns its constructor arguments, so ``from_config`` builds it again.

    A subclass builds its graph in ``__init__`` from ``input_shape``, ``widths``, ``depths`` and ``stem_stride``,
    then calls ``super().__init__(inputs, outputs, ...)`` with those arguments.

    **Branches** (task-specific capacity): with ``branch_at=k`` and ``branches=(group, ...)`` the first ``k`` blocks
    are shared and every group gets its own copy of the blocks after them (layers named ``<group>_...``); the model
    then has one output per group, in that order, and :attr:`shared_layer` names the last shared layer with weights.

    Example:
        >>> class OneConv(Backbone):
        ...     def __init__(self, input_shape=(8, 8, 3), widths=(4,), depths=1, stem_stride=1, **kwargs):
        ...         inputs = keras.Input(input_shape)
        ...         outputs = keras.layers.Conv2D(widths[0], 3, strides=stem_stride)(inputs)
        ...         super().__init__(inputs, outputs, input_shape, widths, depths, stem_stride, **kwargs)
        >>> OneConv().get_config()["widths"]
        [4]
    """

    def __init__(self, inputs, outputs, input_shape, widths, depths, stem_stride, dtype=None, branch_at=None,
                 branches=(), shared_layer=None, **kwargs):
        super().__init__(inputs=inputs, outputs=outputs, dtype=dtype, **kwargs)
        self.layer_dtype = getattr(dtype, "name", dtype)  # the layers' policy (a functional model keeps float32)
        self.image_shape = tuple(int(v) for v in input_shape)
        self.widths, self.depths, self.stem_stride = check_trunk(widths, depths, stem_stride)
        self.branch_at, self.branches = check_branching(branch_at, branches, len(self.widths))
        self.shared_layer = shared_layer

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable, "dtype": self.layer_dtype,
                  "input_shape": list(self.image_shape), "widths": list(self.widths), "depths": list(self.depths),
                  "stem_stride": self.stem_stride}
        if self.branches:
            config.update(branch_at=self.branch_at, branches=list(self.branches))
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
