import math

import numpy as np
import pytest
import tensorflow as tf

from kfacemtl.errors import ConfigError
from kfacemtl.training.weighting import (DWAWeighting, DynamicWeighting, GradNormWeighting, UncertaintyWeighting,
                                        make_weighting)

NAMES = ["age", "gender", "expression"]
LOSSES = np.array([2.0, 0.5, 1.0], "float32")
ALL = np.ones(3, "float32")
NO_GENDER = np.array([1.0, 0.0, 1.0], "float32")


def _numbers(t):
    return [float(v) for v in np.asarray(t)]


def test_equal_and_static_weigh_only_the_tasks_in_the_batch():
    total, weights, aux = make_weighting("equal", NAMES).combine(LOSSES * NO_GENDER, NO_GENDER, None)
    assert float(total) == 3.0 and _numbers(weights) == [1, 0, 1] and aux is None
    total, weights, _ = make_weighting("static", NAMES, weights={"expression": 3.0}).combine(LOSSES, ALL, None)
    assert float(total) == pytest.approx(2.0 + 0.5 + 3.0) and _numbers(weights) == [1, 1, 3]
    with pytest.raises(ValueError, match=r"^weighting_options\.weights\.smile: not a task"):
        make_weighting("static", NAMES, weights={"smile": 1.0})


def test_uncertainty_is_kendalls_loss_and_absent_tasks_get_no_gradient():
    w = UncertaintyWeighting(NAMES)
    w.log_vars.assign([0.0, math.log(2.0), math.log(4.0)])
    with tf.GradientTape() as tape:
        total, weights, aux = w.combine(LOSSES, NO_GENDER, None)
    assert float(total) == pytest.approx(2.0 + 1.0 / 4 + math.log(4.0), rel=1e-5)  # gender absent: no term at all
    assert _numbers(weights) == pytest.approx([1.0, 0.0, 0.25])
    grad = tape.gradient(aux, w.log_vars).numpy()
    assert grad[1] == 0 and grad[0] == pytest.approx(1 - 2.0) and grad[2] == pytest.approx(1 - 0.25)


def test_dwa_follows_the_ratio_of_the_last_two_epoch_losses():
    w = DWAWeighting(NAMES, temperature=2.0)
    w.on_epoch_end(0, {"age": 4.0, "gender": 1.0, "expression": 2.0})
    assert _numbers(w.current.numpy()) == [1, 1, 1]  # one epoch is not enough
    w.on_epoch_end(1, {"age": 2.0, "gender": 1.0, "expression": 2.0})
    r = np.array([0.5, 1.0, 1.0])
    expected = 3 * np.exp(r / 2) / np.exp(r / 2).sum()
    np.testing.assert_allclose(w.current.numpy(), expected, rtol=1e-5)
    state = w.get_state()
    again = DWAWeighting(NAMES)
    again.set_state(state)
    np.testing.assert_allclose(again.current.numpy(), expected, rtol=1e-5)


def test_dynamic_weight_unit_moves_weight_to_the_harder_task_and_ignores_absent_ones():
    w = DynamicWeighting(NAMES, learning_rate=0.05)
    w.build(8)
    opt = w.make_optimizer()
    features = tf.random.stateless_uniform((16, 8), seed=(1, 2))
    _, before, _ = w.combine(LOSSES, ALL, features)
    assert float(np.sum(before)) == pytest.approx(3.0, rel=1e-5)
    for _ in range(50):  # the weight unit alone trains on sum w_t / (L_t + 0.01)
        with tf.GradientTape() as tape:
            _, _, aux = w.combine(LOSSES, ALL, features)
        opt.apply_gradients(zip(tape.gradient(aux, w.variables), w.variables))
    _, after, _ = w.combine(LOSSES, ALL, features)
    assert np.argmax(after) == 0 and float(after[0]) > float(before[0])  # age has the largest loss
    with tf.GradientTape() as tape:
        total, weights, aux = w.combine(LOSSES * NO_GENDER, NO_GENDER, features)
    assert float(weights[1]) == 0 and float(np.sum(weights)) == pytest.approx(2.0, rel=1e-5)
    kernel_grad = tape.gradient(aux, w.unit.kernel).numpy()
    assert np.all(np.isfinite(kernel_grad))


def test_dynamic_weights_are_bounded_by_the_normalised_logits():
    w = DynamicWeighting(NAMES + ["race"])
    w.build(4)
    w.unit.kernel.assign(np.zeros((4, 4), "float32"))
    w.unit.bias.assign([30.0, 0.0, 0.0, 0.0])  # unnormalised, the unit would give age everything
    _, weights, _ = w.combine(np.ones(4, "float32"), np.ones(4, "float32"), tf.ones((2, 4)))
    e = math.exp(1.0)
    assert _numbers(weights) == pytest.approx([4 * e / (e + 3)] + [4 / (e + 3)] * 3, rel=1e-5)
    for _ in range(3):  # however the unit trains, no task's weight leaves about [0.38, 2.06] of the 4
        w.unit.bias.assign(np.random.default_rng(_).normal(0, 50, 4).astype("float32"))
        _, weights, _ = w.combine(np.ones(4, "float32"), np.ones(4, "float32"), tf.ones((2, 4)))
        assert 0.37 < float(np.min(weights)) and float(np.max(weights)) < 2.07


