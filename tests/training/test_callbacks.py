import math

import keras
import numpy as np
import pytest

from kfacemtl.training import DynamicLearningRate, lr_range_test
from kfacemtl.training.lr import make_dynamic_lr
from kfacemtl.errors import ConfigError


def _regression_model(lr=0.01):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(lr), loss="mse")
    return model


def _drive(cb, model, losses):
    """Feed a scripted sequence of batch losses to the callback as fit does: running means over the epoch."""
    cb.set_model(model)
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    lrs = []
    for i, mean in enumerate(np.cumsum(losses) / np.arange(1, len(losses) + 1)):
        cb.on_train_batch_end(i, {"loss": float(mean)})
        lrs.append(float(model.optimizer.learning_rate.numpy()))
    return lrs


def test_steady_progress_grows_the_learning_rate_within_bounds():
    model = _regression_model(0.01)
    cb = DynamicLearningRate(window=10, grow_after=2)
    lrs = _drive(cb, model, [10 * 0.97 ** i for i in range(400)])  # a steady 3 % fall per batch
    assert lrs[-1] == pytest.approx(0.1)  # grown to the upper bound, 10 x the initial rate, and no further
    assert all(e[1] == "steady progress" for e in cb.events) and max(lrs) <= 0.1 + 1e-9


def test_a_plateau_shrinks_it_and_never_below_the_floor():
    model = _regression_model(0.01)
    cb = DynamicLearningRate(window=10, patience=3)
    rng = np.random.default_rng(0)
    lrs = _drive(cb, model, list(1.0 + 0.01 * rng.standard_normal(3000)))  # flat, noisy
    assert cb.events and all(e[1] == "plateau" for e in cb.events)
    assert lrs[-1] == pytest.approx(1e-5) and min(lrs) >= 1e-5 - 1e-12  # floor: initial / 1000


def test_a_nan_restores_the_best_weights_and_backs_off():
    model = _regression_model(0.01)
    cb = DynamicLearningRate(window=5, grow_after=2)  # not grown before the blow-up
    cb.set_model(model)
    cb.on_train_begin()
    cb.on_epoch_begin(0)
    for i in range(10):  # two windows of falling loss: the best snapshot is taken at batch 10
        cb.on_train_batch_end(i, {"loss": 1.0 - 0.01 * i})
    best = [w.copy() for w in model.get_weights()]
    model.set_weights([np.full_like(w, np.nan) for w in best])  # a blow-up wrecks the weights
    cb.on_train_batch_end(10, {"loss": float("nan")})
    for w, b in zip(model.get_weights(), best):
        np.testing.assert_array_equal(w, b)
    assert cb.events[-1][1].startswith("divergence") and float(model.optimizer.learning_rate.numpy()) == \
        pytest.approx(0.0025)
    cb.on_train_batch_end(11, {"loss": 0.9})  # the running means were reset: training goes on
    assert math.isfinite(float(model.optimizer.learning_rate.numpy()))


def test_fit_logs_the_learning_rate_and_a_schedule_is_refused():
    model = _regression_model(0.01)
    x = np.random.default_rng(0).random((64, 4), "float32")
    history = model.fit(x, x.sum(1), batch_size=8, epochs=2, verbose=0, callbacks=[DynamicLearningRate(window=4)])
    assert len(history.history["learning_rate"]) == 2
    sched = keras.optimizers.schedules.CosineDecay(0.01, 10)
    model.compile(optimizer=keras.optimizers.Adam(sched), loss="mse")
    with pytest.raises(ValueError, match="needs the optimizer's learning rate as a number"):
        model.fit(x, x.sum(1), epochs=1, verbose=0, callbacks=[DynamicLearningRate()])


