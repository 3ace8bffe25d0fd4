"""``python -m benchmarks.ablation_weighting_lr`` runs end to end on small data (tiny models, few steps)."""
import json

import numpy as np
import pytest
import yaml

from helpers import ROOT, TINY_MODEL, real_layout


@pytest.mark.e2e
def test_ablation_compares_variants_with_single_task_baselines_over_seeds(tmp_path, monkeypatch, capsys):
    from benchmarks import ablation_weighting_lr as ablation
    monkeypatch.setattr(ablation, "SYNTHETIC_MODEL", TINY_MODEL)
    four_tasks = ablation.synthetic_config

    def two_tasks(*a, **k):  # a task of the portraits and one of the lab: two single-task baselines a seed
        cfg = four_tasks(*a, **k)
        assert cfg["tasks"] == ["age", "gender", "race", "expression"]
        assert [s.split("?")[0] for s in cfg["eval_sources"][:2]] == ["synthetic:portraits", "synthetic:lab"]
        return {**cfg, "tasks": ["race", "expression"], "eval_sources": cfg["eval_sources"][:2]}  # their test sets
    monkeypatch.setattr(ablation, "synthetic_config", two_tasks)
    args = ["--settings", "synthetic", "--seeds", "0", "1", "--synthetic-steps", "4", "--synthetic-faces", "64",
            "--synthetic-test-faces", "32",
            "--variants", "equal", "gradnorm", "--out", str(tmp_path / "runs")]
    assert ablation.main(args) == 0
    out = capsys.readouterr().out
    assert "synthetic: seeds 0, 1 (mean ± std)" in out and "Δ vs single-task %" in out and "(paired)" in out
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in results] == [("equal", 0), ("gradnorm", 0), ("equal", 1), ("gradnorm", 1)]
    for r in results:
        assert np.isfinite(r["relative_change"]) and set(r["per_task"]) == {"race", "expression"}
    seed0 = tmp_path / "runs" / "synthetic" / "seed0"
    assert sorted(p.name for p in seed0.glob("single-task_*")) == ["single-task_expression", "single-task_race"]
    stl = yaml.safe_load((seed0 / "single-task_race" / "config.yaml").read_text())
    assert stl["tasks"] == ["race"] and stl["training"]["batch_size"] == 16  # portraits: a quarter of 64
    assert yaml.safe_load((seed0 / "gradnorm" / "config.yaml").read_text())["training"]["weighting"] == "gradnorm"
    assert (tmp_path / "runs" / "synthetic.png").exists()
    before = (seed0 / "gradnorm" / "model.keras").stat().st_mtime
    saved = seed0 / "gradnorm" / "config.yaml"  # finished under another jit_compile (how it ran, not what)
    saved.write_text(saved.read_text().replace("jit_compile: auto", "jit_compile: false"))
    assert ablation.main(args) == 0  # finished runs are reused
    assert (seed0 / "gradnorm" / "model.keras").stat().st_mtime == before
    extra = 'slow grow={"lr_schedule": "dynamic", "dynamic_lr_options": {"grow_after": 2}}'
    assert ablation.main(args[:-5] + ["--variants", "gradnorm", "--variant", extra, "--reference", "slow grow",
                                      "--out", str(tmp_path / "runs")]) == 0
    assert "Δ - slow grow's Δ (paired)" in capsys.readouterr().out
    slow = yaml.safe_load((seed0 / "slow_grow" / "config.yaml").read_text())["training"]
    assert slow["lr_schedule"] == "dynamic" and slow["dynamic_lr_options"] == {"grow_after": 2}
    monkeypatch.setattr(ablation, "VARIANTS", {**ablation.VARIANTS, "gradnorm": {"weighting": "dwa"}})
    with pytest.raises(SystemExit, match="finished run of another config"):
        ablation.main(args)


@pytest.mark.e2e
def test_ablation_real_setting_evaluates_runs_whose_report_has_no_test_sets(tmp_path, capsys):
    from benchmarks import ablation_weighting_lr as ablation
    real_layout(tmp_path / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "real_utk_fer.yaml").read_text())
    cfg["tasks"] = {"gender": {}, "expression": {"contempt": True}}  # a task of each source: two baselines
    cfg["model"].update(TINY_MODEL)
    cfg["training"].update(epochs=1, steps_per_epoch=2)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    args = ["--settings", "real", "--variants", "dynamic", "--data", str(tmp_path / "data"),
            "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "runs")]
    assert ablation.main(args) == 0
    folder = tmp_path / "runs" / "real" / "seed0" / "dynamic"
    report = json.loads((folder / "report.json").read_text())
    assert set(report["evaluation"]) == {"utkface-test", "fer2013-PublicTest", "lfw-expressions"}
    # a run trained elsewhere without test sets (as real_mtl_vs_stl.py trains) is evaluated here, once
    report["evaluation"] = {}
    (folder / "report.json").write_text(json.dumps(report))
    first = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert ablation.main(args) == 0
    assert (folder / "ablation_scores.json").exists()
    second = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert second[0]["per_task"] == pytest.approx(first[0]["per_task"])
    assert "real: seeds 0" in capsys.readouterr().out