def test_gradnorm_raises_the_weight_of_the_task_with_the_small_gradient_and_renormalises():
    w = GradNormWeighting(NAMES, alpha=0.0, learning_rate=0.05)
    opt = w.make_optimizer()
    norms = np.array([4.0, 1.0, 2.0], "float32")
    for _ in range(40):  # alpha 0: the weighted gradient norms w_t * g_t are pulled to their mean
        with tf.GradientTape() as tape:
            _, weights, aux = w.combine(LOSSES, ALL, None, grad_norms=norms)
        opt.apply_gradients(zip(tape.gradient(aux, w.variables), w.variables))
    weights = w.weights.numpy()
    assert weights[1] > weights[2] > weights[0] and float(weights.sum()) == pytest.approx(3.0, rel=1e-5)
    spread = np.std(weights * norms) / np.mean(weights * norms)  # the optimum is w ~ 1/g: (0.43, 1.71, 0.86)
    assert spread < 0.5 * np.std(norms) / np.mean(norms)
    assert _numbers(w.initial.numpy()) == _numbers(LOSSES)  # the first batch's losses are the reference


def test_gradnorm_targets_follow_the_relative_training_rate_and_skip_absent_tasks():
    w = GradNormWeighting(NAMES, alpha=1.0)
    w.combine(LOSSES * NO_GENDER, NO_GENDER, None, grad_norms=np.ones(3, "float32"))
    assert _numbers(w.initial.numpy()) == [2.0, 0.0, 1.0]  # gender has no reference until it is labelled
    # age fell to half its first loss, expression not at all: r = (0.5, 1) / 0.75
    with tf.GradientTape() as tape:
        _, weights, aux = w.combine(np.array([1.0, 0.0, 1.0], "float32"), NO_GENDER, None,
                                    grad_norms=np.ones(3, "float32"))
    assert _numbers(weights) == [1.0, 0.0, 1.0]
    assert float(aux) == pytest.approx(abs(1 - 2 / 3) + abs(1 - 4 / 3), rel=1e-5)
    grad = tape.gradient(aux, w.weights).numpy()
    assert grad[1] == 0 and grad[0] > 0 > grad[2]  # age trains faster: less weight; expression more
    with pytest.raises(ValueError, match="grad_norms"):
        w.combine(LOSSES, ALL, None)


def test_config_choices_are_checked():
    from kfacemtl.training.config import resolve_config
    base = {"sources": ["synthetic:lab?n=8"]}
    with pytest.raises(ConfigError, match="'training.weighting': expected one of"):
        resolve_config({**base, "training": {"weighting": "magic"}})
    with pytest.raises(ConfigError, match="cannot be combined with weighting: dynamic"):
        resolve_config({**base, "training": {"weighting": "dynamic", "loss_weights": {"age": 2.0}}})
    with pytest.raises(ValueError, match=r"^weighting_options: \['speed'\] are not options of 'dwa'"):
        make_weighting("dwa", NAMES, speed=3)
    with pytest.raises(ValueError, match=r"^weighting_options\.alpha: expected >= 0, got -1"):
        make_weighting("gradnorm", NAMES, alpha=-1)


@pytest.mark.parametrize("name", ["dynamic", "uncertainty", "dwa", "gradnorm"])
def test_train_run_logs_plots_and_resumes_the_weighting(tmp_path, name):
    from kfacemtl.models import load_model
    from kfacemtl.training import train_run
    cfg = {"tasks": ["gender", "expression"],
           "sources": ["synthetic:lab?n=64", "synthetic:portraits?n=64"],
           "model": {"widths": [8, 16], "depths": [1, 1], "embedding_dim": 16, "head_units": 8},
           "training": {"epochs": 3, "steps_per_epoch": 3, "batch_size": 16, "weighting": name,
                        "jit_compile": name != "uncertainty"}}  # XLA, as on a GPU (uncertainty: test_distribute)
    out = tmp_path / "run"
    report = train_run(cfg, out, verbose=0)
    header = (out / "history.csv").read_text().splitlines()[0].split(",")
    assert "weight_gender" in header and "weight_expression" in header
    assert "plots/task_weights.png" in report["plots"] and (out / "weighting.npz").exists()
    saved = dict(np.load(out / "weighting.npz"))
    assert load_model(out / "model.keras").weighting is None  # the network alone is saved
    cfg["training"]["epochs"] = 4
    train_run(cfg, out, resume=True, verbose=0)
    resumed = dict(np.load(out / "weighting.npz"))
    assert set(resumed) == set(saved)
    if name == "dwa":  # the fourth epoch's weights come from epochs 2 and 3, restored from the file
        assert resumed["history"].shape == (2, 2)
    if name == "gradnorm":  # the weights moved, stayed normalised, and the reference losses were kept
        assert float(resumed["weights"].sum()) == pytest.approx(2.0, rel=1e-4)
        assert not np.allclose(resumed["weights"], 1.0) and (resumed["initial"] > 0).all()
        assert np.array_equal(resumed["initial"], saved["initial"])


def test_the_callback_restores_a_saved_state_and_resets_the_logged_weights(tmp_path):
    from helpers import tiny_model
    from kfacemtl.training import TaskWeightingCallback
    from kfacemtl.training import compile_model
    model = compile_model(tiny_model(["gender", "expression"]), weighting="uncertainty")
    np.savez(tmp_path / "w.npz", v0=np.array([0.5, -0.25], "float32"))
    cb = TaskWeightingCallback(tmp_path / "w.npz")
    cb.set_model(model)
    cb.on_train_begin()
    assert _numbers(model.weighting.log_vars.numpy()) == [0.5, -0.25]
    model.weight_trackers[0].update_state(3.0)
    assert model.weight_trackers[0] in model.metrics
    model.reset_metrics()  # as fit does at every epoch's start: the logged weights are the epoch's own
    assert float(model.weight_trackers[0].result()) == 0
    cb.on_epoch_end(1, {"gender_loss": 0.7, "expression_loss": 1.9})
    assert _numbers(np.load(tmp_path / "w.npz")["v0"]) == [0.5, -0.25]  # written back atomically