def test_lr_range_test_suggests_a_rate_and_restores_the_model(tmp_path):
    import tensorflow as tf
    model = _regression_model(0.003)
    rng = np.random.default_rng(0)
    x = rng.random((512, 4), "float32")
    ds = tf.data.Dataset.from_tensor_slices((x, x @ np.array([1.0, -2.0, 0.5, 3.0], "float32"))).repeat().batch(32)
    before = [w.copy() for w in model.get_weights()]
    result = lr_range_test(model, ds, start=1e-5, end=10.0, steps=60, plot=tmp_path / "lr.png")
    assert 1e-5 <= result["suggestion"] <= 10.0 and len(result["losses"]) == len(result["learning_rates"])
    assert min(result["losses"]) < result["losses"][0]  # the loss fell somewhere along the sweep
    for w, b in zip(model.get_weights(), before):
        np.testing.assert_array_equal(w, b)
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.003)
    assert (tmp_path / "lr.png").stat().st_size > 1000
    with pytest.raises(ValueError, match="steps >= 5"):
        lr_range_test(model, ds, steps=2)


def test_the_last_fifth_of_a_known_run_anneals_to_a_hundredth_and_divergence_still_backs_off():
    model = _regression_model(0.01)
    cb = DynamicLearningRate(window=10, grow_after=2, anneal=0.2)
    cb.set_params({"epochs": 2, "steps": 100})
    cb.set_model(model)
    cb.on_train_begin()
    lrs, losses = [], [10 * 0.97 ** i for i in range(200)]  # steady progress: the rule alone would keep growing
    for epoch in range(2):
        cb.on_epoch_begin(epoch)
        epoch_losses = np.array(losses[epoch * 100:(epoch + 1) * 100])
        means = np.cumsum(epoch_losses) / np.arange(1, 101)
        if epoch == 1:  # a blow-up in the middle of the anneal; the callback resets the running means after it
            means[90] = math.nan
            means[91:] = np.cumsum(epoch_losses[91:]) / np.arange(1, 10)
        for i, mean in enumerate(means):
            cb.on_train_batch_end(i, {"loss": float(mean)})
            lrs.append(float(model.optimizer.learning_rate.numpy()))
    start = [e for e in cb.events if e[1] == "final anneal"]
    assert len(start) == 1 and start[0][0] == 160  # the last 20 % of 200 steps
    peak = start[0][2]
    assert peak > 0.01 and lrs[159] == pytest.approx(peak)  # grown before the anneal
    assert all(b <= a + 1e-12 for a, b in zip(lrs[160:189], lrs[161:190]))  # decays monotonically
    assert lrs[190] < 0.25 * lrs[189] + 1e-12  # the NaN at step 191 cut it by the back-off, and the anneal goes on from there
    assert lrs[-1] == pytest.approx(0.25 * peak * 0.01, rel=0.05)


def test_by_default_the_second_half_of_a_known_run_anneals_after_growing_each_improving_window():
    model = _regression_model(0.01)
    cb = DynamicLearningRate(window=10)
    cb.set_params({"epochs": 1, "steps": 200})
    lrs = _drive(cb, model, [10 * 0.99 ** i for i in range(200)])  # a steady 1 % fall per batch
    grown = [e for e in cb.events if e[1] == "steady progress"]
    # every window after the first improves, so 8 growths before batch 100, where the anneal takes over
    assert [e[0] for e in grown] == list(range(20, 100, 10)) and lrs[99] == pytest.approx(0.01 * 1.2 ** 8)
    assert [e[0] for e in cb.events if e[1] == "final anneal"] == [100]
    assert lrs[-1] == pytest.approx(0.01 * 1.2 ** 8 * 0.01, rel=0.05)


def test_without_a_known_length_there_is_no_anneal():
    model = _regression_model(0.01)
    cb = DynamicLearningRate(window=10)
    _drive(cb, model, [10 * 0.97 ** i for i in range(200)])
    assert not [e for e in cb.events if e[1] == "final anneal"]
    with pytest.raises(ValueError, match=r"^anneal: expected a fraction in \[0, 1\), got 1.0"):
        DynamicLearningRate(anneal=1.0)
    with pytest.raises(ConfigError, match=r"'training.dynamic_lr_options.anneal': expected a fraction"):
        make_dynamic_lr({"anneal": 1.0})
    with pytest.raises(ConfigError, match=r"'training.dynamic_lr_options': \['speed'\] are not options"):
        make_dynamic_lr({"speed": 2})


