"""Temperature scaling: the heads' temperatures, fitting them, saving and exporting them, the commands."""
import json

import numpy as np
import pytest
import yaml

from helpers import tiny_model
from kfacemtl.analysis.calibration import averaged, calibrate, fit_temperature, nll, rescaled
from kfacemtl.analysis.evaluation import expected_calibration_error, reliability
from kfacemtl.data import make_dataset, make_source
from kfacemtl.data.registry import validation_spec
from kfacemtl.models import load_model

X = np.random.default_rng(0).random((6, 64, 64, 3)).astype("float32")


def test_a_temperature_softens_the_probabilities_outside_training_only_and_keeps_the_classes():
    model = tiny_model(["gender", "expression", "age"])
    before = model.predict_dict(X, verbose=0)
    model.set_temperatures({"expression": 3.0})
    after = model.predict_dict(X, verbose=0)
    np.testing.assert_allclose(after["expression"], rescaled(before["expression"], 3.0), atol=1e-5)
    assert (after["expression"].argmax(1) == before["expression"].argmax(1)).all()
    assert after["expression"].max(1).mean() < before["expression"].max(1).mean()  # less sure
    np.testing.assert_allclose(after["gender"], before["gender"], atol=1e-6)  # other heads as they were
    head = model.task_output("expression")  # the training step sees the head's own probabilities
    h = np.random.default_rng(1).normal(size=(4, head.kernel.shape[0])).astype("float32")
    trained, served = head(h, training=True).numpy(), head(h, training=False).numpy()
    model.set_temperatures({"expression": 1.0})
    np.testing.assert_allclose(head(h, training=True).numpy(), trained, atol=1e-6)
    np.testing.assert_allclose(served, rescaled(trained, 3.0), atol=1e-5)
    with pytest.raises(ValueError, match="temperatures: 'age' is not a classification head"):
        model.set_temperatures({"age": 2.0})
    with pytest.raises(ValueError, match="temperature: expected a positive number; got -1"):
        model.set_temperatures({"gender": -1})


def test_temperatures_are_saved_with_the_model_and_exported_in_both_signatures(tmp_path):
    import tensorflow as tf
    from kfacemtl.serving import export_model
    model = tiny_model(["gender", "expression"])
    model.set_temperatures({"gender": 0.5, "expression": 2.5})
    expected = model.predict_dict(X, verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = load_model(tmp_path / "m.keras")
    assert loaded.temperatures == {"gender": 0.5, "expression": 2.5}
    np.testing.assert_allclose(loaded.predict_dict(X, verbose=0)["expression"], expected["expression"], atol=1e-6)
    exported = tf.saved_model.load(str(export_model(model, tmp_path / "models", "faces", warmup=False)))
    out = exported.signatures["serving_float"](images=tf.constant(X))
    np.testing.assert_allclose(out["expression_probs"].numpy(), expected["expression"], atol=1e-5)
    pixels = np.round(X * 255).astype(np.uint8)
    out = exported.signatures["serving_default"](images=tf.constant([tf.io.encode_png(p).numpy() for p in pixels]))
    np.testing.assert_allclose(out["gender_probs"].numpy(),
                               model.predict_dict(pixels / np.float32(255), verbose=0)["gender"], atol=1e-4)


def test_fitting_finds_over_and_under_confidence_and_never_loses_likelihood():
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 2, (3000, 4))
    truth = rescaled(np.exp(logits) / np.exp(logits).sum(1, keepdims=True), 1.0)
    labels = np.array([rng.choice(4, p=p) for p in truth])
    for true_t in (0.4, 2.5):  # probabilities too soft, too sharp
        probs = rescaled(truth, 1 / true_t)
        t = fit_temperature(labels, probs)
        assert abs(np.log(t / true_t)) < 0.08, (t, true_t)
        assert nll(labels, rescaled(probs, t)) <= nll(labels, probs) + 1e-9
        assert expected_calibration_error(labels, rescaled(probs, t)) < 0.03 < expected_calibration_error(labels, probs)
    with pytest.raises(ValueError, match="y_true: no labelled faces"):
        fit_temperature([], np.zeros((0, 2)))


