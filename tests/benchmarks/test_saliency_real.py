"""``python -m benchmarks.saliency_real`` scores where each method's maps fall on real CK+ faces."""
import pytest

from helpers import REAL_DATA, tiny_model


@pytest.mark.e2e
def test_saliency_real_benchmark_scores_methods_and_layers_on_ckplus(tmp_path, capsys):
    from benchmarks import saliency_real as bench
    if not (REAL_DATA / "ckplus_au" / "labels.csv").is_file():
        pytest.skip(f"the real data is not at {REAL_DATA} (set KFACEMTL_DATA)")
    tiny_model(["expression"]).save(tmp_path / "m.keras")
    assert bench.main([str(tmp_path / "m.keras"), "--data", str(REAL_DATA), "--split", "test",
                       "--layers", "block2_relu1"]) == 0
    out = capsys.readouterr().out
    assert "CK+ test subjects, 32 peak frames with a face found (of 32)" in out
    for row in ("saliency   (input gradients)", "gradcam++  block2_relu1", "scorecam   block2_relu1"):
        assert row in out