class _PoisonAt(keras.callbacks.Callback):
    """Sets the first convolution's kernel to NaN after batch ``at`` of the first epoch: a divergence, on cue."""

    def __init__(self, at):
        super().__init__()
        self.at = at

    def on_train_batch_end(self, batch, logs=None):
        if batch == self.at and not getattr(self, "done", False):
            self.done = True
            kernel = self.model.backbone.get_layer("block1_conv1").kernel
            kernel.assign(np.full(kernel.shape, np.nan, "float32"))


NAN_CONFIG = {"tasks": ["gender"], "sources": ["synthetic:portraits?n=64"],
              "model": {"input_shape": [16, 16, 3], "widths": [4], "depths": [1], "embedding_dim": 4, "head_units": 0},
              "training": {"epochs": 2, "steps_per_epoch": 6, "batch_size": 8, "learning_rate": 0.01}}


def test_a_nan_loss_rolls_back_to_the_last_good_weights_with_a_lower_learning_rate_or_stops(tmp_path):
    import json

    from kfacemtl.errors import TrainingDiverged
    from kfacemtl.models import load_model
    from kfacemtl.training import train_run
    report = train_run(NAN_CONFIG, tmp_path / "run", verbose=0, extra_callbacks=[_PoisonAt(3)])
    assert report["nan_events"] == [{"epoch": 1, "batch": 5, "action": "rollback, learning rate 0.005"}]
    weights = load_model(tmp_path / "run" / "model.keras").get_weights()
    assert all(np.isfinite(w).all() for w in weights)
    assert all(np.isfinite(v) for v in report["final_epoch_metrics"].values())
    cfg = json.loads(json.dumps(NAN_CONFIG))
    cfg["training"]["on_nan"] = "stop"
    with pytest.raises(TrainingDiverged, match="epoch 1, batch 5 .*no model was written"):
        train_run(cfg, tmp_path / "stop", verbose=0, extra_callbacks=[_PoisonAt(3)])
    assert not (tmp_path / "stop" / "model.keras").exists()


def test_nan_guard_snapshots_every_n_batches_when_batches_come_several_per_call(monkeypatch):
    from kfacemtl.training import callbacks
    from kfacemtl.training import NaNGuard
    taken = []
    monkeypatch.setattr(callbacks, "snapshot_state", lambda model: taken.append(len(taken)) or ("weights", []))
    guard = NaNGuard("rollback", every=50)
    monkeypatch.setattr(guard, "_complete", lambda: bool(taken))
    seen = []
    for batch in range(7, 400, 8):  # steps_per_execution 8: the hooks see every eighth batch
        before = len(taken)
        guard.on_train_batch_end(batch, {"loss": 1.0})
        seen += [batch] if len(taken) > before else []
    # every 56 batches (the first call at or past 50): (batch + 1) % 50 == 0 would hold only every 200 batches
    assert seen == [7, 63, 119, 175, 231, 287, 343, 399]


def test_a_nan_rolls_back_with_several_steps_per_call(tmp_path):
    import json

    from kfacemtl.training import train_run
    cfg = json.loads(json.dumps(NAN_CONFIG))
    cfg["training"]["steps_per_execution"] = 2
    report = train_run(cfg, tmp_path / "run", verbose=0, extra_callbacks=[_PoisonAt(3)])
    assert [e["action"] for e in report["nan_events"]] == ["rollback, learning rate 0.005"]
    assert report["nan_events"][0]["batch"] == 6  # the call that ran steps 5 and 6 (0-based 4, 5)
    assert all(np.isfinite(v) for v in report["final_epoch_metrics"].values())