def test_fitting_to_averaged_views_calibrates_the_average_where_one_views_temperature_does_not():
    # each face seen twice, each view sharpened and pushed its own way: every view over-confident alone, their
    # mean (the answer test-time augmentation gives) less so; T fitted to the mean calibrates the mean
    rng = np.random.default_rng(3)
    logits = rng.normal(0, 1.5, (4000, 3))
    labels = np.array([rng.choice(3, p=p) for p in rescaled(np.exp(logits), 1.0)])
    push = rng.normal(0, 1.0, (4000, 3))
    views = np.stack([rescaled(np.exp(2 * logits + push), 1.0), rescaled(np.exp(2 * logits - push), 1.0)])
    one, both = fit_temperature(labels, views[0]), fit_temperature(labels, views)
    assert averaged(views).shape == (4000, 3) and both != pytest.approx(one, rel=0.05)
    mean_at = lambda t: averaged(rescaled(views, t))  # noqa: E731
    assert expected_calibration_error(labels, mean_at(both)) < 0.02 < expected_calibration_error(labels, mean_at(one))
    assert nll(labels, mean_at(both)) < nll(labels, mean_at(one))


def test_calibrating_with_views_fits_what_the_model_answers_with_them(monkeypatch):
    from kfacemtl.analysis import evaluation
    from kfacemtl.analysis.evaluation import labelled_predictions
    model = tiny_model(["gender", "age"])
    source = make_source("synthetic:portraits?n=64")
    # an untrained model knows nothing of the faces' genders: label them with its own answers, a quarter flipped,
    # so that its answers are worth a finite temperature
    own = labelled_predictions(model, source)["gender"][2].argmax(1)
    flipped = np.where(np.random.default_rng(0).random(len(own)) < 0.25, 1 - own, own)
    labels_of = source.labels
    source.labels = lambda tasks: ({**labels_of(tasks)[0], "gender": flipped}, labels_of(tasks)[1])
    datasets = []  # the faces are read once for both views
    monkeypatch.setattr(evaluation, "make_dataset", lambda *a, **k: datasets.append(a) or make_dataset(*a, **k))
    report = calibrate(model, [source], image_size=(64, 64), tta="flip")
    assert report["gender"]["tta"] == "flip" and report["age"]["tta"] == "flip" and len(datasets) == 1
    task, y, p = labelled_predictions(model, source, tta="flip")["gender"]  # the model's answers with flip, now
    assert expected_calibration_error(y, p) == pytest.approx(report["gender"]["ece_after"], abs=1e-5)
    assert nll(y, p) == pytest.approx(report["gender"]["nll_after"], abs=1e-5)
    plain = calibrate(model, [source], image_size=(64, 64))  # refitted without views: another temperature
    assert plain["gender"]["tta"] == "none" and plain["gender"]["temperature"] != pytest.approx(
        report["gender"]["temperature"], rel=0.01)
    assert 0.1 < plain["gender"]["temperature"] < 10 and 0.1 < report["gender"]["temperature"] < 10


def test_reliability_bins_cover_every_face():
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.ones(3), 500)
    r = reliability(rng.integers(0, 3, 500), probs, bins=10)
    assert sum(r["count"]) == 500 and all(1 / 3 <= c <= 1 for c in r["confidence"])


def test_calibrate_fits_on_the_sources_and_refits_a_calibrated_model_from_its_own_scale():
    model = tiny_model(["gender", "expression", "age"])
    sources = [make_source("synthetic:portraits?n=48"), make_source("synthetic:lab?n=48")]
    report = calibrate(model, sources, image_size=(64, 64))
    assert set(report) == {"gender", "expression", "age"} and report["gender"]["n"] == 48
    for name in ("gender", "expression"):
        assert report[name]["nll_after"] <= report[name]["nll_before"] + 1e-9 and 0 < report[name]["temperature"]
    again = calibrate(model, sources, image_size=(64, 64))  # from the uncalibrated outputs: the same fit
    for name in ("gender", "expression"):
        assert again[name]["temperature"] == pytest.approx(report[name]["temperature"], rel=1e-3)
        assert again[name]["ece_before"] == pytest.approx(report[name]["ece_before"], abs=1e-6)
    with pytest.raises(ValueError, match="sources: none labels a head to calibrate"):
        calibrate(model, [make_source("synthetic:affect?n=8&tasks=valence_arousal")])


def test_validation_parts_of_training_specs():
    assert validation_spec("utkface:x/UTKFace?split=train&val_fraction=0.1") == (
        "utkface:x/UTKFace?split=train&val_fraction=0.1&part=val")
    assert validation_spec({"spec": "synthetic:lab", "val_fraction": 0.2}) == {"spec": "synthetic:lab",
                                                                              "val_fraction": 0.2, "part": "val"}
    assert validation_spec("synthetic:lab?n=4") is None
    val = make_source(validation_spec("synthetic:lab?n=40&val_fraction=0.25"))
    assert val.name == "lab-train-val" and len(val) == 10


