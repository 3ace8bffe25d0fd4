"""The multi-task network: a VGG-style backbone, a shared embedding, one small head per task.

The backbone (feature extractor) is kept apart from the heads, as KerasHub keeps a
``Backbone`` apart from its ``Task``: :class:`VGGBackbone` describes and builds the shared
trunk, :func:`build_model` adds one head per task. The graph is flat (no nested models),
so saliency tools can reach every conv layer.

Outputs are a **list in task order**, each output layer named after its task; the
output layers (:class:`TaskOutput`) carry their task's description, so a saved model
knows its tasks (:func:`model_tasks`).

Example:
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> model = build_model(resolve_tasks(["age", "gender"]), input_shape=(32, 32, 3), widths=(8, 16), depths=1)
    >>> model.output_names
    ['age', 'gender']
"""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import keras
import tensorflow as tf
from keras import ops

from kfacemtl.data.augment import augment_batch
from kfacemtl.errors import ConfigError, KfacemtlError
from kfacemtl.models.backbones.vgg import SHARED_LAYER, VGGBackbone
from kfacemtl.models.fusion import OutputFusion
from kfacemtl.models.heads import TaskOutput
from kfacemtl.models.losses import scale_loss_for_distribution, unscale_loss_for_distribution
from kfacemtl.tasks import Task


# Co-annotated batches also carry, in their weights dict, ``REAL + task``: 1 where the row's label of the task is a real
# one (not co-annotated), so distribution matching still covers the rows co-annotation filled.
REAL = "real/"


# and, at the class level, ``COANNOTATED + task``: 1 where co-annotation filled the row's label of the task
COANNOTATED = "coannotated/"


