"""``python -m benchmarks.alignment_template`` measures the template on a few real crops."""
import numpy as np
import pytest

from helpers import REAL_DATA


@pytest.mark.e2e
def test_alignment_template_prints_each_set_and_the_symmetric_mean(capsys):
    from benchmarks import alignment_template as bench
    if not (REAL_DATA / "fer2013" / "train").is_dir():
        pytest.skip(f"the real data is not at {REAL_DATA} (set KFACEMTL_DATA)")
    assert bench.main(["--faces", "12", "--data", str(REAL_DATA)]) == 0
    out = capsys.readouterr().out
    assert "12 crops per set (seed 0)" in out and "utkface" in out and "fer2013" in out and "as TEMPLATE" in out
    t = bench.symmetric(np.random.default_rng(0).uniform(0, 1, (5, 2)))
    np.testing.assert_allclose(t[0] * [-1, 1] + [1, 0], t[1])  # the eyes mirror each other
    np.testing.assert_allclose(t[3] * [-1, 1] + [1, 0], t[4])
    assert t[2, 0] == 0.5
