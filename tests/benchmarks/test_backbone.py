"""``python -m benchmarks.backbone`` runs end to end on small data (tiny models, few steps)."""
import json

import numpy as np
import pytest
import yaml

from helpers import ROOT, real_layout


@pytest.mark.e2e
def test_backbone_benchmark_trains_variants_for_equal_time_and_compares_them(tmp_path, capsys):
    from benchmarks import backbone
    real_layout(tmp_path / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "real_utk_fer.yaml").read_text())
    cfg["model"].update(input_shape=[24, 24, 3], widths=[8, 16], depths=[2, 1], embedding_dim=16, head_units=8)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    args = ["--data", str(tmp_path / "data"), "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "bb"),
            "--steps", "4", "--repeats", "1", "--timing-steps", "2", "--variant", 'shallow={"depths": [1, 1]}']
    assert backbone.main(args) == 0
    out = capsys.readouterr().out
    assert "equal wall time" in out and "shallow: model overrides" in out
    r = json.loads((tmp_path / "bb" / "results.json").read_text())
    default, shallow = r["networks"]["default"], r["networks"]["shallow"]
    assert default["steps"] == 4 and shallow["forward_flops"] < default["forward_flops"]
    assert shallow["steps"] == round(4 * shallow["images_per_s"] / default["images_per_s"])  # equal time, in steps
    report = json.loads((tmp_path / "bb" / "shallow" / "report.json").read_text())
    assert abs(report["epochs_done"] * report["steps_per_epoch"] - shallow["steps"]) < report["epochs_done"]
    assert set(r["metrics"]["shallow"]) == {"age utkface-test", "gender utkface-test", "race utkface-test",
                                            "expression fer2013-PublicTest", "expression lfw-expressions"}
    assert all(np.isfinite(m["value"]) for m in r["metrics"]["shallow"].values())
    before = (tmp_path / "bb" / "shallow" / "model.keras").stat().st_mtime
    assert backbone.main(args) == 0  # the same speeds and budgets: finished runs are reused, not retrained
    assert json.loads((tmp_path / "bb" / "results.json").read_text())["networks"] == r["networks"]
    assert (tmp_path / "bb" / "shallow" / "model.keras").stat().st_mtime == before
    assert backbone.main(["--data", str(tmp_path / "none")]) == 0 and "real data not found" in capsys.readouterr().out
