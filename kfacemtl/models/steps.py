"""What :class:`~kfacemtl.models.MultiTaskModel` does in ``fit`` and ``evaluate``: one train step with every task's
loss computed once, combined by a task weighting, plus the coupling terms; and the training state that shapes it.

The state is set by ``train_run`` (or by hand) and is not part of the saved network:

- :meth:`~MultiTaskSteps.set_weighting`: a :class:`~kfacemtl.training.weighting.TaskWeighting` (None: the compiled
  ``loss_weights``, 1 each by default);
- :meth:`~MultiTaskSteps.set_matching`: distribution matching's terms (``match_<task>`` in the logs);
- :meth:`~MultiTaskSteps.set_coannotation`: class-level co-annotation's terms (``coannot_<task>``);
- :meth:`~MultiTaskSteps.set_augmentation`: the training augmentation inside the step.

Example:
    >>> import numpy as np, tensorflow as tf
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
    >>> model.compile("adam")
    >>> x = np.zeros((4, 16, 16, 3), "float32")
    >>> y = {"gender": np.array([0, 1, 0, 1]), "age": np.full((4, 1), 30.0, "float32")}
    >>> w = {"gender": np.ones(4, "float32"), "age": np.array([1, 0, 0, 0], "float32")}   # age: one label
    >>> sorted(model.fit(tf.data.Dataset.from_tensors((x, y, w)), verbose=0).history)
    ['age_loss', 'age_mae', 'gender_acc', 'gender_loss', 'loss']
"""
from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from kfacemtl.data.augment import augment_batch
from kfacemtl.data.batch import MaskedWeights
from kfacemtl.models.losses import scale_loss_for_distribution, unscale_loss_for_distribution


