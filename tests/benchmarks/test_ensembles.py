"""``python -m benchmarks.ensembles`` scores trained runs alone and as ensembles on one set."""
import numpy as np
import pytest

from helpers import tiny_model


@pytest.fixture
def runs(tmp_path):
    for i in range(3):
        (tmp_path / f"r{i}").mkdir()
        tiny_model(["gender", "age"], seed=i).save(tmp_path / f"r{i}" / "model.keras")
    return [str(tmp_path / f"r{i}") for i in range(3)]


@pytest.mark.e2e
def test_each_model_and_every_ensemble_of_k(runs, capsys):
    from benchmarks import ensembles
    assert ensembles.main(runs + ["--source", "synthetic:portraits?n=12", "--tasks", "gender"]) == 0
    out = capsys.readouterr().out
    assert "portraits" in out and "12 faces" in out
    assert "ensembles of 2 (3)" in out and "ensembles of 3 (1)" in out and "age" not in out
    assert ensembles.main(runs[:2] + ["--source", "synthetic:portraits?n=12", "--max-combinations", "1",
                                      "--tta", "flip"]) == 0
    out = capsys.readouterr().out
    assert "views: flip" in out and "mae" in out and "accuracy" in out


def test_an_ensemble_is_the_mean_of_its_models_answers():
    from benchmarks.ensembles import ensemble_scores
    from kfacemtl.tasks import get_task
    age, y = get_task("age"), np.array([20.0, 40.0])
    a, b = ({"age": (age, y, np.array([[p], [q]]))} for p, q in ((10.0, 50.0), (30.0, 30.0)))
    assert ensemble_scores([a, b], "age") == [(1, [10.0, 10.0]), (2, [0.0])]
    with pytest.raises(ValueError, match="different faces"):
        ensemble_scores([a, {"age": (age, y[::-1], a["age"][2])}], "age")


def test_bad_requests_are_named(runs):
    from benchmarks import ensembles
    with pytest.raises(SystemExit):
        ensembles.main(runs[:1] + ["--source", "synthetic:portraits?n=4"])
    with pytest.raises(SystemExit):
        ensembles.main(runs + ["--source", "synthetic:portraits?n=4", "--tasks", "race"])
