"""A learning rate that tunes itself (:class:`DynamicLearningRate`) and the LR range test.

:class:`DynamicLearningRate` needs no schedule from the user. Every ``window`` batches it
compares the smoothed training loss with that of the previous window:

- the loss fell by more than ``tolerance`` (relative) in ``grow_after`` windows in a row
  (default: the last one): the step size is too cautious, so the learning rate grows by ``grow``;
- it did not fall by ``tolerance`` in ``patience`` windows in a row (a plateau): it shrinks
  by ``shrink``, which lets the weights settle into the basin they are circling;
- a batch loss that is NaN or infinite, or a smoothed loss above ``blowup`` × the best one,
  is a divergence: the weights and optimizer state of the best window are restored and the
  learning rate is cut by ``backoff``.

When the run's length is known (``fit`` with ``epochs`` and ``steps_per_epoch``), the last
``anneal`` fraction of the steps (default 0.5) is a final anneal: the learning rate reached
so far decays along a half cosine to 1 % of itself (divergences are still caught). In a short
run the loss never stops falling, so the plateau rule alone would end at a large step size;
small final steps average out the batch noise in the weights, which a schedule gets from its
decay. The rule thus has the first half of a run to find the scale of the learning rate, and
the second half decays it as a cosine schedule spends its own second half.

The learning rate stays within ``[min_lr, max_lr]`` (by default 1/1000 and 10 × the initial
one) and is never NaN. It is logged as ``learning_rate`` in every epoch's logs (so in
``history.csv`` and TensorBoard).

Example:
    >>> import numpy as np
    >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
    >>> model.compile(keras.optimizers.SGD(0.01), "mse")
    >>> x = np.random.default_rng(0).normal(size=(256, 4)).astype("float32"); y = x.sum(1, keepdims=True)
    >>> cb = DynamicLearningRate(window=4)
    >>> history = model.fit(x, y, batch_size=16, epochs=4, callbacks=[cb], verbose=0)
    >>> [what for _, what, _ in cb.events][:2], len(history.history["learning_rate"])   # logged every epoch
    (['steady progress', 'steady progress'], 4)
"""
from __future__ import annotations

import inspect
import math
from typing import Mapping

import keras
import numpy as np

from kfacemtl.analysis.plots import plot_lr_range
from kfacemtl.errors import under_key
from kfacemtl.training.callbacks import restore_state, snapshot_state

LR_SCHEDULES = ("constant", "cosine", "dynamic")


def _lr_variable(model):
    """The optimizer's learning-rate variable (a schedule has none to set)."""
    lr = model.optimizer.learning_rate
    if not hasattr(lr, "assign"):
        raise ValueError("a dynamic learning rate needs the optimizer's learning rate as a number, not a schedule "
                         "(lr_schedule: constant or dynamic)")
    return lr