def test_calibrate_and_evaluate_commands(tmp_path, capsys):
    from kfacemtl.cli import main
    from kfacemtl.training import train_run
    cfg = {"tasks": ["gender", "expression"],
           "sources": ["synthetic:lab?n=64&val_fraction=0.25", "synthetic:portraits?n=64&val_fraction=0.25"],
           "eval_sources": ["synthetic:street?split=test&n=16"],
           "model": {"input_shape": [24, 24, 3], "widths": [8, 16], "depths": [1, 1], "embedding_dim": 16,
                     "head_units": 8},
           "training": {"epochs": 1, "steps_per_epoch": 3, "batch_size": 16}}
    run = tmp_path / "run"
    train_run(cfg, run, verbose=0)
    before = (run / "model.keras").read_bytes()
    assert main(["calibrate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "task        faces  temperature  ECE before  ECE after" in out
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["sources"] == [s + "&part=val" for s in cfg["sources"]] and set(saved["tasks"]) == {"gender",
                                                                                                      "expression"}
    assert (run / "model.keras").read_bytes() != before and (run / "plots" / "reliability_gender.png").exists()
    assert (run / "model_uncalibrated.keras").read_bytes() == before  # the model as trained is kept
    temperatures = load_model(run / "model.keras").temperatures
    assert temperatures["gender"] == pytest.approx(saved["tasks"]["gender"]["temperature"])
    assert main(["evaluate", str(run), "--plots", str(tmp_path / "rel")]) == 0
    out = capsys.readouterr().out
    assert "calibration (expected calibration error" in out and f"{temperatures['gender']:.3f}" in out
    assert sorted(p.name for p in (tmp_path / "rel").iterdir()) == ["reliability_street-test_expression.png",
                                                                   "reliability_street-test_gender.png"]
    assert main(["calibrate", str(run), "--tta", "flip", "--out", str(tmp_path / "flip" / "model.keras")]) == 0
    assert json.loads((tmp_path / "flip" / "calibration.json").read_text())["tasks"]["gender"]["tta"] == "flip"
    plain = dict(cfg, sources=["synthetic:lab?n=32"])
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "config.yaml").write_text(yaml.safe_dump(plain))
    (tmp_path / "plain" / "model.keras").write_bytes((run / "model.keras").read_bytes())
    assert main(["calibrate", str(tmp_path / "plain")]) == 2
    assert "holds a validation part out (val_fraction)" in capsys.readouterr().err


def test_an_age_interval_covers_what_it_promises_and_travels_with_the_model(tmp_path):
    import tensorflow as tf
    from kfacemtl.analysis.calibration import fit_interval
    from kfacemtl.analysis.evaluation import evaluate_sources
    from kfacemtl.serving import export_model
    from kfacemtl.tasks import get_task
    age = get_task("age")
    rng = np.random.default_rng(3)
    pred = rng.uniform(2, 80, 4000)
    truth = np.clip(pred + rng.standard_t(4, 4000) * 0.1 * (pred + 12), 0, 120)  # heavy tails, error grows with age
    q = fit_interval(age, truth[:2000], pred[:2000], coverage=0.9)
    from kfacemtl.analysis.evaluation import interval_metrics
    held_out = interval_metrics(age, truth[2000:], pred[2000:], q)["interval_coverage"]
    assert 0.87 <= held_out <= 0.93, held_out  # on faces it was not fitted on
    assert interval_metrics(age, truth[2000:], pred[2000:], fit_interval(age, truth[:2000], pred[:2000], 0.5))[
        "interval_coverage"] < 0.6
    with pytest.raises(ValueError, match="coverage: expected a share between 0 and 1"):
        fit_interval(age, truth, pred, coverage=90)
    model = tiny_model(["age", "gender"])
    report = calibrate(model, [make_source("synthetic:portraits?n=64")], image_size=(64, 64), coverage=0.8)
    assert report["age"]["coverage_target"] == 0.8 and report["age"]["interval_coverage"] >= 0.8
    assert model.intervals["age"] == tuple(report["age"]["interval"])
    results = evaluate_sources(model, [make_source("synthetic:portraits?n=64")], image_size=(64, 64))
    assert results["portraits-train"]["age"]["interval_coverage"] == pytest.approx(report["age"]["interval_coverage"])
    model.save(tmp_path / "m.keras")
    assert load_model(tmp_path / "m.keras").intervals == model.intervals
    out = tf.saved_model.load(str(export_model(model, tmp_path / "models", "faces", warmup=False))).signatures[
        "serving_float"](images=tf.constant(X))
    low, high = out["age_interval"].numpy().T
    assert np.all(low <= out["age"].numpy() + 1e-4) and np.all(out["age"].numpy() <= high + 1e-4)
    with pytest.raises(ValueError, match="intervals: 'gender' is not a single-value regression head"):
        model.set_intervals({"gender": (-1, 1)})