@keras.saving.register_keras_serializable(package="kfacemtl")
class MultiTaskModel(keras.Model):
    """A functional Keras model whose ``fit``/``evaluate`` accept per-task dicts.

    Keras 3 maps a label dict onto list outputs but not a sample-weight dict; this model
    orders both by its output names, so the pipeline's ``(images, {task: label},
    {task: weight})`` batches go straight into ``model.fit``.

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                     embedding_dim=4, head_units=4)
        >>> isinstance(model, MultiTaskModel), model.output_names
        (True, ['gender', 'age'])
        >>> sorted(model.predict_dict(keras.ops.zeros((2, 16, 16, 3)), verbose=0))
        ['age', 'gender']
    """

    def _by_task(self, data):
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        names = self.output_names
        self.__dict__["_real_weights"] = {k: v for k, v in sw.items() if k.startswith(REAL)} if isinstance(sw, dict) else {}
        self.__dict__["_moved_weights"] = {}
        if isinstance(sw, dict) and self.coannotation is not None:  # class level: co-annotated rows out of the task losses
            sw, self.__dict__["_moved_weights"] = self.coannotation.split(sw)
        if isinstance(y, dict):
            y = tuple(y[n] for n in names)
        if isinstance(sw, dict):
            sw = tuple(sw[n] for n in names)
        return keras.utils.pack_x_y_sample_weight(x, y, sw)

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras builds from one batch averaged over the replicas with strategy.reduce, which fails under
        # MultiWorkerMirroredStrategy (keras-team/keras#20585); a local replica's batch has the same shapes.
        strategy = self._distribute_strategy
        if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return super()._maybe_symbolic_build(iterator, data_batch)
        for _, _, it in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues)
                else v, next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    def _symbolic_build(self, iterator=None, data_batch=None):
        # Under a tf.distribute strategy Keras builds metrics and losses from a raw batch first: order it too.
        return super()._symbolic_build(iterator, None if data_batch is None else self._by_task(data_batch))

    def set_weighting(self, weighting):
        """Train on a weighted sum of the task losses chosen by a :class:`~kfacemtl.weighting.TaskWeighting`
        (None: Keras's own sum with the compiled ``loss_weights``).

        The strategy and its optimizer are training state, not part of the saved model (a
        ``.keras`` file or an export holds the network alone); ``train_run`` keeps their state
        in the run directory so a resumed run continues them. Call after ``compile``.
        """
        self.__dict__["_weighting"] = weighting  # untracked: never saved with the network
        if weighting is None:
            return
        embedding = self.get_layer("embedding").output
        self.__dict__["_with_features"] = keras.Model(self.inputs, list(self.outputs) + [embedding])
        weighting.build(int(embedding.shape[-1]))
        optimizer = weighting.make_optimizer() if weighting.variables else None
        if optimizer is not None:
            optimizer.build(weighting.variables)
        self.__dict__["_weighting_optimizer"] = optimizer
        self.__dict__["weight_trackers"] = [keras.metrics.Mean(name=f"weight_{t}") for t in weighting.task_names]

    @property
    def weighting(self):
        """The task-weighting strategy in use, or None."""
        return self.__dict__.get("_weighting")

    def set_fusions(self, fusions):
        """Fuse outputs at inference: each :class:`~kfacemtl.coupling.OutputFusion` replaces its target's
        probabilities with the product of experts of that head and the related head (``[]``: off).

        Unlike the weighting and the matching, the fusions are part of the network: saved with it (``.keras``,
        exports) and applied wherever the model answers with ``training=False`` (``predict``, ``evaluate``,
        SavedModel signatures); training sees the heads themselves.

        Example:
            >>> from kfacemtl.training.coupling import OutputFusion, Relatedness
            >>> from kfacemtl.tasks import resolve_tasks
            >>> tasks = resolve_tasks(["expression", "action_units"])
            >>> model = build_model(tasks, input_shape=(16, 16, 3), widths=(4,), depths=1, embedding_dim=4,
            ...                     head_units=4)
            >>> model.set_fusions([OutputFusion.from_relation(Relatedness.du_2014(*tasks))])
            >>> [f"{f.source}->{f.target}" for f in model.fusions]
            ['expression->action_units']
        """
        self.__dict__["_fusions"] = list(fusions or [])
        self.predict_function = self.test_function = None  # traced without them: trace again

    @property
    def fusions(self) -> list:
        """The output fusions in use (:meth:`set_fusions`)."""
        return self.__dict__.get("_fusions", [])

    def call(self, inputs, training=None, mask=None, **kwargs):
        outputs = super().call(inputs, training=training, mask=mask, **kwargs)
        if training or not self.fusions:
            return outputs
        by_name = dict(zip(self.output_names, outputs))
        for fusion in self.fusions:
            by_name = fusion.apply(by_name)
        return [by_name[n] for n in self.output_names]

    def get_config(self):
        config = super().get_config()
        if self.fusions:
            config["fusions"] = [f.get_config() for f in self.fusions]
        return config

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        fusions = [OutputFusion.from_config(f) for f in config.pop("fusions", [])]
        model = super().from_config(config, custom_objects=custom_objects)
        model.set_fusions(fusions)
        return model

    def set_matching(self, matching):
        """Add the terms of a :class:`~kfacemtl.coupling.DistributionMatching` to the training loss (None: off).

        Like the weighting, training state that a saved model does not hold; each term is logged as
        ``match_<task>`` (its epoch mean). Works with every task weighting (the terms are added to its total).
        """
        self.__dict__["_matching"] = matching
        self._coupling_trackers()

    def set_augmentation(self, seed=None):
        """Augment each training batch inside the train step (``None``: not, the default: the pipeline augments).

        The step applies :func:`~kfacemtl.pipeline.augment_batch` to its images, drawn from ``seed``, the optimizer's
        step number and the replica, so the augmentation runs where the step runs (on a GPU, fused into the step
        under XLA) instead of in the input pipeline's CPU threads. Training state, like :meth:`set_matching`;
        ``training.augment_on`` sets it (:func:`~kfacemtl.training.train_run`).

        Example:
            >>> from kfacemtl.tasks import resolve_tasks
            >>> from kfacemtl.training import compile_model
            >>> model = compile_model(build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,),
            ...                                   depths=1, embedding_dim=4, head_units=4))
            >>> model.set_augmentation(seed=0)
            >>> x = keras.ops.ones((2, 16, 16, 3)) * 0.5
            >>> bool(keras.ops.any(model.augmented(x) != x))
            True
        """
        self.__dict__["_augment_seed"] = None if seed is None else int(seed)
        self.train_function = None  # traced again with (or without) the augmentation

    def augmented(self, images):
        """``images`` as the train step augments them at the optimizer's current step (unchanged when
        :meth:`set_augmentation` is off; a step compiled with XLA draws other numbers from the same seed)."""
        seed = self.__dict__.get("_augment_seed")
        if seed is None:
            return images

        replica = tf.distribute.get_replica_context()
        replica = 0 if replica is None else replica.replica_id_in_sync_group
        step = tf.stack([tf.constant(seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        return augment_batch(images, tf.random.experimental.stateless_fold_in(step, replica))

    def _augment(self, data):
        if self.__dict__.get("_augment_seed") is None:
            return data
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        return keras.utils.pack_x_y_sample_weight(self.augmented(x), y, sw)

    @property
    def matching(self):
        """The distribution matching in use, or None."""
        return self.__dict__.get("_matching")

    def set_coannotation(self, coannotation):
        """Train with a :class:`~kfacemtl.coupling.CoAnnotation` of ``level="class"`` (None: off): the rows it
        co-annotated leave their task's per-row loss and its class-mean terms join the training loss (logged as
        ``coannot_<task>``). At ``level="sample"`` the co-annotated labels are ordinary labels and the model needs
        nothing (setting it changes nothing). Training state, like :meth:`set_matching`.
        """
        self.__dict__["_coannotation"] = coannotation if coannotation is not None and coannotation.class_targets else None
        self._coupling_trackers()

    @property
    def coannotation(self):
        """The class-level co-annotation in use, or None."""
        return self.__dict__.get("_coannotation")

    def _coupling_trackers(self):
        names = [*(self.matching.term_names if self.matching else []),
                 *(self.coannotation.term_names if self.coannotation else [])]
        self.__dict__["match_trackers"] = [keras.metrics.Mean(name=n) for n in names]

    def _coupling_loss(self, y, y_pred, sample_weight):
        """The matching and class-level co-annotation terms' total as one replica's loss (scaled for distribution,
        like the task losses), or None."""
        if sample_weight is None or (self.matching is None and self.coannotation is None):
            return None
        names = self.output_names
        terms, total = {}, []
        if self.matching is not None:
            weights = dict(zip(names, sample_weight), **self.__dict__.get("_real_weights", {}))
            matched, terms = self.matching.total(dict(zip(names, y_pred)), weights)
            total.append(matched)
        if self.coannotation is not None:
            class_terms = self.coannotation.class_terms(dict(zip(names, y)), dict(zip(names, y_pred)),
                                                        self.__dict__.get("_moved_weights", {}))
            terms = {**terms, **class_terms}
            total.extend(class_terms.values())
        for tracker in self.__dict__["match_trackers"]:
            tracker.update_state(unscale_loss_for_distribution(terms[tracker.name]))
        return ops.sum(ops.stack(total))

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        loss = super().compute_loss(x, y, y_pred, sample_weight, training)
        coupled = self._coupling_loss(y, y_pred, sample_weight) if training else None
        return loss if coupled is None else loss + coupled

    def reset_metrics(self):
        super().reset_metrics()
        for tracker in self.__dict__.get("match_trackers", []):
            tracker.reset_state()

    def _with_matching_logs(self, logs):
        logs = dict(logs)
        logs.update({tracker.name: tracker.result() for tracker in self.__dict__.get("match_trackers", [])})
        return self._synced(logs)

    def _synced(self, logs):
        """Under MultiWorkerMirroredStrategy: each log value as a vector of one, which Keras then averages over
        the replicas (its ``reduce(MEAN, axis=0)`` there fails on scalars: keras-team/keras#20585), so every
        worker sees the same logs; callbacks that act on them (the dynamic learning rate, DWA) must, or the
        workers' models drift apart."""
        if not isinstance(self._distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return logs
        return {k: ops.reshape(ops.cast(v, "float32"), (1,)) for k, v in logs.items()}

    def train_step(self, data):
        data = self._augment(data)
        if self.weighting is None:
            return self._with_matching_logs(super().train_step(self._by_task(data)))

        x, y, sw = keras.utils.unpack_x_y_sample_weight(self._by_task(data))
        batch = ops.shape(x)[0]
        if sw is None:
            sw = tuple(ops.ones((batch,)) for _ in self.output_names)
        weighting, optimizer = self.weighting, self.__dict__["_weighting_optimizer"]
        with tf.GradientTape(persistent=True) as tape:
            *y_pred, features = self.__dict__["_with_features"](x, training=True)
            # Each replica's own losses (under a strategy the task losses come scaled for the gradient sum):
            # the weighting sees loss values, whatever the number of replicas.
            task_losses = [unscale_loss_for_distribution(fn(t, p, w)) for fn, t, p, w in zip(self.loss, y, y_pred, sw)]
            losses = ops.stack(task_losses)
            present = ops.stack([ops.cast(ops.sum(w) > 0, "float32") for w in sw])
            extra = {}
            if weighting.needs_gradient_norms:  # GradNorm: each task's gradient norm on the last shared layer
                with tape.stop_recording():
                    shared = self.get_layer(SHARED_LAYER).kernel
                    extra["grad_norms"] = ops.stack([
                        ops.sqrt(ops.sum(ops.square(tape.gradient(loss, shared,
                                                                  unconnected_gradients="zero"))))
                        for loss in task_losses])
            total, weights, aux = weighting.combine(losses, present, features, **extra)
            if self.losses:
                total = total + ops.sum(self.losses)
            coupled = self._coupling_loss(y, y_pred, sw)
            if coupled is not None:
                total = total + unscale_loss_for_distribution(coupled)
            # the gradients of every replica are summed: scale for that (and for mixed precision's loss scale)
            scaled = self.optimizer.scale_loss(scale_loss_for_distribution(total))
            aux = None if aux is None else scale_loss_for_distribution(aux)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        if optimizer is not None and aux is not None:
            optimizer.apply_gradients(zip(tape.gradient(aux, weighting.variables), weighting.variables))
        del tape
        self.compute_loss(x, y, y_pred, sw, training=False)  # updates the per-task loss trackers (<task>_loss in the logs)
        self._loss_tracker.update_state(total, sample_weight=batch)
        for k, tracker in enumerate(self.__dict__["weight_trackers"]):
            tracker.update_state(weights[k], sample_weight=present[k])  # batches without the task don't count
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sw)
        logs.update({tracker.name: tracker.result() for tracker in self.__dict__["weight_trackers"]})
        return self._with_matching_logs(logs)

    def test_step(self, data):
        return self._synced(super().test_step(self._by_task(data)))

    @property
    def tasks(self) -> list[Task]:
        """The tasks of the outputs, in output order."""
        return model_tasks(self)

    def predict_dict(self, x, **kwargs) -> dict:
        """``predict`` returning ``{task: array}``."""
        out = self.predict(x, **kwargs)
        out = out if isinstance(out, (list, tuple)) else [out]
        return dict(zip(self.output_names, out))


def model_tasks(model: keras.Model) -> list[Task]:
    """The tasks of a built or loaded model, read from its :class:`TaskOutput` layers.

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["expression"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                     embedding_dim=4, head_units=4)
        >>> [(t.name, len(t.classes)) for t in model_tasks(model)]
        [('expression', 7)]
    """
    tasks = []
    for name in model.output_names:
        layer = model.get_layer(name)
        if not isinstance(layer, TaskOutput):
            raise ValueError(f"output {name!r} is not a kfacemtl TaskOutput layer; was this model built by build_model?")
        tasks.append(layer.task)
    return tasks


def build_model(tasks: Sequence[Task], input_shape=(64, 64, 3), widths=(32, 64, 128, 256), depths=(1, 2, 2, 1),
                stem_stride: int = 2, pooling: str = "flatten", embedding_dim: int = 256, head_units: int = 64,
                dropout: float = 0.3, mixed_precision: bool = False, name: str = "kfacemtl") -> MultiTaskModel:
    """Build the multi-task network.

    Args:
        tasks: the tasks, in output order.
        input_shape: ``(height, width, 3)``; images are float32 in [0, 1].
        widths, depths, stem_stride, pooling, embedding_dim, dropout: the backbone (:class:`VGGBackbone`).
        head_units: hidden units of each task's head (0 = the output reads the embedding directly).
        mixed_precision: compute in float16 (``mixed_float16``: float32 weights; the task outputs, and so
            the losses, stay float32; :func:`~kfacemtl.training.compile_model` then scales the loss).
            Pays on GPUs with tensor cores; slower on CPUs.

    Returns:
        A :class:`MultiTaskModel` with one output per task, named after it, in task order.

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> m = build_model(resolve_tasks(["expression"]), widths=(8, 16), depths=1)
        >>> m.output_shape
        (None, 7)
    """
    tasks = list(tasks)
    if not tasks:
        raise ConfigError("tasks", "a model needs at least one task")
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ConfigError("model.input_shape", f"expected [height, width, 3], got {list(input_shape)}")
    dtype = "mixed_float16" if mixed_precision else None
    backbone = VGGBackbone(widths, depths, stem_stride, pooling, embedding_dim, dropout, dtype)
    inputs = keras.Input(tuple(int(v) for v in input_shape), name="image")
    embedding = backbone(inputs)
    outputs = []
    for task in tasks:
        h = embedding
        if head_units:
            h = keras.layers.Dense(int(head_units), activation="relu", name=f"{task.name}_hidden", dtype=dtype)(h)
        outputs.append(TaskOutput(task, name=task.name, dtype="float32")(h))  # float32 outputs, losses
    model = MultiTaskModel(inputs=inputs, outputs=outputs, name=name)
    return model


def model_file(path) -> Path:
    """The ``.keras`` file that ``path`` names: the file itself, or a run directory's ``model.keras``.

    Raises:
        KfacemtlError: ``path`` does not exist, or is a directory without ``model.keras``.

    Example:
        >>> # model_file("runs/demo")  ->  Path("runs/demo/model.keras")
    """
    path = Path(path)
    if path.is_dir():
        if not (path / "model.keras").is_file():
            raise KfacemtlError(f"{path} is a directory without model.keras; pass a run directory or a .keras file")
        return path / "model.keras"
    if not path.is_file():
        raise KfacemtlError(f"model file {str(path)!r} does not exist; pass a run directory or a .keras file")
    return path


def load_model(path, compile: bool = True) -> MultiTaskModel:
    """Load a ``.keras`` file saved from a kfacemtl model (safe mode: no arbitrary code).

    Example:
        >>> # model = load_model("runs/demo/model.keras")
    """
    return keras.saving.load_model(path, compile=compile, safe_mode=True)


def count_flops(model: keras.Model) -> int:
    """Multiply-adds × 2 of one forward pass of one image through the conv and dense layers.

    Example:
        >>> inputs = keras.Input((4,))
        >>> count_flops(keras.Model(inputs, keras.layers.Dense(3)(inputs)))   # 4 x 3 multiply-adds x 2
        24
    """
    flops = 0
    for layer in model.layers:
        if isinstance(layer, keras.layers.Conv2D):
            _, h, w, c_out = layer.output.shape
            k = layer.kernel.shape
            flops += 2 * h * w * c_out * k[0] * k[1] * k[2]
        elif isinstance(layer, keras.layers.Dense):
            flops += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
    return int(flops)