class DynamicLearningRate(keras.callbacks.Callback):
    """Adapt the learning rate online from the smoothed training loss (see the module docstring).

    Args:
        window: batches between decisions.
        smoothing: the loss's exponential moving average factor (bias-corrected).
        tolerance: relative fall of the smoothed loss that counts as progress.
        grow, grow_after: factor and number of improving windows in a row before growing.
        shrink, patience: factor and number of stalled windows in a row before shrinking.
        blowup: smoothed loss above ``blowup`` × the best one is a divergence.
        backoff: factor applied after a divergence.
        anneal: the final fraction of the run's steps spent decaying the learning rate to 1 %
            of the value it had reached (0: none; needs ``epochs`` and ``steps_per_epoch``).
        min_lr, max_lr: bounds (default: initial / 1000 and initial × 10).
        verbose: print each change.

    Example:
        >>> cb = DynamicLearningRate(window=20, patience=2)
        >>> cb.grow, cb.shrink
        (1.2, 0.5)
    """

    def __init__(self, window: int = 50, smoothing: float = 0.9, tolerance: float = 0.01, grow: float = 1.2,
                 grow_after: int = 1, shrink: float = 0.5, patience: int = 3, blowup: float = 2.0,
                 backoff: float = 0.25, anneal: float = 0.5, min_lr: float | None = None, max_lr: float | None = None,
                 verbose: int = 0):
        super().__init__()
        if not 0 <= anneal < 1:
            raise ValueError(f"anneal: expected a fraction in [0, 1), got {anneal!r}")
        if int(window) < 1:
            raise ValueError(f"window: expected a positive number of batches, got {window!r}")
        if not (0 <= smoothing < 1 and 0 < shrink < 1 and grow > 1 and 0 < backoff < 1 and blowup > 1):
            raise ValueError("expected 0 <= smoothing < 1, 0 < shrink < 1, grow > 1, 0 < backoff < 1 and blowup > 1, "
                             f"got smoothing={smoothing!r}, shrink={shrink!r}, grow={grow!r}, backoff={backoff!r}, "
                             f"blowup={blowup!r}")
        self.window, self.smoothing, self.tolerance = int(window), float(smoothing), float(tolerance)
        self.grow, self.grow_after, self.shrink, self.patience = float(grow), int(grow_after), float(shrink), int(patience)
        self.blowup, self.backoff, self.min_lr, self.max_lr = float(blowup), float(backoff), min_lr, max_lr
        self.anneal = float(anneal)
        self.verbose = verbose
        self.events: list[tuple[int, str, float]] = []  # (batch, what, new learning rate)

    # -- state -------------------------------------------------------------------------------
    def on_train_begin(self, logs=None):
        lr = float(_lr_variable(self.model).numpy())
        self.low = self.min_lr if self.min_lr is not None else lr / 1000
        self.high = self.max_lr if self.max_lr is not None else lr * 10
        self._ema, self._n, self._batches = 0.0, 0, 0
        self._epoch_batches, self._epoch_mean = 0, 0.0
        self._previous = None  # smoothed loss at the end of the previous window
        self._best, self._snapshot = math.inf, None
        self._improving = self._stalled = 0
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        self._steps_per_epoch = steps
        self._total = epochs * steps if epochs and steps and self.anneal else None  # None: no final anneal
        self._anneal_start = int(round(self._total * (1 - self.anneal))) if self._total else None
        self._anneal_from = None  # (first step, learning rate then) once the final anneal starts

    def on_epoch_begin(self, epoch, logs=None):
        self._epoch_batches, self._epoch_mean = 0, 0.0
        self._epoch = epoch

    def _annealing(self, batch: int) -> bool:
        """Set the learning rate of the final anneal for this step; False before it starts."""
        if self._total is None:
            return False
        step = getattr(self, "_epoch", 0) * self._steps_per_epoch + batch + 1  # counts a resumed run's epochs
        if step < self._anneal_start:
            return False
        if self._anneal_from is None:
            self._anneal_from = (self._anneal_start, float(self.model.optimizer.learning_rate.numpy()))
            self.events.append((self._batches, "final anneal", self._anneal_from[1]))
        first, lr = self._anneal_from
        progress = min(1.0, (step - first) / max(1, self._total - first))
        self._assign(lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * progress))))
        return True

    def _batch_loss(self, logs):
        """The batch's own loss: Keras logs the running mean of the epoch's batch losses."""
        mean = float((logs or {}).get("loss", math.nan))
        self._epoch_batches += 1
        k = self._epoch_batches
        loss = mean * k - self._epoch_mean * (k - 1) if k > 1 else mean
        self._epoch_mean = mean
        return loss

    def _smoothed(self):
        return self._ema / (1 - self.smoothing ** self._n) if self._n else math.nan

    def _assign(self, value) -> float:
        """Set the learning rate, kept within the bounds; returns the value set."""
        value = float(np.clip(value, self.low, self.high))
        self.model.optimizer.learning_rate.assign(value)
        return value

    def _set_lr(self, value, what):
        value = self._assign(value)
        self.events.append((self._batches, what, value))
        if self.verbose:
            print(f"\nDynamicLearningRate: {what} at batch {self._batches}: learning rate {value:.3g}")

    def _save_best(self, loss):
        self._best = loss
        self._snapshot = snapshot_state(self.model)

    def _restore_best(self):
        if self._snapshot is not None:
            restore_state(self.model, self._snapshot)

    # -- the rule --------------------------------------------------------------------------------
    def on_train_batch_end(self, batch, logs=None):
        loss = self._batch_loss(logs)
        self._batches += 1
        lr = float(self.model.optimizer.learning_rate.numpy())
        if not math.isfinite(loss) or (math.isfinite(self._best) and self._n
                                       and self._smoothed() > self.blowup * self._best):
            self._restore_best()
            self._ema, self._n, self._previous = 0.0, 0, None  # start smoothing afresh from the restored weights
            self._improving = self._stalled = 0
            self.model.reset_metrics()  # a NaN in the epoch's running means would poison every later batch
            self._epoch_batches, self._epoch_mean = 0, 0.0
            self._set_lr(lr * self.backoff, "divergence: best weights restored")
            if self._anneal_from is not None:  # the anneal continues from the reduced rate
                self._anneal_from = (self._anneal_from[0], self._anneal_from[1] * self.backoff)
            return
        self._ema = self.smoothing * self._ema + (1 - self.smoothing) * loss
        self._n += 1
        if self._annealing(batch) or self._batches % self.window:
            return
        current = self._smoothed()
        if current < self._best:
            self._save_best(current)
        if self._previous is not None:
            if current < self._previous * (1 - self.tolerance):
                self._improving, self._stalled = self._improving + 1, 0
                if self._improving >= self.grow_after and lr < self.high:
                    self._improving = 0
                    self._set_lr(lr * self.grow, "steady progress")
            else:
                self._improving, self._stalled = 0, self._stalled + 1
                if self._stalled >= self.patience and lr > self.low:
                    self._stalled = 0
                    self._set_lr(lr * self.shrink, "plateau")
        self._previous = current

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(self.model.optimizer.learning_rate.numpy())


