"""``python -m benchmarks.real_mtl_vs_stl`` runs end to end on small data (tiny models, few steps)."""
import json
import shutil

import numpy as np
import pytest
import yaml

from helpers import ROOT, TINY_MODEL, real_layout, tiny_model
from kfacemtl.training.config import resolve_config


@pytest.fixture
def tiny_config(tmp_path):
    real_layout(tmp_path / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "real_mtl.yaml").read_text())
    cfg["tasks"] = {"age": {}, "expression": {"contempt": True}, "action_units": {}}  # a source each: 3 teachers
    cfg["model"]["branches"] = {"face": ["age"], "expression": ["expression", "action_units"]}
    cfg["model"].update(TINY_MODEL, widths=[8, 8, 8, 8], depths=[1, 1, 1, 1])
    cfg["training"].update(epochs=1, steps_per_epoch=2)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return ["--data", str(tmp_path / "data"), "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "runs")]


@pytest.mark.e2e
def test_choosing_on_validation_parts_then_reporting_on_fresh_seeds(tmp_path, tiny_config, capsys):
    from benchmarks import real_mtl_vs_stl
    runs = tmp_path / "runs"
    assert real_mtl_vs_stl.main(tiny_config + ["--variants", "branch+bam"]) == 0
    out = capsys.readouterr().out
    assert "protocol val (choosing settings: validation parts, development seeds)" in out
    result = json.loads((runs / "results_val.json").read_text())
    assert result["seeds"] == [0] and sorted(result["rows"]) == ["branch+bam"]
    sets = {(r["task"], r["test_set"]) for r in result["rows"]["branch+bam"]["0"]}
    assert ("age", "utkface-train-val") in sets and ("action_units", "ckplus-train-val") in sets
    assert all(s.endswith("-val") for _, s in sets)  # never a test set while choosing
    # equal budgets: each single-task model gets its task's share of the 64 faces, mixed as in the multi-task model
    stl = {t: yaml.safe_load((runs / "seed0" / f"single-task_{t}" / "config.yaml").read_text())["training"]
           for t in ("age", "expression", "action_units")}
    assert [stl[t]["batch_size"] for t in ("age", "expression", "action_units")] == [29, 35, 6]
    assert stl["expression"]["mixing"] == {"fer2013-Training": pytest.approx(0.45), "ckplus-train": pytest.approx(0.1)}
    student = yaml.safe_load((runs / "seed0" / "multi-task_branch_bam" / "config.yaml").read_text())
    assert student["distillation"]["anneal"] and set(student["distillation"]["teachers"]) == {
        "age", "expression", "action_units"}
    assert student["model"]["branch_at"] == 3 and student["model"]["branches"]["expression"] == [
        "expression", "action_units"]
    assert "+ teachers" in out  # the student's time counts its teachers'
    for r in result["rows"]["branch+bam"]["0"]:
        assert np.isfinite([r["stl"], r["mtl"], r["delta"]]).all() or r["task"] == "action_units"
    before = (runs / "seed0" / "multi-task_branch_bam" / "model.keras").stat().st_mtime
    with pytest.raises(SystemExit, match=r"--seeds \[0\] chose settings"):
        real_mtl_vs_stl.main(tiny_config + ["--protocol", "test", "--seeds", "0", "7"])
    assert real_mtl_vs_stl.main(tiny_config + ["--variants", "branch+bam"]) == 0  # finished runs are reused
    assert (runs / "seed0" / "multi-task_branch_bam" / "model.keras").stat().st_mtime == before
    capsys.readouterr()
    assert real_mtl_vs_stl.main(tiny_config + ["--protocol", "test", "--seeds", "7"]) == 0
    assert "reporting: test sets, seeds never used to choose anything" in capsys.readouterr().out
    rows = json.loads((runs / "results_test.json").read_text())["rows"]["recipe"]["7"]
    recipe = yaml.safe_load((runs / "seed7" / "multi-task_recipe" / "config.yaml").read_text())["distillation"]
    assert recipe["teachers"] == {t: str(runs / "seed7" / f"single-task_{t}") for t in ("age", "expression",
                                                                                       "action_units")}
    assert {r["test_set"] for r in rows} == {"utkface-test", "fer2013-PublicTest", "lfw-expressions", "ckplus-test"}
    assert any(r["task"] == "action_units" and r["metric"] == "mean_f1" for r in rows)
    with pytest.raises(SystemExit, match="unknown variant 'bigger'"):
        real_mtl_vs_stl.main(tiny_config + ["--variants", "plain+bigger"])
    shutil.rmtree(tmp_path / "data" / "ckplus_au")
    assert real_mtl_vs_stl.main(tiny_config) == 0 and "real data not found" in capsys.readouterr().out


def test_a_table_seen_before_is_kept_as_it_stood(tmp_path):
    from benchmarks.real_mtl_vs_stl import keep_earlier
    keep_earlier(tmp_path / "results_test.txt", "seeds 100, 101\n")
    keep_earlier(tmp_path / "results_test.txt", "seeds 100, 101\n")  # the same table: nothing to keep
    assert [p.name for p in tmp_path.iterdir()] == ["results_test.txt"]
    keep_earlier(tmp_path / "results_test.txt", "seeds 100, 101, 102\n")
    kept = sorted(p.name for p in tmp_path.iterdir())
    assert len(kept) == 2 and (tmp_path / "results_test.txt").read_text() == "seeds 100, 101, 102\n"
    assert (tmp_path / next(k for k in kept if k != "results_test.txt")).read_text() == "seeds 100, 101\n"


def test_real_mtl_vs_stl_table_over_seeds():
    from benchmarks.real_mtl_vs_stl import format_seeds
    row = lambda stl, mtl: {"task": "gender", "test_set": "utk", "metric": "accuracy", "stl": stl, "mtl": mtl,  # noqa
                            "delta": mtl - stl}
    text = format_seeds({0: [row(0.8, 0.9)], 1: [row(0.8, 0.7)], 2: [row(0.9, 0.95)]})
    line = text.splitlines()[-1].split("  ")
    cells = [c.strip() for c in line if c.strip()]
    # deltas +0.1, -0.1, +0.05: mean 0.0167, std 0.1041; stl 0.8333 ± 0.0577; mtl 0.85 ± 0.1323
    assert cells == ["gender", "utk", "accuracy", "0.8333 ± 0.0577", "0.8500 ± 0.1323", "+0.0167 ± 0.1041", "2 of 3",
                     "+0.1000 -0.1000 +0.0500"]


def test_the_au_comparison_bootstraps_the_mean_f1():
    from benchmarks.real_mtl_vs_stl import mean_f1_delta
    from kfacemtl.tasks import get_task
    task = get_task("action_units")
    rng = np.random.default_rng(0)
    y = (rng.random((60, 14)) < 0.3).astype(float)
    good, noisy = np.where(y > 0, 0.9, 0.1), rng.random((60, 14))
    stl, mtl, delta, ci = mean_f1_delta(task, y, noisy, good, draws=200)
    assert mtl == 1.0 and stl < 0.6 and delta == mtl - stl and 0 < ci < delta


def test_variants_change_the_config_only_where_they_say():
    from benchmarks.real_mtl_vs_stl import variant_config
    cfg = yaml.safe_load((ROOT / "configs" / "real_mtl.yaml").read_text())
    teachers = {"age": "runs/a", "expression": "runs/e"}
    taught = variant_config(cfg, "recipe+unlabelled", teachers)["distillation"]
    assert taught["anneal"] and taught["anneal_unlabelled"] == 1.0 and taught["teachers"] == teachers
    coupled = variant_config(cfg, "coupling-estimated", teachers)["coupling"]
    assert coupled["coannotation"] and coupled["relations"][0]["table"] == "estimate"
    expression = variant_config(cfg, "plain+unlabelled-expression", teachers)["distillation"]
    assert expression["anneal_unlabelled"] == {"expression": 1.0} and expression["teachers"] == teachers
    no_au = variant_config(cfg, "recipe+unlabelled-no-au", teachers)["distillation"]["anneal_unlabelled"]
    assert set(no_au) == {"age", "gender", "race", "expression"}  # every teacher but the action units'
    early = variant_config(cfg, "branch2+bam", teachers)
    assert early["model"]["branch_at"] == 2 and early["model"]["branches"]["face"] == ["age", "gender", "race"]
    assert early["distillation"]["anneal_unlabelled"] == 1.0 and cfg["model"]["branch_at"] == 3  # a copy
    before = variant_config(cfg, "recipe+labelled-only", teachers)["distillation"]  # the recipe before 2026-12-05
    assert before["anneal"] and before["anneal_unlabelled"] == 0.0 and before["teachers"] == teachers
    plain = variant_config(cfg, "plain", teachers)
    assert plain["distillation"]["anneal_unlabelled"] == 0.0
    assert resolve_config(plain)["distillation"]["anneal"] is False  # accepted: no unlabelled rows without teachers
    light = variant_config(cfg, "plain+coupling-light", teachers)
    assert light["coupling"]["coannotation"] and light["coupling"]["distribution_matching"]
    assert (light["coupling"]["coannotation_weight"], light["coupling"]["matching_weight"]) == (0.1, 0.1)
    assert light["model"]["branch_at"] is None and not light["distillation"]["anneal"]  # plain's, then coupling's
    weighted = variant_config(cfg, "recipe+unlabelled+dynamic", teachers)
    assert weighted["training"]["weighting"] == "dynamic" and weighted["training"]["steps_per_epoch"] == 750
    assert resolve_config(weighted)["training"]["weighting"] == "dynamic"  # a config train_run accepts
    assert weighted["training"]["loss_weights"] is None  # the recipe's static weights give way to learned ones
    assert variant_config(cfg, "recipe", teachers)["training"]["loss_weights"] == {"expression": 2.0}
    for equal in ("recipe+equal-weights", "plain"):  # the recipe before the weight; plain multi-task
        assert resolve_config(variant_config(cfg, equal, teachers))["training"]["loss_weights"] is None
    heavy = variant_config(cfg, "recipe+unlabelled+fer-heavy", teachers)["training"]
    assert heavy["mixing"]["fer2013-Training"] == 0.55 and cfg["training"]["mixing"]["fer2013-Training"] == 0.45
    assert sum(heavy["mixing"].values()) == pytest.approx(1.0)
    assert set(heavy["mixing"]) == set(cfg["training"]["mixing"])  # the config's sources, shares moved to FER2013
    weighed = resolve_config(variant_config(cfg, "recipe+fer-weight", teachers))["training"]
    assert weighed["loss_weights"] == {"expression": 2.0} and weighed["weighting"] == "equal"  # static, accepted


@pytest.mark.e2e
def test_coupling_tables_scores_each_table_against_the_coded_aus(tmp_path, capsys):
    from benchmarks import coupling_tables
    real_layout(tmp_path / "data")
    (tmp_path / "run").mkdir()
    tiny_model({"expression": {"contempt": True}, "action_units": {}}).save(tmp_path / "run" / "model.keras")
    assert coupling_tables.main(["--data", str(tmp_path / "data"), "--out", str(tmp_path / "out"),
                                 "--runs", str(tmp_path / "run")]) == 0
    text = (tmp_path / "out" / "results.txt").read_text()
    assert "du2014 (the default)" in text and "estimated from CK+ train" in text and "ckplus-test" in text
    assert "from co-annotated ones 0.225" in text  # FER2013's 0.45 of a batch at co-annotation weight 0.5
    row, per_au = [line.split() for line in text.splitlines() if line.startswith(str(tmp_path / "run"))]
    assert 0 <= float(row[3]) <= 1 and 0 <= float(row[4]) <= 1  # mean AP, share of probabilities near 0.5
    assert len(per_au) == 15 and all(0 <= float(f) <= 1 for f in per_au[1:])  # F1 of each of the 14 AUs
    assert coupling_tables.main(["--data", str(tmp_path / "nowhere")]) == 0
    assert "Nothing to do" in capsys.readouterr().out
