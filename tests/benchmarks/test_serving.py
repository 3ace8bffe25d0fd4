"""``python -m benchmarks.serving`` runs end to end on small data (tiny models, few steps)."""
import pytest


@pytest.mark.e2e
def test_serving_benchmark_times_signatures_single_task_models_and_decoding(capsys):
    from benchmarks import serving
    assert serving.main(["--seconds", "0.02", "--image-size", "32", "--jpeg-size", "48", "--streams", "2",
                         "--tasks", "gender,age"]) == 0
    out = capsys.readouterr().out
    for row in ("(a) SavedModel bytes signature", "(a) bytes signature, JPEGs of 12 sizes (36-58 px)",
                "(b) SavedModel float signature", "(c) keras model.predict",
                "(d) 2 single-task models", "decoding alone"):
        assert f"| {row}" in out, row
    assert "(b)/(d) [target ≥ 1.6]" in out and "(a)/(b) [target ≥ 0.90]" in out and "2 streams" in out
