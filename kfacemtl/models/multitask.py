"""The multi-task network: a backbone, a shared embedding, one small head per task.

As KerasHub keeps a ``Backbone`` apart from the ``Task`` that adds heads, :class:`MultiTaskModel` takes a backbone
(any Keras model from images to a feature map; :class:`~kfacemtl.models.backbones.VGGBackbone` by default) and adds
what every task shares after it: pooling, a shared embedding (``embedding_dense`` → BN → ReLU → dropout), then per
task a hidden layer (``<task>_hidden``) and a :class:`~kfacemtl.models.heads.TaskOutput`. Outputs are a **list in task
order**, each named after its task; a fused output (:class:`~kfacemtl.models.fusion.OutputFusion`) is the layer after
its task's head (``<task>_head``), named after the task.

The model is a functional ``keras.Model`` whose ``get_config`` returns its constructor arguments. Training state that
is not part of the network (the task weighting, distribution matching, class-level co-annotation, augmentation in the
step) is set with the ``set_*`` methods and never saved with it: a run sets it again from its config.

Example:
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> model = build_model(resolve_tasks(["age", "gender"]), input_shape=(32, 32, 3), widths=(8, 16), depths=1)
    >>> model.output_names, type(model.backbone).__name__
    (['age', 'gender'], 'VGGBackbone')
"""
from __future__ import annotations

import types
from typing import Mapping, Sequence

import keras

from kfacemtl.models.fusion import OutputFusion
from kfacemtl.models.heads import TaskOutput
from kfacemtl.models.losses import task_loss, task_metrics_for
from kfacemtl.models.steps import MultiTaskSteps
from kfacemtl.tasks import Task

POOLINGS = ("flatten", "avg")
SHARED_LAYER = "embedding_dense"  # the last shared layer with weights (GradNorm balances gradients on it)


def check_neck(pooling, embedding_dim, head_units, dropout):
    """The shared layers' arguments, checked: a ``ValueError`` names the argument otherwise.

    Example:
        >>> check_neck("avg", 128, 0, 0.0)
        ('avg', 128, 0, 0.0)
    """
    if pooling not in POOLINGS:
        raise ValueError(f"pooling: expected one of {POOLINGS}, got {pooling!r}")
    if isinstance(embedding_dim, bool) or not isinstance(embedding_dim, int) or embedding_dim < 1:
        raise ValueError(f"embedding_dim: expected a positive integer, got {embedding_dim!r}")
    if isinstance(head_units, bool) or not isinstance(head_units, int) or head_units < 0:
        raise ValueError(f"head_units: expected an integer >= 0 (0: no hidden layer), got {head_units!r}")
    if not 0 <= dropout < 1:
        raise ValueError(f"dropout: expected a number in [0, 1), got {dropout!r}")
    return pooling, int(embedding_dim), int(head_units), float(dropout)


def check_groups(branches, task_names: Sequence[str], n_outputs: int = None) -> dict:
    """``{group: (task, ...)}`` checked against the tasks (each in exactly one group) and, when given, the number of
    the backbone's outputs (one per group); ``{None: all tasks}`` without branches.

    Example:
        >>> check_groups({"face": ["age", "gender"], "expression": ["expression"]}, ["age", "gender", "expression"])
        {'face': ('age', 'gender'), 'expression': ('expression',)}
    """
    if not branches:
        if n_outputs not in (None, 1):
            raise ValueError(f"branches: the backbone has {n_outputs} outputs; name a group of tasks for each")
        return {None: tuple(task_names)}
    if not isinstance(branches, Mapping):
        raise ValueError(f"branches: expected {{group: [task, ...]}}, got {branches!r}")
    groups = {str(g): tuple([names] if isinstance(names, str) else names) for g, names in branches.items()}
    listed = [n for names in groups.values() for n in names]
    unknown = sorted(set(listed) - set(task_names))
    if unknown:
        raise ValueError(f"branches: {unknown[0]!r} is not a task of the model {list(task_names)}")
    twice = sorted({n for n in listed if listed.count(n) > 1})
    missing = [n for n in task_names if n not in listed]
    if twice or missing or not all(groups.values()):
        raise ValueError(f"branches: every task in exactly one group, got {groups} for tasks {list(task_names)}")
    if n_outputs is not None and n_outputs != len(groups):
        raise ValueError(f"branches: {len(groups)} groups need a backbone with as many outputs, got {n_outputs}")
    return groups


