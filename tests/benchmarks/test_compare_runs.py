"""``python -m benchmarks.compare_runs`` scores runs trained elsewhere against single-task runs, face by face."""
import pytest
import yaml

from helpers import ROOT, real_layout, tiny_model


@pytest.fixture
def runs(tmp_path):
    real_layout(tmp_path / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "real_mtl.yaml").read_text())
    cfg["model"]["input_shape"] = [64, 64, 3]  # tiny_model's
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    tasks = {"age": {}, "expression": {"contempt": True}, "action_units": {}}
    for i, (task, options) in enumerate(tasks.items()):
        (tmp_path / "teachers" / task).mkdir(parents=True)
        tiny_model({task: options}, seed=i).save(tmp_path / "teachers" / task / "model.keras")
    (tmp_path / "student").mkdir()
    tiny_model(tasks, seed=7).save(tmp_path / "student" / "model.keras")
    return tmp_path


@pytest.mark.e2e
def test_rows_on_the_validation_parts_and_the_rule(runs, capsys):
    from benchmarks import compare_runs
    args = ["--data", str(runs / "data"), "--config", str(runs / "tiny.yaml"), "--single-task", str(runs / "teachers"),
            "--multi-task", str(runs / "student")]
    assert compare_runs.main(args + ["--rule-min-faces", "3"]) == 0
    out = capsys.readouterr().out
    assert "utkface-train-val" in out and "ckplus-train-val" in out and "PublicTest" not in out
    assert "delta / half-width" in out and "rule (smallest delta / half-width over rows of >= 3 faces)" in out
    assert compare_runs.main(args + ["--protocol", "test", "--rule-min-faces", "3"]) == 0
    assert "fer2013-PublicTest" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no row has that many faces"):
        compare_runs.main(args + ["--rule-min-faces", "100000"])


def test_runs_that_cannot_be_scored_are_named(runs):
    from benchmarks import compare_runs
    score = lambda config, student: compare_runs.main([  # noqa: E731
        "--data", str(runs / "data"), "--config", str(runs / config), "--single-task", str(runs / "teachers"),
        "--multi-task", str(runs / student)])
    cfg = yaml.safe_load((runs / "tiny.yaml").read_text())
    cfg["model"]["input_shape"] = [48, 48, 3]
    (runs / "other.yaml").write_text(yaml.safe_dump(cfg))
    with pytest.raises(SystemExit, match=r"the model takes \(64, 64\) images"):
        score("other.yaml", "student")
    with pytest.raises(SystemExit, match="nowhere holds no model.keras"):
        score("tiny.yaml", "nowhere")
    (runs / "teachers" / "age" / "model.keras").unlink()
    with pytest.raises(SystemExit, match=r"teachers has no age/model.keras"):
        score("tiny.yaml", "student")


def test_the_rule_skips_small_sets_and_undefined_intervals():
    import doctest

    from benchmarks import compare_runs
    result = doctest.testmod(compare_runs)
    assert result.attempted > 0 and result.failed == 0
    rows = [{"task": "age", "test_set": "a", "n": 5000, "delta": 0.0, "ci95": float("nan")},
            {"task": "gender", "test_set": "a", "n": 5000, "delta": 0.01, "ci95": 0.02}]
    assert compare_runs.rule_value(rows, 1000) == (0.5, "gender a")


@pytest.mark.e2e
def test_batchnorm_statistics_from_one_training_source(runs, capsys):
    from benchmarks import compare_runs
    args = ["--data", str(runs / "data"), "--config", str(runs / "tiny.yaml"), "--single-task", str(runs / "teachers"),
            "--multi-task", str(runs / "student"), "--rule-min-faces", "3"]
    assert compare_runs.main(args + ["--bn-stats-from", "fer2013-Training"]) == 0
    out = capsys.readouterr().out
    as_trained, adapted = out.split("BatchNorm statistics from fer2013-Training (")
    assert "-- " in as_trained and "rule (" in adapted and "batches) against the single-task runs" in adapted
    # the student's predictions change with its statistics: the two tables differ
    assert as_trained.split("\n", 1)[1].split("rule")[0] != adapted.split("\n", 1)[1].split("rule")[0]
    with pytest.raises(SystemExit, match=r"--bn-stats-from: no training source 'lfw'"):
        compare_runs.main(args + ["--bn-stats-from", "lfw"])
