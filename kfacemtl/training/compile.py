"""Compiling the multi-task model: optimizer, learning-rate schedule, masked losses, weighted metrics, task weighting,
and where the work runs (XLA, steps per call, augmentation in the step).

Example:
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> model = compile_model(build_model(resolve_tasks(["gender"]), widths=(8,), depths=1))
    >>> model.loss[0].normalization
    'mean_with_sample_weight'
"""
from __future__ import annotations

from typing import Mapping

import keras
import tensorflow as tf

from kfacemtl.errors import expect_one_of
from kfacemtl.models import model_tasks
from kfacemtl.training.weighting import make_weighting

OPTIMIZERS = ("adam", "adamw", "sgd")
AUGMENT_ON = ("auto", "pipeline", "step")


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3, weight_decay: float = 0.0):
    """``adam``, ``adamw`` or ``sgd`` (momentum 0.9).

    Example:
        >>> opt = make_optimizer("sgd", learning_rate=0.01)
        >>> type(opt).__name__, opt.momentum, opt.nesterov
        ('SGD', 0.9, True)
    """
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay or 1e-4)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer: expected adam, adamw or sgd, got {name!r}")


def learning_rate_schedule(learning_rate: float, schedule: str = "constant", total_steps: int | None = None):
    """The optimizer's learning rate: a number (``constant``) or a Keras schedule.

    ``cosine`` decays from ``learning_rate`` to 1 % of it over ``total_steps`` (then stays there),
    so the weights a run ends with are not those of one noisy step at full learning rate.
    ``dynamic`` starts at ``learning_rate``; :class:`~kfacemtl.training.DynamicLearningRate`
    then adapts it during training (``train_run`` adds the callback).

    Example:
        >>> sched = learning_rate_schedule(1e-3, "cosine", total_steps=100)
        >>> round(float(sched(0)), 6), round(float(sched(100)), 6)
        (0.001, 1e-05)
    """
    if schedule in ("constant", "dynamic"):
        return float(learning_rate)
    if schedule == "cosine":
        if not total_steps or total_steps < 1:
            raise ValueError("lr_schedule: cosine needs the run's total number of steps")
        return keras.optimizers.schedules.CosineDecay(float(learning_rate), int(total_steps), alpha=0.01)
    raise ValueError(f"lr_schedule: expected constant, cosine or dynamic, got {schedule!r}")


def compile_model(model, optimizer="adam", learning_rate: float = 1e-3, weight_decay: float = 0.0,
                  loss_normalization: str = "mean_with_sample_weight", label_smoothing: float = 0.0,
                  loss_weights: Mapping[str, float] | None = None, weighting=None,
                  weighting_options: Mapping | None = None, jit_compile="auto", steps_per_execution: int = 1):
    """Wire masked per-task losses, loss weights and weighted metrics into ``model.compile``.

    Args:
        model: a model from :func:`~kfacemtl.models.build_model`.
        optimizer: a name (``adam``, ``adamw``, ``sgd``) or a Keras optimizer.
        loss_normalization: ``mean_with_sample_weight`` (mean over labelled rows, default)
            or ``sum_over_batch_size`` (Keras's default; a sparsely labelled task learns slower).
        loss_weights: ``{task: weight}`` (default 1 for every task): static weights.
        weighting: a task-weighting strategy, by name (``equal``, ``static``, ``uncertainty``,
            ``dwa``, ``dynamic``, ``gradnorm``; see :mod:`kfacemtl.training.weighting`) or an instance; ``weighting_options``
            are its arguments. ``equal`` (and ``static`` with ``loss_weights``) use Keras's own sum.
        jit_compile: XLA: ``True``, ``False`` or ``"auto"`` (the default, Keras's rule: on where a GPU is and no
            ``tf.distribute`` strategy is active, off on a CPU). Measured: 4.6× faster steps on an H100 at batch 64;
            0.57-1.11× on 2-core CPUs, after about 10 s of compiling.
        steps_per_execution: train steps per call of the compiled train function (Keras's option; callbacks then
            see every ``steps_per_execution``-th batch).

    A model built with ``mixed_precision=True`` gets its optimizer wrapped in
    ``keras.optimizers.LossScaleOptimizer``. Under a ``tf.distribute`` strategy, build and compile
    inside ``strategy.scope()``.

    Returns:
        The model, compiled.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                     embedding_dim=4, head_units=4)
        >>> model = compile_model(model, learning_rate=1e-3, weighting="dynamic")
        >>> model.weighting.name, type(model.optimizer).__name__
        ('dynamic', 'Adam')
    """
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, learning_rate, weight_decay)
    model.compile(optimizer=optimizer, loss_normalization=loss_normalization, label_smoothing=label_smoothing,
                  loss_weights=dict(loss_weights) if loss_weights else None, jit_compile=jit_compile,
                  steps_per_execution=int(steps_per_execution))
    attach_weighting(model, weighting, weighting_options, loss_weights)
    return model


def augment_on(where: str = "auto") -> str:
    """Where training augments its images (``training.augment_on``): ``pipeline`` (a map of the input pipeline, in
    its CPU threads) or ``step`` (inside the train step, :meth:`~kfacemtl.models.MultiTaskModel.set_augmentation`: on
    the GPU, fused into the step under XLA). ``auto``: ``step`` where a GPU is, ``pipeline`` on a CPU, where moving
    the work into the step did not make training faster (measured: docs/benchmarks/throughput.md).

    Example:
        >>> augment_on("pipeline"), augment_on("auto") in ("pipeline", "step")
        ('pipeline', True)
    """
    expect_one_of("augment_on", where, AUGMENT_ON)
    if where != "auto":
        return where
    return "step" if tf.config.list_physical_devices("GPU") else "pipeline"


def steps_per_execution(value="auto", lr_schedule: str = "constant", strategy: str = "default") -> int:
    """Train steps per call of the compiled train function (``training.steps_per_execution``). ``auto``: 8 where a
    GPU is (a step there is short enough for the call's own overhead to count: 1.55× faster training with the full
    pipeline, measured on an H200 at batch 64, docs/benchmarks/throughput.md); 1 on a CPU, with ``lr_schedule:
    dynamic`` (whose windows count calls) and under a ``tf.distribute`` strategy (where Keras's several-step train function fails).
    Callbacks' batch hooks then run once per call.

    Example:
        >>> steps_per_execution(4), steps_per_execution("auto", "dynamic")
        (4, 1)
        >>> steps_per_execution("auto", strategy="mirrored")
        1
    """
    if value != "auto":
        return int(value)
    gpu = bool(tf.config.list_physical_devices("GPU"))
    return 8 if gpu and lr_schedule != "dynamic" and strategy == "default" else 1


def attach_weighting(model, weighting=None, weighting_options: Mapping | None = None,
                     loss_weights: Mapping[str, float] | None = None):
    """Give a compiled model its task-weighting strategy (none for ``equal``, or ``static`` with
    ``loss_weights``: Keras's own weighted sum does those). Also used when a saved model resumes,
    since the strategy is training state that ``model.keras`` does not hold.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                     embedding_dim=4, head_units=4)
        >>> model = compile_model(model)
        >>> attach_weighting(model, "uncertainty")       # e.g. after load_model, when a run resumes
        >>> model.weighting.name
        'uncertainty'
    """
    if weighting in (None, "equal") or (weighting == "static" and loss_weights):
        return
    if loss_weights:
        raise ValueError(f"loss_weights: static weights cannot be combined with weighting: {weighting}")
    model.set_weighting(make_weighting(weighting, [t.name for t in model_tasks(model)], **dict(weighting_options or {})))