@keras.saving.register_keras_serializable(package="kfacemtl")
class MultiTaskModel(MultiTaskSteps, keras.Model):
    """A backbone, a shared embedding and one head per task; ``fit``/``evaluate`` take ``{task: ...}`` batches.

    Args:
        backbone: a Keras model from images ``(batch, H, W, 3)`` to a feature map ``(batch, h, w, c)`` (or a
            vector ``(batch, c)``; then there is nothing to pool).
        tasks: the :class:`~kfacemtl.tasks.Task` list, in output order.
        pooling: how the feature map becomes a vector: ``flatten`` keeps where each feature is (aligned faces: a mouth
            corner is always near the same place; VGG-Face does the same) or ``avg`` (global average pooling).
        embedding_dim: width of the shared embedding.
        head_units: hidden units of each task's head (0: the output reads the embedding directly).
        dropout: dropout on the embedding.
        fusions: :class:`~kfacemtl.models.fusion.OutputFusion` layers (or their configs): fused outputs.
        branches: ``{group: [task, ...]}`` for a backbone with one output per group (a branched backbone: shared
            blocks, then a copy of the later ones per group): each group gets its own pooling and embedding (layers
            ``<group>_embedding...``) and its tasks' heads. Every task is in exactly one group. None: one shared
            embedding.
        temperatures: ``{task: T}`` of classification heads calibrated by temperature scaling (see
            :meth:`set_temperatures`); the others are 1.

    The embedding and hidden layers compute in the backbone's dtype policy (``mixed_float16`` with a mixed-precision
    backbone); the task outputs, and so the losses, stay float32.

    Example:
        >>> from kfacemtl.models.backbones import ResidualBackbone
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = MultiTaskModel(ResidualBackbone((32, 32, 3), widths=(8, 16)), resolve_tasks(["gender", "age"]),
        ...                        embedding_dim=16, head_units=4)
        >>> sorted(model.predict_dict(keras.ops.zeros((2, 32, 32, 3)), verbose=0))
        ['age', 'gender']
    """

    def __init__(self, backbone, tasks: Sequence[Task | Mapping], pooling: str = "flatten", embedding_dim: int = 256,
                 head_units: int = 64, dropout: float = 0.3, fusions: Sequence = (),
                 branches: Mapping[str, Sequence[str]] | None = None, temperatures: Mapping | None = None,
                 intervals: Mapping | None = None, **kwargs):
        tasks = [t if isinstance(t, Task) else Task.from_config(t) for t in tasks]
        if not tasks:
            raise ValueError("tasks: a model needs at least one task")
        temperatures = dict(temperatures or {})
        if set(temperatures) - {t.name for t in tasks}:
            raise ValueError(f"temperatures: {sorted(set(temperatures) - {t.name for t in tasks})} are not tasks of "
                             f"the model {[t.name for t in tasks]}")
        pooling, embedding_dim, head_units, dropout = check_neck(pooling, embedding_dim, head_units, dropout)
        fusions = [f if isinstance(f, OutputFusion) else keras.saving.deserialize_keras_object(f) for f in fusions]
        outputs = getattr(backbone, "outputs", None)
        if not isinstance(backbone, keras.Model) or not outputs or any(len(o.shape) not in (2, 4) for o in outputs):
            raise ValueError(f"backbone: expected a Keras model from images to a feature map (batch, h, w, channels), "
                             f"got {type(backbone).__name__}")
        groups = check_groups(branches, [t.name for t in tasks], len(outputs))
        dtype = (backbone.layers[-1] if backbone.layers else backbone).dtype_policy.name  # what its layers compute in
        layers = keras.layers
        inputs = keras.Input(backbone.input_shape[1:], name="image")
        features = backbone(inputs)
        features = features if isinstance(features, (list, tuple)) else [features]
        fused = {f.target for f in fusions}
        heads = {}
        for (group, names), x in zip(groups.items(), features):
            p = f"{group}_" if group else ""
            if len(x.shape) == 4:
                x = (layers.Flatten(name=f"{p}flatten", dtype=dtype) if pooling == "flatten"
                     else layers.GlobalAveragePooling2D(name=f"{p}gap", dtype=dtype))(x)
            x = layers.Dense(embedding_dim, use_bias=False, name=f"{p}{SHARED_LAYER}", dtype=dtype)(x)
            x = layers.BatchNormalization(name=f"{p}embedding_bn", dtype=dtype)(x)
            x = layers.ReLU(name=f"{p}embedding", dtype=dtype)(x)
            if dropout:
                x = layers.Dropout(dropout, name=f"{p}embedding_dropout", dtype=dtype)(x)
            for task in (t for t in tasks if t.name in names):
                h = x if not head_units else layers.Dense(head_units, activation="relu", name=f"{task.name}_hidden",
                                                          dtype=dtype)(x)
                name = f"{task.name}_head" if task.name in fused else task.name
                heads[task.name] = TaskOutput(task, temperature=temperatures.get(task.name, 1.0), name=name,
                                              dtype="float32")(h)
        outputs = dict(heads)
        for f in fusions:
            missing = {f.source, f.target} - set(heads)
            if missing or len(fused) != len(fusions):
                raise ValueError(f"fusions: {f.source}->{f.target} needs two tasks of the model {list(heads)}, each "
                                 "fused at most once")
            outputs[f.target] = f([heads[f.source], heads[f.target]])
        super().__init__(inputs=inputs, outputs=[outputs[t.name] for t in tasks], **kwargs)
        self.backbone, self.tasks, self.fusions = backbone, tasks, fusions
        self.pooling, self.embedding_dim, self.head_units, self.dropout = pooling, embedding_dim, head_units, dropout
        self.branches = None if None in groups else groups
        self.intervals = {}
        self.set_intervals(intervals or {})
        self.init_training_state()

    def get_config(self):
        config = {"name": self.name, "trainable": self.trainable,
                  "backbone": keras.saving.serialize_keras_object(self.backbone),
                  "tasks": [t.to_config() for t in self.tasks], "pooling": self.pooling,
                  "embedding_dim": self.embedding_dim, "head_units": self.head_units, "dropout": self.dropout,
                  "fusions": [keras.saving.serialize_keras_object(f) for f in self.fusions]}
        if self.branches:
            config["branches"] = {g: list(names) for g, names in self.branches.items()}
        if any(t != 1.0 for t in self.temperatures.values()):
            config["temperatures"] = self.temperatures
        if self.intervals:
            config["intervals"] = {t: list(q) for t, q in self.intervals.items()}
        return config

    def set_intervals(self, intervals: Mapping[str, Sequence[float]]):
        """Give single-value regression heads (age) an interval: ``{task: (q_low, q_high)}``; the exported
        signatures then add ``<task>_interval``, value + q × :func:`~kfacemtl.models.answers.interval_scale`
        (:func:`kfacemtl.analysis.calibration.calibrate` fits the q for a stated coverage). Saved with the model.

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> model = build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> model.set_intervals({"age": (-0.2, 0.25)}); model.intervals
            {'age': (-0.2, 0.25)}
        """
        kinds = {t.name: t for t in self.tasks}
        for task, q in intervals.items():
            t = kinds.get(task)
            if t is None or t.kind != "regression" or t.dim != 1:
                raise ValueError(f"intervals: {task!r} is not a single-value regression head of this model")
            q = tuple(float(v) for v in q)
            if len(q) != 2 or not q[0] <= q[1]:
                raise ValueError(f"intervals: {task}: expected (q_low, q_high) with q_low <= q_high; got {q}")
            self.intervals[task] = q

    @property
    def temperatures(self) -> dict:
        """``{task: T}`` of every classification head (1: not calibrated)."""
        return {t.name: self.task_output(t.name).temperature for t in self.tasks if t.kind == "classification"}

    def set_temperatures(self, temperatures: Mapping[str, float]):
        """Calibrate classification heads by temperature scaling: outside training, head ``task`` gives
        ``softmax(z / T)`` of its logits ``z`` (T > 1 softens over-confident probabilities; the predicted class never
        changes). Saved with the model and exported in both signatures;
        :func:`kfacemtl.analysis.calibration.calibrate` fits them.

        Example:
            >>> import numpy as np
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> x = np.random.default_rng(0).random((1, 16, 16, 3))
            >>> model.set_temperatures({"gender": 1e6})
            >>> model.temperatures, np.round(model.predict(x, verbose=0)[0], 3).tolist()   # all but uniform
            ({'gender': 1000000.0}, [0.5, 0.5])
        """
        known = self.temperatures
        for task, value in temperatures.items():
            if task not in known:
                raise ValueError(f"temperatures: {task!r} is not a classification head of this model; they are "
                                 f"{sorted(known)}")
            self.task_output(task).set_temperature(value)
        self.predict_function = self.test_function = None  # traced again, with the new temperatures

    def embeddings(self) -> dict:
        """``{group: embedding layer name}``: ``{None: "embedding"}`` without branches.

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> model = build_model(resolve_tasks(["age", "expression"]), input_shape=(16, 16, 3), widths=(4, 8),
            ...                     depths=1, branch_at=1)
            >>> model.embeddings()
            {'age': 'age_embedding', 'expression': 'expression_embedding'}
        """
        return {g: f"{g}_embedding" for g in self.branches} if self.branches else {None: "embedding"}

    def group_of(self, task: str) -> str | None:
        """The branch group of ``task`` (None without branches)."""
        return next((g for g, names in (self.branches or {}).items() if task in names), None)

    def shared_kernel(self):
        """The kernel of the last layer every task shares: the embedding's dense layer, or with branches the
        backbone's ``shared_layer`` (GradNorm balances gradients there)."""
        if not self.branches:
            return self.get_layer(SHARED_LAYER).kernel
        name = getattr(self.backbone, "shared_layer", None)
        if name is None:
            raise ValueError("weighting: gradnorm needs the last shared layer of a branched backbone; this backbone "
                             "names none (a built-in backbone's shared_layer attribute)")
        return self.backbone.get_layer(name).kernel

    @classmethod
    def from_config(cls, config):
        if "layers" in config:
            raise ValueError("this is a model saved by kfacemtl 0.1 (one flat graph); load it with "
                             "kfacemtl.load_model, which converts it")
        config = dict(config, backbone=keras.saving.deserialize_keras_object(config["backbone"]))
        return cls(**config)

    def with_fusions(self, fusions: Sequence[OutputFusion]) -> "MultiTaskModel":
        """The same network (a copy of its weights) with these fused outputs (``[]``: none), compiled as this one is.

        Example:
            >>> from kfacemtl.tasks import resolve_tasks
            >>> from kfacemtl.training.coupling import Relatedness
            >>> from kfacemtl.models import build_model
            >>> tasks = resolve_tasks(["expression", "action_units"])
            >>> model = build_model(tasks, input_shape=(16, 16, 3), widths=(4,), depths=1, embedding_dim=4,
            ...                     head_units=4)
            >>> fused = model.with_fusions([OutputFusion.from_relation(Relatedness.du_2014(*tasks))])
            >>> [f"{f.source}->{f.target}" for f in fused.fusions], fused.get_layer("action_units_head").task.name
            (['expression->action_units'], 'action_units')
        """
        config = self.get_config()
        config.update(backbone=keras.saving.deserialize_keras_object(config["backbone"]), fusions=list(fusions))
        model = type(self)(**config)
        model.backbone.set_weights(self.backbone.get_weights())
        for layer in model.layers:  # by name: a fused head's output layer sits elsewhere in the graph
            if layer.weights and layer is not model.backbone:
                head = isinstance(layer, TaskOutput)
                source = self.task_output(layer.task.name) if head else self.get_layer(layer.name)
                layer.set_weights(source.get_weights())
        if self.compiled:
            model.compile_from_config(self.get_compile_config())
        return model

    def task_output(self, task: str) -> TaskOutput:
        """The :class:`~kfacemtl.models.heads.TaskOutput` layer of ``task`` (the head itself, before any fusion).

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> build_model(resolve_tasks(["age"]), widths=(4,), depths=1).task_output("age").units
            1
        """
        for layer in self.layers:
            if isinstance(layer, TaskOutput) and layer.task.name == task:
                return layer
        raise ValueError(f"unknown task {task!r}; the model's tasks are {[t.name for t in self.tasks]}")

    # -- compiling ------------------------------------------------------------------------------------------------
    def compile(self, optimizer="adam", loss="auto", loss_weights=None, metrics=None, weighted_metrics="auto",
                loss_normalization: str = "mean_with_sample_weight", label_smoothing: float = 0.0, **kwargs):
        """Keras's ``compile`` with this model's defaults (the KerasHub ``Task`` way): ``loss="auto"`` gives each task
        its masked loss (:func:`~kfacemtl.models.losses.task_loss` with ``loss_normalization`` and
        ``label_smoothing``), ``weighted_metrics="auto"`` its metric (masked rows do not count).

        ``loss`` and ``loss_weights`` may also be lists in task order or ``{task: ...}``. A model whose backbone
        computes in ``mixed_float16`` gets its optimizer wrapped in ``keras.optimizers.LossScaleOptimizer``. Each
        task's loss is computed once per step (:meth:`train_step`).

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> model.compile("adam", loss_weights={"age": 2.0})
            >>> [loss.name for loss in model.loss], model.loss_weights
            (['gender_loss', 'age_loss'], [1.0, 2.0])
        """
        names = [t.name for t in self.tasks]
        if loss == "auto":
            loss = [task_loss(t, loss_normalization, label_smoothing) for t in self.tasks]
        if weighted_metrics == "auto":
            weighted_metrics = [task_metrics_for(t) for t in self.tasks]
        loss = self._in_task_order(loss, "loss")
        if loss_weights is not None:
            loss_weights = [float(w) for w in self._in_task_order(loss_weights, "loss_weights", default=1.0)]
        optimizer = keras.optimizers.get(optimizer)
        mixed = any(layer.dtype_policy.name == "mixed_float16" for layer in self._every_layer())
        if mixed and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = keras.optimizers.LossScaleOptimizer(optimizer)
        super().compile(optimizer=optimizer, metrics=metrics, weighted_metrics=weighted_metrics, **kwargs)
        self.loss, self.loss_weights = loss, loss_weights
        # what get_compile_config serialises when the model is saved (a namespace: Keras neither tracks nor saves it)
        self.compile_arguments = types.SimpleNamespace(optimizer=optimizer, loss=loss, loss_weights=loss_weights,
                                                       metrics=metrics, weighted_metrics=weighted_metrics, **kwargs)
        if len(loss) != len(names):
            raise ValueError(f"loss: expected one loss per task {names}, got {len(loss)}")

    def _in_task_order(self, values, what: str, default=None) -> list:
        names = [t.name for t in self.tasks]
        if isinstance(values, Mapping):
            unknown = set(values) - set(names)
            if unknown:
                raise ValueError(f"{what}.{sorted(unknown)[0]}: not a task of the model {names}")
            return [values.get(n, default) for n in names]
        return list(values) if isinstance(values, (list, tuple)) else [values] * len(names)

    def _every_layer(self):
        stack = list(self.layers)
        while stack:
            layer = stack.pop()
            yield layer
            stack.extend(getattr(layer, "layers", []))

    def get_compile_config(self):
        return keras.saving.serialize_keras_object(vars(self.compile_arguments)) if self.compiled else {}

    def compile_from_config(self, config):
        self.compile(**keras.saving.deserialize_keras_object(config))
        if self.optimizer is not None and self.built:
            self.optimizer.build(self.trainable_variables)  # its variables then load from the saved file

    def predict_dict(self, x, **kwargs) -> dict:
        """``predict`` returning ``{task: array}``.

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> model = build_model(resolve_tasks(["age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> model.predict_dict(keras.ops.zeros((2, 16, 16, 3)), verbose=0)["age"].shape
            (2, 1)
        """
        out = self.predict(x, **kwargs)
        out = out if isinstance(out, (list, tuple)) else [out]
        return dict(zip(self.output_names, out))
