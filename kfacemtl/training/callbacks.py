"""Training callbacks: task weighting's epoch work, a guard against NaN losses (:class:`NaNGuard`) and an epoch
checkpoint that is never half written (:class:`EpochCheckpoint`).

Example:
    >>> guard = NaNGuard("rollback", every=50)
    >>> guard.mode, guard.max_rollbacks
    ('rollback', 5)
"""
from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import keras
import numpy as np

from kfacemtl.errors import expect_one_of
from kfacemtl.files import atomic_write


def snapshot_state(model) -> tuple[list, list]:
    """Copies of the model's weights and its optimizer's state (:func:`restore_state` puts them back).

    Example:
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> weights, optimizer_state = snapshot_state(model)
        >>> [w.shape for w in weights]
        [(2, 1), (1,)]
    """
    return [v.numpy().copy() for v in model.weights], [v.numpy().copy() for v in model.optimizer.variables]


def restore_state(model, snapshot):
    """Put back what :func:`snapshot_state` copied.

    Example:
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(1)])
        >>> model.compile("sgd", "mse")
        >>> saved = snapshot_state(model)
        >>> _ = model.layers[0].kernel.assign(np.ones((2, 1)))
        >>> restore_state(model, saved)
        >>> bool(np.array_equal(model.layers[0].kernel.numpy(), saved[0][0]))
        True
    """
    for variables, values in zip((model.weights, model.optimizer.variables), snapshot):
        for v, value in zip(variables, values):
            v.assign(value)


class TaskWeightingCallback(keras.callbacks.Callback):
    """The epoch work of a model's task weighting (:meth:`~kfacemtl.models.MultiTaskModel.set_weighting`).

    Gives the strategy the epoch's mean loss per task (DWA needs it), and keeps the strategy's state in
    ``state_path`` (written atomically each epoch, read when training starts) so a resumed run continues it.

    Example:
        >>> from kfacemtl.models import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> from kfacemtl.training import compile_model
        >>> model = compile_model(build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,),
        ...                                   depths=1), weighting="dwa")
        >>> cb = TaskWeightingCallback("run/weighting.npz")
        >>> cb.set_model(model)
        >>> for epoch, gender_loss in enumerate([0.7, 0.35]):      # gender's loss falls, age's does not
        ...     cb.on_epoch_end(epoch, {"gender_loss": gender_loss, "age_loss": 1.0})
        >>> [round(float(w), 3) for w in model.weighting.current.numpy()], sorted(np.load("run/weighting.npz"))
        ([0.876, 1.124], ['current', 'history'])
    """

    def __init__(self, state_path=None):
        super().__init__()
        self.state_path = Path(state_path) if state_path else None

    def on_train_begin(self, logs=None):
        weighting = getattr(self.model, "weighting", None)
        if weighting is not None and self.state_path is not None and self.state_path.exists():
            with np.load(self.state_path) as state:
                weighting.set_state({k: state[k] for k in state.files})

    def on_epoch_end(self, epoch, logs=None):
        weighting = getattr(self.model, "weighting", None)
        if weighting is None:
            return
        logs = logs or {}
        weighting.on_epoch_end(epoch, {t: float(logs[f"{t}_loss"]) for t in weighting.task_names
                                       if f"{t}_loss" in logs})
        if self.state_path is not None:
            atomic_write(self.state_path, lambda tmp: np.savez(tmp, **weighting.get_state()))


NAN_MODES = ("rollback", "stop")


