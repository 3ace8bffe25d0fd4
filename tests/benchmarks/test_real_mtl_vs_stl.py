"""``python -m benchmarks.real_mtl_vs_stl`` runs end to end on small data (tiny models, few steps)."""
import json
import shutil

import numpy as np
import yaml

from helpers import ROOT, TINY_MODEL, real_layout


def test_real_mtl_vs_stl_runs_matches_budgets_and_resumes(tmp_path, capsys):
    from benchmarks import real_mtl_vs_stl
    real_layout(tmp_path / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "real_mtl.yaml").read_text())
    cfg["model"].update(input_shape=[24, 24, 3], widths=[8, 16], depths=[1, 1], embedding_dim=16, head_units=8)
    cfg["training"].update(epochs=1, steps_per_epoch=2)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    args = ["--data", str(tmp_path / "data"), "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "runs")]
    assert real_mtl_vs_stl.main(args) == 0
    out = capsys.readouterr().out
    assert "age batch 32, gender batch 32, race batch 32, expression batch 32" in out  # half of 64 each
    result = json.loads((tmp_path / "runs" / "results.json").read_text())
    pairs = [(r["task"], r["test_set"], r["n"]) for r in result["rows"]]
    # 40 faces in 10 gender x race strata of 4: one face of each stratum is held out
    assert pairs == [("age", "utkface-test", 10), ("gender", "utkface-test", 10), ("race", "utkface-test", 10),
                     ("expression", "fer2013-PublicTest", 6), ("expression", "lfw-expressions", 3)]
    for r in result["rows"]:
        assert np.isfinite([r["stl"], r["mtl"], r["delta"]]).all()
    stl = yaml.safe_load((tmp_path / "runs" / "single-task_expression" / "config.yaml").read_text())
    assert stl["training"]["batch_size"] == 32 and stl["sources"] == [cfg["sources"][1].replace(
        "../shared/data", str(tmp_path / "data"))]
    before = (tmp_path / "runs" / "multi-task" / "model.keras").stat().st_mtime
    assert real_mtl_vs_stl.main(args) == 0  # finished runs are reused, not retrained
    assert (tmp_path / "runs" / "multi-task" / "model.keras").stat().st_mtime == before
    shutil.rmtree(tmp_path / "data" / "fer2013")
    assert real_mtl_vs_stl.main(args) == 0 and "real data not found" in capsys.readouterr().out


def test_real_mtl_vs_stl_seeds_set_every_run_and_are_summarised(tmp_path, capsys):
    from benchmarks import real_mtl_vs_stl
    real_layout(tmp_path / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "real_mtl.yaml").read_text())
    cfg["tasks"] = {"gender": {}, "expression": {"contempt": True}}
    cfg["model"].update(TINY_MODEL)
    cfg["training"].update(epochs=1, steps_per_epoch=2)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    args = ["--data", str(tmp_path / "data"), "--config", str(tmp_path / "tiny.yaml")]
    assert real_mtl_vs_stl.main(args + ["--out", str(tmp_path / "one"), "--seeds", "3"]) == 0
    runs = sorted(p.name for p in (tmp_path / "one").iterdir() if p.is_dir())
    assert runs == ["multi-task", "single-task_expression", "single-task_gender"]  # one seed: no seed folder
    for name in runs:
        assert yaml.safe_load((tmp_path / "one" / name / "config.yaml").read_text())["training"]["seed"] == 3
    capsys.readouterr()
    assert real_mtl_vs_stl.main(args + ["--out", str(tmp_path / "two"), "--seeds", "3", "4"]) == 0
    assert "seeds 3, 4 (mean ± std over seeds)" in capsys.readouterr().out
    assert yaml.safe_load((tmp_path / "two" / "seed4" / "multi-task" / "config.yaml").read_text())["training"][
        "seed"] == 4
    per_seed = json.loads((tmp_path / "two" / "results_seeds.json").read_text())
    assert sorted(per_seed) == ["3", "4"]
    for seed in ("3", "4"):
        assert per_seed[seed] == json.loads((tmp_path / "two" / f"seed{seed}" / "results.json").read_text())["rows"]
    assert [r["task"] for r in per_seed["4"]] == ["gender", "expression", "expression"]


def test_real_mtl_vs_stl_table_over_seeds():
    from benchmarks.real_mtl_vs_stl import format_seeds
    row = lambda stl, mtl: {"task": "gender", "test_set": "utk", "metric": "accuracy", "stl": stl, "mtl": mtl,  # noqa
                            "delta": mtl - stl}
    text = format_seeds({0: [row(0.8, 0.9)], 1: [row(0.8, 0.7)], 2: [row(0.9, 0.95)]})
    line = text.splitlines()[-1].split("  ")
    cells = [c.strip() for c in line if c.strip()]
    # deltas +0.1, -0.1, +0.05: mean 0.0167, std 0.1041; stl 0.8333 ± 0.0577; mtl 0.85 ± 0.1323
    assert cells == ["gender", "utk", "accuracy", "0.8333 ± 0.0577", "0.8500 ± 0.1323", "+0.0167 ± 0.1041", "2 of 3"]