class MultiTaskSteps:
    """The train and test steps of :class:`~kfacemtl.models.MultiTaskModel` and the training state they use (see
    the module docstring). A mixin of the model class; its methods are the model's.

    Example:
        >>> from kfacemtl.models import MultiTaskModel
        >>> issubclass(MultiTaskModel, MultiTaskSteps)
        True
    """

    def init_training_state(self):
        """No weighting, matching, co-annotation or augmentation; a loss tracker and one per task."""
        self.weighting = self.matching = self.coannotation = self.augment_seed = None
        self.augment_geometry = {}
        self.features_model = None  # the outputs and the shared embedding, for weightings that read features
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.task_loss_trackers = [keras.metrics.Mean(name=f"{t.name}_loss") for t in self.tasks]
        self.weight_trackers, self.coupling_trackers = [], []

    @property
    def metrics(self):
        # Keras's compile() makes a "loss" tracker of its own, which these steps do not use: the model's replaces it
        own = [self.loss_tracker, *self.task_loss_trackers, *self.weight_trackers, *self.coupling_trackers]
        compiled = [m for m in super().metrics if m.name != "loss" and all(m is not o for o in own)]
        return [self.loss_tracker, *self.task_loss_trackers, *compiled, *self.weight_trackers, *self.coupling_trackers]

    # -- training state ---------------------------------------------------------------------------------------------
    def set_weighting(self, weighting):
        """Train on the task losses combined by a :class:`~kfacemtl.training.weighting.TaskWeighting` (None: the
        compiled ``loss_weights``); its weights are logged as ``weight_<task>``. Call after ``compile``.

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> from kfacemtl.training.weighting import make_weighting
            >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> model.compile("adam")
            >>> model.set_weighting(make_weighting("dynamic", ["gender", "age"]))
            >>> [m.name for m in model.metrics][-2:]
            ['weight_gender', 'weight_age']
        """
        self.weighting = weighting
        self.features_model = None
        self.weight_trackers = []
        if weighting is not None:
            embedding = [self.get_layer(name).output for name in self.embeddings().values()]
            embedding = embedding[0] if len(embedding) == 1 else keras.ops.concatenate(embedding, axis=-1)
            weighting.build(int(embedding.shape[-1]))  # its variables and their optimizer
            if weighting.needs_features:
                self.features_model = keras.Model(self.inputs, [*self.outputs, embedding])
            self.weight_trackers = [keras.metrics.Mean(name=f"weight_{t}") for t in weighting.task_names]
        self.train_function = None  # traced again

    def set_matching(self, matching):
        """Add the terms of a :class:`~kfacemtl.training.coupling.DistributionMatching` to the training loss (None:
        off), each logged as ``match_<task>``.

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> from kfacemtl.training.coupling import DistributionMatching, make_relations
            >>> tasks = resolve_tasks(["expression", "action_units"])
            >>> model = build_model(tasks, input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> model.set_matching(DistributionMatching(make_relations(None, tasks)))
            >>> [m.name for m in model.coupling_trackers]
            ['match_action_units', 'match_expression']
        """
        self.matching = matching
        self._coupling_trackers()

    def set_coannotation(self, coannotation):
        """Train with a :class:`~kfacemtl.training.coupling.CoAnnotation` of ``level="class"`` (None: off): the rows it
        co-annotated leave their task's per-row loss and its class-mean terms join the training loss (logged as
        ``coannot_<task>``). At ``level="sample"`` co-annotated labels are ordinary labels: nothing to set.

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> from kfacemtl.training.coupling import CoAnnotation, make_relations
            >>> tasks = resolve_tasks(["expression", "action_units"])
            >>> model = build_model(tasks, input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> model.set_coannotation(CoAnnotation(make_relations(None, tasks), level="class"))
            >>> [m.name for m in model.coupling_trackers]
            ['coannot_action_units']
        """
        self.coannotation = coannotation if coannotation is not None and coannotation.class_targets else None
        self._coupling_trackers()

    def _coupling_trackers(self):
        names = [*(self.matching.term_names if self.matching else []),
                 *(self.coannotation.term_names if self.coannotation else [])]
        self.coupling_trackers = [keras.metrics.Mean(name=n) for n in names]
        self.train_function = None

    def set_augmentation(self, seed=None, zoom: float = 0.0, rotate: float = 0.0):
        """Augment each training batch inside the train step (``None``: not, the default: the pipeline augments).

        The step applies :func:`~kfacemtl.data.augment.augment_batch` to its images (with ``zoom`` and ``rotate``),
        drawn from ``seed``, the optimizer's step number and the replica, so the augmentation runs where the step
        runs (on a GPU, fused into the step under XLA) instead of in the input pipeline's CPU threads.
        ``training.augment_on`` sets it.

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> model.compile("adam")
            >>> model.set_augmentation(seed=0)
            >>> x = keras.ops.ones((2, 16, 16, 3)) * 0.5
            >>> bool(keras.ops.any(model.augmented(x) != x))
            True
        """
        self.augment_seed = None if seed is None else int(seed)
        self.augment_geometry = {"zoom": float(zoom), "rotate": float(rotate)}
        self.train_function = None  # traced again with (or without) the augmentation

    def augmented(self, images):
        """``images`` as the train step augments them at the optimizer's current step (unchanged when
        :meth:`set_augmentation` is off; a step compiled with XLA draws other numbers from the same seed).

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> x = keras.ops.zeros((1, 16, 16, 3))
            >>> model.augmented(x) is x
            True
        """
        if self.augment_seed is None:
            return images
        replica = tf.distribute.get_replica_context()
        replica = 0 if replica is None else replica.replica_id_in_sync_group
        step = tf.stack([tf.constant(self.augment_seed, tf.int64), tf.cast(self.optimizer.iterations, tf.int64)])
        return augment_batch(images, tf.random.experimental.stateless_fold_in(step, replica), **self.augment_geometry)

    # -- batches ----------------------------------------------------------------------------------------------------
    def unpack_batch(self, data):
        """``(images, labels, weights, real, coannotated)`` of a batch: labels and weights as lists in task order
        (from ``{task: ...}`` or lists; weights all 1 when the batch has none), the masks of a
        :class:`~kfacemtl.data.batch.MaskedWeights` as dicts (else empty).

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> x, y, w, real, co = model.unpack_batch((None, {"age": 1, "gender": 0}, {"age": 2, "gender": 3}))
            >>> y, w, real
            ([0, 1], [3, 2], {})
        """
        x, y, sw = keras.utils.unpack_x_y_sample_weight(data)
        real, coannotated = {}, {}
        if isinstance(sw, MaskedWeights):
            sw, real, coannotated = sw
        y = None if y is None else self._in_task_order(y, "labels")
        if sw is None and y is not None:
            sw = [ops.ones((ops.shape(y[0])[0],)) for _ in self.tasks]
        elif sw is not None:
            sw = self._in_task_order(sw, "sample weights")
        return x, y, sw, dict(real), dict(coannotated)

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        """Keras's ``compute_metrics`` on labels and weights in task order (``{task: ...}`` batches included)."""
        if isinstance(sample_weight, MaskedWeights):
            sample_weight = sample_weight.weights
        if y is not None:
            y = self._in_task_order(y, "labels")
        if sample_weight is not None:
            sample_weight = self._in_task_order(sample_weight, "sample weights")
        return super().compute_metrics(x, y, self._in_task_order(y_pred, "outputs"), sample_weight)

    def fit(self, x=None, y=None, *args, **kwargs):
        """Keras's ``fit``, except that ``shuffle`` defaults to False for a ``tf.data.Dataset``: such a dataset
        (:func:`~kfacemtl.data.make_dataset`'s included) shuffles itself, and Keras ignores ``shuffle`` for it with
        a warning at every call.

        Example:
            >>> import warnings
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> model.compile()
            >>> ds = tf.data.Dataset.from_tensors((tf.zeros((2, 16, 16, 3)), {"gender": tf.zeros((2,), "int32")}))
            >>> with warnings.catch_warnings(record=True) as caught:
            ...     warnings.simplefilter("always")
            ...     history = model.fit(ds, epochs=2, verbose=0)
            >>> len(history.history["loss"]), [str(w.message) for w in caught if "shuffle" in str(w.message)]
            (2, [])
        """
        if isinstance(x, tf.data.Dataset) and len(args) < 7:  # shuffle is fit's ninth argument
            kwargs.setdefault("shuffle", False)
        self.build_optimizer()
        return super().fit(x, y, *args, **kwargs)

    def build_optimizer(self):
        """Create the optimizer's variables if they do not exist yet (the task weighting builds its own).

        :meth:`fit` calls it first. Keras otherwise creates them inside the first training step when no
        distribution strategy is set, and TensorFlow then traces that step twice (once creating variables, once
        without), which costs seconds per ``fit`` on a CPU.

        Example:
            >>> from kfacemtl.models import build_model
            >>> from kfacemtl.tasks import resolve_tasks
            >>> model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
            >>> model.compile(optimizer="adam")
            >>> model.optimizer.built, (model.build_optimizer(), model.optimizer.built)[1]
            (False, True)
        """
        if self.optimizer is not None and not self.optimizer.built:
            with self.distribute_strategy.scope():
                self.optimizer.build(self.trainable_variables)

    # -- the steps --------------------------------------------------------------------------------------------------
    def _task_losses(self, y, y_pred, sw):
        """Each task's loss once: this replica's own values (under a strategy the losses come scaled for the sum of
        the replicas' gradients; the weighting and the logs see values, whatever the number of replicas)."""
        return [unscale_loss_for_distribution(fn(t, p, w)) for fn, t, p, w in zip(self.loss, y, y_pred, sw)]

    def _track(self, total, values, batch):
        self.loss_tracker.update_state(total, sample_weight=batch)
        for tracker, value in zip(self.task_loss_trackers, values):
            tracker.update_state(value, sample_weight=batch)

    def train_step(self, data):
        x, y, sw, real, coannotated = self.unpack_batch(data)
        x = self.augmented(x)
        names = [t.name for t in self.tasks]
        moved = {}
        if self.coannotation is not None:  # class level: co-annotated rows out of the per-row task losses
            weights, moved = self.coannotation.split(dict(zip(names, sw)), coannotated)
            sw = [weights[n] for n in names]
        weighting = self.weighting
        persistent = weighting is not None and (bool(weighting.variables) or weighting.needs_gradient_norms)
        with tf.GradientTape(persistent=persistent) as tape:
            if self.features_model is not None:
                *y_pred, features = self.features_model(x, training=True)
            else:
                y_pred, features = self._in_task_order(self(x, training=True), "outputs"), None
            values = self._task_losses(y, y_pred, sw)
            losses = ops.stack(values)
            present = ops.stack([ops.cast(ops.sum(w) > 0, "float32") for w in sw])
            if weighting is None:  # the compiled loss weights
                weights, aux = present * self._fixed_weights(), None
                total = ops.sum(weights * losses)
            else:
                extra = {}
                if weighting.needs_gradient_norms:  # GradNorm: each task's gradient norm on the last shared layer
                    with tape.stop_recording():
                        shared = self.shared_kernel()
                        extra["grad_norms"] = ops.stack([
                            ops.sqrt(ops.sum(ops.square(tape.gradient(v, shared, unconnected_gradients="zero"))))
                            for v in values])
                total, weights, aux = weighting.combine(losses, present, features, **extra)
            if self.losses:
                total = total + ops.sum(self.losses)
            coupled, terms = self._coupling(y, y_pred, sw, real, moved)
            if coupled is not None:
                total = total + unscale_loss_for_distribution(coupled)
            # the gradients of every replica are summed: scale for that (and for mixed precision's loss scale)
            scaled = self.optimizer.scale_loss(scale_loss_for_distribution(total))
            aux = None if aux is None else scale_loss_for_distribution(aux)
        variables = self.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(scaled, variables), variables))
        if aux is not None and weighting.optimizer is not None:
            weighting.optimizer.apply_gradients(zip(tape.gradient(aux, weighting.variables), weighting.variables))
        del tape
        self._track(total, values, ops.shape(x)[0])
        for tracker, w, p in zip(self.weight_trackers, ops.unstack(weights), ops.unstack(present)):
            tracker.update_state(w, sample_weight=p)  # batches without the task don't count
        for tracker in self.coupling_trackers:
            tracker.update_state(unscale_loss_for_distribution(terms[tracker.name]))
        return self._synced(self.compute_metrics(x, y, y_pred, sw))

    def test_step(self, data):
        x, y, sw, _, _ = self.unpack_batch(data)
        y_pred = self._in_task_order(self(x, training=False), "outputs")
        values = self._task_losses(y, y_pred, sw)
        total = ops.sum(self._fixed_weights() * ops.stack(values))
        if self.losses:
            total = total + ops.sum(self.losses)
        self._track(total, values, ops.shape(x)[0])
        logs = self.compute_metrics(x, y, y_pred, sw)
        training_only = {m.name for m in (*self.weight_trackers, *self.coupling_trackers)}
        return self._synced({k: v for k, v in logs.items() if k not in training_only})

    def _fixed_weights(self):
        """The compiled ``loss_weights`` (1 each when there are none), as a tensor in task order."""
        return ops.convert_to_tensor(self.loss_weights or [1.0] * len(self.tasks), "float32")

    def _coupling(self, y, y_pred, sw, real, moved):
        """``(total, {term name: loss})`` of the distribution matching and class-level co-annotation (each a
        replica's share, scaled like the task losses; the total weighted, the terms as they are logged), or
        ``(None, {})``."""
        names = [t.name for t in self.tasks]
        total, terms = [], {}
        if self.matching is not None:
            matched, terms = self.matching.total(dict(zip(names, y_pred)), dict(zip(names, sw)), real)
            total.append(matched)
        if self.coannotation is not None:
            class_terms = self.coannotation.class_terms(dict(zip(names, y)), dict(zip(names, y_pred)), moved)
            terms = {**terms, **class_terms}
            total.extend(class_terms.values())
        return (ops.sum(ops.stack(total)) if total else None), terms

    def _synced(self, logs):
        """Under MultiWorkerMirroredStrategy: each log value as a vector of one, which Keras then averages over
        the replicas (its ``reduce(MEAN, axis=0)`` there fails on scalars: keras-team/keras#20585), so every
        worker sees the same logs; callbacks that act on them (the dynamic learning rate, DWA) must, or the
        workers' models drift apart."""
        if not isinstance(self.distribute_strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return logs
        return {k: ops.reshape(ops.cast(v, "float32"), (1,)) for k, v in logs.items()}

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Workaround for keras-team/keras#20585: before the first step, Keras builds the model from one batch averaged
        # over the replicas with strategy.reduce, which fails under MultiWorkerMirroredStrategy; a local replica's
        # batch has the same shapes. (A private Keras method: tests/training/test_distribute.py tells when Keras no
        # longer needs this.)
        strategy = self.distribute_strategy
        if iterator is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
            return super()._maybe_symbolic_build(iterator, data_batch)
        for _, _, it in iterator:
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0] if isinstance(v, tf.distribute.DistributedValues)
                else v, next(it))
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)