class NaNGuard(keras.callbacks.Callback):
    """What happens when the training loss becomes NaN or infinite (a divergence, or a bad batch).

    ``rollback`` (default): the weights and optimizer state of the last good snapshot (taken after the first
    step, then every ``every`` batches and at each epoch's start) are put back, the epoch's running metrics restart, and the learning rate
    is multiplied by ``backoff`` (when it is a number; a schedule cannot be lowered, so only the weights go back);
    after ``max_rollbacks`` in one run it stops as ``stop`` does. ``stop``: training stops at once, and
    :attr:`diverged` says where (``train_run`` then raises :class:`~kfacemtl.errors.TrainingDiverged` and writes
    no model; the last finished epoch stays in the run's ``backup/`` for ``--resume``).
    Every rollback and stop is in :attr:`events` (``train_run`` copies them into ``report.json``).
    (``lr_schedule: dynamic`` rolls back by itself: :class:`DynamicLearningRate`.)

    Example:
        >>> model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(0.1), "mse")
        >>> x = np.array([[1.0]] * 7 + [[np.nan]], "float32")    # the last batch makes the loss NaN
        >>> guard = NaNGuard("rollback", every=2, verbose=0)
        >>> _ = model.fit(x, np.ones((8, 1), "float32"), batch_size=1, shuffle=False, callbacks=[guard], verbose=0)
        >>> guard.events, bool(np.isfinite(model.get_weights()[0]).all())   # rolled back, at half the rate
        ([(0, 7, 'rollback, learning rate 0.05')], True)
    """

    def __init__(self, mode: str = "rollback", every: int = 50, backoff: float = 0.5, max_rollbacks: int = 5,
                 verbose: int = 1):
        super().__init__()
        expect_one_of("mode", mode, NAN_MODES)
        self.mode, self.every, self.backoff, self.max_rollbacks = mode, int(every), float(backoff), int(max_rollbacks)
        self.verbose = verbose
        self.events: list[tuple[int, int, str]] = []
        self.diverged: tuple[int, int] | None = None
        self._snapshot, self._epoch, self._last = None, 0, -1

    def _complete(self) -> bool:
        """Whether the snapshot holds the whole optimizer state (Keras builds it at the first step)."""
        return self._snapshot is not None and len(self._snapshot[1]) == len(self.model.optimizer.variables)

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch, self._last = epoch, -1
        if self._complete():
            self._snapshot = snapshot_state(self.model)

    def on_train_batch_end(self, batch, logs=None):
        loss = float((logs or {}).get("loss", 0.0))
        if math.isfinite(loss):  # (batch counts by steps_per_execution when that is > 1: compare, don't divide)
            if not self._complete() or batch - self._last >= self.every:
                self._snapshot, self._last = snapshot_state(self.model), batch
            return
        rollbacks = sum(1 for e in self.events if e[2].startswith("rollback"))
        if self.mode == "stop" or rollbacks >= self.max_rollbacks:
            self.diverged = (self._epoch, batch)
            self.events.append((self._epoch, batch, "stop"))
            self.model.stop_training = True
            return
        lr = self.model.optimizer.learning_rate
        lowered = float(lr.numpy()) * self.backoff if hasattr(lr, "assign") else None
        restore_state(self.model, self._snapshot)  # (the learning rate too, when it is a variable of the optimizer)
        self.model.reset_metrics()  # the NaN is in the epoch's running means
        what = "rollback"
        if lowered is not None:
            lr.assign(lowered)
            what = f"rollback, learning rate {lowered:.3g}"
        self.events.append((self._epoch, batch, what))
        if self.verbose:
            print(f"\nNaNGuard: the loss became {loss} at epoch {self._epoch + 1}, batch {batch + 1}: {what}")


class EpochCheckpoint(keras.callbacks.Callback):
    """The last finished epoch, for ``--resume``: the model's weights (its optimizer's state included) and the epoch
    number in ``folder``, written to temporary files first and renamed into place only when both are complete, so a
    crash, a kill or a full disk while saving leaves the previous checkpoint as it was. When training starts, a
    checkpoint in ``folder`` is loaded; :meth:`epochs_done` says where to go on (``fit(initial_epoch=...)``), and the
    folder is removed when training ends. The files are those of Keras's ``BackupAndRestore`` (``latest.weights.h5``,
    ``training_metadata.json``).

    Example:
        >>> checkpoint = EpochCheckpoint("runs/exp1/backup")
        >>> checkpoint.epochs_done()   # nothing saved yet
        0
    """

    def __init__(self, folder):
        super().__init__()
        self.folder = Path(folder)
        self.weights_path = self.folder / "latest.weights.h5"
        self.metadata_path = self.folder / "training_metadata.json"

    def epochs_done(self) -> int:
        """The number of finished epochs the checkpoint holds (0 without one)."""
        if not (self.metadata_path.is_file() and self.weights_path.is_file()):
            return 0
        return int(json.loads(self.metadata_path.read_text())["epoch"])

    def on_train_begin(self, logs=None):
        if self.epochs_done():
            optimizer = self.model.optimizer
            if optimizer is not None and not optimizer.built:  # its state loads with the weights
                optimizer.build(self.model.trainable_variables)
            self.model.load_weights(self.weights_path)

    def on_epoch_end(self, epoch, logs=None):
        self.folder.mkdir(parents=True, exist_ok=True)
        weights = self.folder / f".latest.tmp{os.getpid()}.weights.h5"  # Keras wants the .weights.h5 ending
        metadata = self.folder / f".training_metadata.tmp{os.getpid()}.json"
        try:
            self.model.save_weights(weights, overwrite=True)
            metadata.write_text(json.dumps({"epoch": epoch + 1, "batch": -1}))
            os.replace(weights, self.weights_path)
            os.replace(metadata, self.metadata_path)
        finally:
            for tmp in (weights, metadata):
                tmp.unlink(missing_ok=True)

    def on_train_end(self, logs=None):
        if not self.model.stop_training:  # a finished run needs no checkpoint; a stopped one keeps it
            shutil.rmtree(self.folder, ignore_errors=True)