def make_dynamic_lr(options: Mapping | None = None) -> DynamicLearningRate:
    """A :class:`DynamicLearningRate` from the config's ``training.dynamic_lr_options`` (None: the defaults); a bad
    option is a :class:`~kfacemtl.errors.ConfigError` naming its key.

    Example:
        >>> make_dynamic_lr({"anneal": 0.5}).anneal
        0.5
        >>> make_dynamic_lr({"anneal": 1.5})
        Traceback (most recent call last):
        ...
        kfacemtl.errors.ConfigError: config key 'training.dynamic_lr_options.anneal': expected a fraction in [0, 1), got 1.5
    """
    options = dict(options or {})
    unknown = set(options) - set(inspect.signature(DynamicLearningRate).parameters)
    with under_key("training.dynamic_lr_options"):
        if unknown:
            raise ValueError(f"{sorted(unknown)} are not options of DynamicLearningRate")
        return DynamicLearningRate(**options)


def lr_range_test(model, dataset, start: float = 1e-6, end: float = 1.0, steps: int = 100, smoothing: float = 0.9,
                  stop_factor: float = 4.0, plot: str | None = None) -> dict:
    """Smith's LR range test: train ``steps`` batches with an exponentially growing learning rate.

    The model's weights and optimizer state are restored afterwards. The suggestion is the
    learning rate where the smoothed loss falls fastest (steepest negative slope against
    log learning rate), a common and robust choice; the test stops early once the loss
    exceeds ``stop_factor`` × its minimum.

    Args:
        model: a compiled model (its optimizer's learning rate must be a number).
        dataset: an (infinite) training dataset, e.g. from :func:`~kfacemtl.data.make_dataset`.
        plot: a PNG path for loss against learning rate (log axis) with the suggestion marked.

    Returns:
        ``{"learning_rates": [...], "losses": [...], "suggestion": float}``

    Example:
        >>> import numpy as np, tensorflow as tf
        >>> model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(1)])
        >>> model.compile(keras.optimizers.SGD(0.01), "mse")
        >>> x = np.random.default_rng(0).normal(size=(16, 4)).astype("float32")
        >>> ds = tf.data.Dataset.from_tensors((x, x.sum(1, keepdims=True))).repeat()
        >>> result = lr_range_test(model, ds, start=1e-4, end=1.0, steps=20, plot="lr_range.png")
        >>> 1e-4 <= result["suggestion"] <= 1.0, round(float(model.optimizer.learning_rate), 6)   # then restored
        (True, 0.01)
    """
    if steps < 5 or not 0 < start < end:
        raise ValueError(f"expected steps >= 5 and 0 < start < end, got steps={steps}, start={start}, end={end}")
    lr_var = _lr_variable(model)
    saved = snapshot_state(model)
    original_lr = float(lr_var.numpy())
    rates = start * (end / start) ** (np.arange(steps) / (steps - 1))
    lrs, losses, ema, best = [], [], 0.0, math.inf
    iterator = iter(dataset)
    try:
        for i, rate in enumerate(rates):
            lr_var.assign(float(rate))
            model.reset_metrics()  # so the logged loss is this batch's, not a running mean
            logs = model.train_on_batch(*keras.utils.unpack_x_y_sample_weight(next(iterator)), return_dict=True)
            loss = float(logs["loss"])
            if not math.isfinite(loss):
                break
            ema = smoothing * ema + (1 - smoothing) * loss
            smoothed = ema / (1 - smoothing ** (i + 1))
            lrs.append(float(rate))
            losses.append(smoothed)
            best = min(best, smoothed)
            if smoothed > stop_factor * best:
                break
    finally:
        restore_state(model, saved)
        lr_var.assign(original_lr)
    if len(lrs) < 3:
        raise ValueError(f"the LR range test diverged after {len(lrs)} steps; lower `start`")
    slopes = np.gradient(np.array(losses), np.log(np.array(lrs)))
    suggestion = float(lrs[int(np.argmin(slopes))])
    result = {"learning_rates": lrs, "losses": losses, "suggestion": suggestion}
    if plot:
        plot_lr_range(result, plot)
    return result
