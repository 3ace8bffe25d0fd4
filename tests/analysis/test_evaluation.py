import numpy as np
import pytest

from kfacemtl.analysis.evaluation import (classification_metrics, concordance_cc, format_table, multilabel_metrics,
                                 regression_metrics)
from kfacemtl.tasks import get_task, resolve_tasks


def test_classification_metrics_hand_computed():
    y = np.array([0, 0, 1, 2])
    probs = np.eye(3)[[0, 1, 1, 1]]
    m = classification_metrics(y, probs)
    assert m["accuracy"] == 0.5 and m["n"] == 4
    # F1: class0 = 2*1/(2+0+1) = 2/3, class1 = 2*1/(2+2+0) = 1/2, class2 = 0
    assert m["macro_f1"] == pytest.approx((2 / 3 + 0.5 + 0) / 3)
    assert m["confusion"] == [[1, 1, 0], [0, 1, 0], [0, 1, 0]]


def test_regression_ccc_and_multilabel():
    m = regression_metrics(np.array([[10.0], [20.0]]), np.array([[12.0], [16.0]]))
    assert m["mae"] == 3.0 and m["rmse"] == pytest.approx(np.sqrt(10))
    assert concordance_cc(np.array([1.0, 2, 3]), np.array([2.0, 3, 4])) == pytest.approx(2 * (2 / 3) / (4 / 3 + 1))
    va = regression_metrics(np.array([[0.1, 0.2], [0.5, -0.2], [0.9, 0.0]]),
                            np.array([[0.1, 0.2], [0.5, -0.2], [0.9, 0.0]]), ["valence", "arousal"], ccc=True)
    assert va["mean_ccc"] == pytest.approx(1.0) and va["valence_mae"] == 0
    ml = multilabel_metrics(np.array([[1, 0], [1, 0], [0, 0]]), np.array([[0.9, 0.1], [0.2, 0.1], [0.6, 0.2]]),
                            ["AU1", "AU2"])
    assert ml["f1_AU1"] == pytest.approx(0.5) and ml["mean_f1"] == pytest.approx(0.5)  # AU2 never occurs


def test_table_lists_sources_and_headline_metrics():
    text = format_table({"a": {"gender": {"accuracy": 0.75, "n": 4}}, "b": {}},
                        [get_task("gender"), get_task("age")])
    assert "gender acc" in text and "age MAE" in text and "0.750 (4)" in text
    assert text.splitlines()[-1].split() == ["b", "-", "-"]


def test_compare_results_signs_every_metric_so_positive_means_better():
    from kfacemtl.analysis.evaluation import compare_results
    tasks = resolve_tasks(["age", "gender", "action_units", "valence_arousal"])
    base = {"a": {"age": {"mae": 5.0, "n": 3}, "gender": {"accuracy": 0.8, "n": 3}},
            "b": {"action_units": {"mean_f1": 0.4, "n": 2}, "valence_arousal": {"mean_ccc": 0.5, "n": 2}}}
    new = {"a": {"age": {"mae": 6.0, "n": 3}, "gender": {"accuracy": 0.9, "n": 3}},
           "b": {"action_units": {"mean_f1": 0.3, "n": 2}, "valence_arousal": {"mean_ccc": 0.7, "n": 2}},
           "c": {"gender": {"accuracy": 1.0, "n": 1}}}  # no baseline for c: left out
    rows = {(r["task"], r["source"]): r["delta"] for r in compare_results(base, new, tasks)}
    assert rows == pytest.approx({("age", "a"): -1.0, ("gender", "a"): 0.1, ("action_units", "b"): -0.1,
                                  ("valence_arousal", "b"): 0.2})


def test_tta_flip_evaluates_the_mean_of_the_face_and_its_mirror():
    from helpers import tiny_model
    from kfacemtl.analysis.evaluation import evaluate_sources, labelled_predictions, task_metrics
    from kfacemtl.data import make_dataset, make_source
    model = tiny_model(["age", "gender"])
    source = make_source("synthetic:portraits?split=test&n=12")
    tasks = resolve_tasks(["age", "gender"])
    x = np.concatenate([b[0].numpy() for b in make_dataset([source], tasks, batch_size=5, image_size=(64, 64),
                                                           training=False)])
    both = [(p.numpy() + m.numpy()) / 2 for p, m in zip(model(x, training=False), model(x[:, :, ::-1], training=False))]
    out = labelled_predictions(model, source, batch_size=5, tta="flip")  # 12 faces: batches of 5, 5 and 2
    labels, weights = source.labels(tasks)
    for task, expected in zip(tasks, both):
        rows = weights[task.name] > 0
        np.testing.assert_allclose(out[task.name][2], expected[rows], rtol=1e-5, atol=1e-5)
    results = evaluate_sources(model, [source], tta="flip", batch_size=5)
    assert results["portraits-test"]["gender"]["accuracy"] == pytest.approx(
        task_metrics(tasks[1], labels["gender"][weights["gender"] > 0], both[1][weights["gender"] > 0])["accuracy"])
    plain = labelled_predictions(model, source, batch_size=5)
    assert not np.allclose(plain["age"][2], out["age"][2])
