"""The real-face benchmark script runs end to end on data written in the real layouts (tiny model, few steps)."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from conftest import write_png

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


TINY_MODEL = {"input_shape": [24, 24, 3], "widths": [8, 16], "depths": [1, 1], "embedding_dim": 16, "head_units": 8}


def _real_layout(data):
    rng = np.random.default_rng(0)
    for i in range(40):
        age, gender, race = 10 + i, i % 2, i % 5
        write_png(data / "utkface" / "UTKFace" / f"{age}_{gender}_{race}_2017011600000{i:04d}.jpg.chip.jpg",
                  rng.integers(0, 255, (64, 64, 3)))
    for split, n in (("train", 6), ("test", 2)):
        for cls in ("angry", "happy", "neutral"):
            for k in range(n):
                write_png(data / "fer2013" / split / cls / f"{split}_{k}.jpg", rng.integers(0, 255, (48, 48, 1)))
    rows = ["path,expression,expression_name,identity_guess"]
    for k, (e, name) in enumerate(((3, "happy"), (6, "neutral"), (7, "contempt"))):
        write_png(data / "lfw_expressions" / "images" / f"p_{k}.jpg", rng.integers(0, 255, (90, 90, 1)))
        rows.append(f"images/p_{k}.jpg,{e},{name},p")
    (data / "lfw_expressions" / "labels.csv").write_text("\n".join(rows) + "\n")


def test_real_mtl_vs_stl_runs_matches_budgets_and_resumes(tmp_path, capsys):
    import real_mtl_vs_stl
    _real_layout(tmp_path / "data")
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
    import real_mtl_vs_stl
    _real_layout(tmp_path / "data")
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
    from real_mtl_vs_stl import format_seeds
    row = lambda stl, mtl: {"task": "gender", "test_set": "utk", "metric": "accuracy", "stl": stl, "mtl": mtl,  # noqa
                            "delta": mtl - stl}
    text = format_seeds({0: [row(0.8, 0.9)], 1: [row(0.8, 0.7)], 2: [row(0.9, 0.95)]})
    line = text.splitlines()[-1].split("  ")
    cells = [c.strip() for c in line if c.strip()]
    # deltas +0.1, -0.1, +0.05: mean 0.0167, std 0.1041; stl 0.8333 ± 0.0577; mtl 0.85 ± 0.1323
    assert cells == ["gender", "utk", "accuracy", "0.8333 ± 0.0577", "0.8500 ± 0.1323", "+0.0167 ± 0.1041", "2 of 3"]


def test_ablation_compares_variants_with_single_task_baselines_over_seeds(tmp_path, monkeypatch, capsys):
    import ablation_weighting_lr as ablation
    monkeypatch.setattr(ablation, "SYNTHETIC_MODEL", TINY_MODEL)
    args = ["--settings", "synthetic", "--seeds", "0", "1", "--synthetic-steps", "4", "--synthetic-faces", "64",
            "--synthetic-test-faces", "32",
            "--variants", "equal", "gradnorm", "--out", str(tmp_path / "runs")]
    assert ablation.main(args) == 0
    out = capsys.readouterr().out
    assert "synthetic: seeds 0, 1 (mean ± std)" in out and "Δ vs single-task %" in out and "(paired)" in out
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert [(r["variant"], r["seed"]) for r in results] == [("equal", 0), ("gradnorm", 0), ("equal", 1), ("gradnorm", 1)]
    for r in results:
        assert np.isfinite(r["relative_change"]) and set(r["per_task"]) == {"age", "gender", "race", "expression"}
    seed0 = tmp_path / "runs" / "synthetic" / "seed0"
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
    assert ablation.main(args[:-5] + ["--variants", "equal", "--variant", extra, "--reference", "slow grow",
                                      "--out", str(tmp_path / "runs")]) == 0
    assert "Δ - slow grow's Δ (paired)" in capsys.readouterr().out
    slow = yaml.safe_load((seed0 / "slow_grow" / "config.yaml").read_text())["training"]
    assert slow["lr_schedule"] == "dynamic" and slow["dynamic_lr_options"] == {"grow_after": 2}
    monkeypatch.setattr(ablation, "VARIANTS", {**ablation.VARIANTS, "gradnorm": {"weighting": "dwa"}})
    with pytest.raises(SystemExit, match="finished run of another config"):
        ablation.main(args)


def test_ablation_real_setting_evaluates_runs_whose_report_has_no_test_sets(tmp_path, capsys):
    import ablation_weighting_lr as ablation
    _real_layout(tmp_path / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "real_mtl.yaml").read_text())
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


def test_distillation_benchmark_synthetic_and_real(tmp_path, monkeypatch, capsys):
    import distillation as bench
    monkeypatch.setattr(bench, "SYNTHETIC_MODEL", TINY_MODEL)
    args = ["--settings", "synthetic", "--seeds", "0", "--rounds", "1", "--epochs-per-round", "1",
            "--synthetic-steps-per-epoch", "2", "--synthetic-faces", "48", "--synthetic-test-faces", "24",
            "--thresholds", "gender=0.5", "--trained-teachers", "--pseudo-weight", "0.8", "--soft",
            "--target-domain", "cctv", "--out", str(tmp_path / "runs")]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "pseudo-labels on cctv-train" in out and "student on cctv-test after each round" in out
    assert "transform ensemble cost (T = 6" in out
    result = json.loads((tmp_path / "runs" / "results.json").read_text())["synthetic"]
    runs = result["per_seed"]["0"]
    assert set(runs) == set(bench.VARIANTS)
    assert runs["no distillation"]["rounds"] == [] and [e["round"] for e in runs["multi-task teacher"]["rounds"]] == [1]
    assert set(runs["multi-task teacher"]["student"]) == {"0", "1"}  # evaluated after each round
    target = runs["single-task teachers"]["rounds"][0]["sources"]["cctv-train"]
    assert target["age"]["candidates"] == 48 and "quality_candidates" in target["age"]
    seed0 = tmp_path / "runs" / "synthetic" / "seed0"
    teachers = yaml.safe_load((seed0 / "single_task_teachers" / "config.yaml").read_text())["distillation"]["teachers"]
    assert teachers == {t: str(seed0 / f"teacher_{t}") for t in ("age", "gender", "race", "expression")}
    distill = yaml.safe_load((seed0 / "multi_task_teacher" / "config.yaml").read_text())["distillation"]
    assert distill["thresholds"] == {"gender": 0.5} and distill["rounds"] == 1
    assert distill["pseudo_weight"] == 0.8 and distill["soft"] is True
    assert distill["teachers"] == str(seed0 / "no_distillation")  # --trained-teachers: (a) teaches (c)
    teacher_steps = yaml.safe_load((seed0 / "teacher_gender" / "config.yaml").read_text())["training"]["epochs"]
    assert teacher_steps == 2  # the whole budget: (rounds + 1) x epochs per round
    assert result["cost"]["ensemble_images_per_s"] > 0
    # the real setting on data in the real layouts; LFW is the unlabelled target, scored by its hidden labels
    _real_layout(tmp_path / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "real_mtl.yaml").read_text())
    cfg["model"].update(TINY_MODEL)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    args = ["--settings", "real", "--rounds", "1", "--real-epochs-per-round", "1", "--real-steps-per-epoch", "2",
            "--data", str(tmp_path / "data"), "--config", str(tmp_path / "tiny.yaml"), "--out", str(tmp_path / "real")]
    assert bench.main(args) == 0
    real = json.loads((tmp_path / "real" / "results.json").read_text())["real"]["per_seed"]["0"]
    lfw = real["multi-task teacher"]["rounds"][0]["sources"]["lfw-unlabelled"]
    assert lfw["expression"]["candidates"] == 3
    assert set(real["no distillation"]["student"]["1"]["lfw-expressions"]) == {"expression"}
    assert isinstance(real["fer_agreement"], dict)


def test_distillation_benchmark_options_keep_labelled_rows_and_fix_the_teacher():
    import distillation as bench
    base = bench.synthetic_base(0, steps_per_epoch=5, faces=64, test_faces=16)  # four labelled domains, balanced
    scarce = bench.synthetic_base(0, steps_per_epoch=5, faces=64, test_faces=16, portraits_faces=20)["sources"]
    assert scarce[0] == "synthetic:portraits?n=20&seed=0" and scarce[1:] == base["sources"][1:]  # --portraits-faces
    street = ["synthetic:street?n=64"]
    sizes = {v: bench.variant_config(base, v, street, 2, 1, {}, same_labelled_rows=True)["training"]["batch_size"]
             for v in bench.VARIANTS}
    assert sizes == {"no distillation": 64, "single-task teachers": 80, "multi-task teacher": 80}
    assert bench.variant_config(base, "multi-task teacher", street, 2, 1)["training"]["batch_size"] == 64
    fixed = bench.variant_config(base, "multi-task teacher", street, 2, 1, multi_task_teacher="runs/a")
    assert fixed["distillation"]["teachers"] == "runs/a"  # --trained-teachers: (a)'s model teaches (c)
    assert "teachers" not in bench.variant_config(base, "multi-task teacher", street, 2, 1)["distillation"]
    reinit = bench.variant_config(base, "single-task teachers", street, 2, 1, {}, options={"reinit": True})
    assert reinit["distillation"]["reinit"] is True  # --reinit
    # --images-control: (c)'s batches, target images included, and thresholds no prediction passes
    control = bench.variant_config(base, bench.CONTROL, street, 2, 1, {}, {"gender": 0.9}, same_labelled_rows=True,
                                   multi_task_teacher="runs/a")
    assert control["unlabelled_sources"] == street and control["training"]["batch_size"] == 80
    assert control["distillation"]["thresholds"] == {"age": 0.0, "gender": 2.0, "race": 2.0, "expression": 2.0}
    assert "teachers" not in control["distillation"]
    base["training"]["mixing"] = "proportional"  # the unlabelled share is then not a fixed fraction
    with pytest.raises(SystemExit, match="balanced"):
        bench.variant_config(base, "multi-task teacher", street, 2, 1, same_labelled_rows=True)


def test_distillation_benchmark_pairs_the_students_seed_by_seed():
    import distillation as bench
    from kfacemtl.tasks import resolve_tasks

    def student(age, gender):
        return {"student": {"2": {"street-test": {"age": age, "gender": gender}}}}

    per_seed = {0: {"no distillation": student(10.0, 0.80), "single-task teachers": student(9.0, 0.85)},
                1: {"no distillation": student(10.0, 0.70), "single-task teachers": student(10.5, 0.78)}}
    text = bench.format_paired(per_seed, resolve_tasks(["age", "gender"]), "street-test", 2,
                               ["single-task teachers"], "no distillation")
    assert text.startswith("paired against no distillation after round 2")
    row = next(line for line in text.splitlines() if line.startswith("single-task teachers"))
    # age: -1.0 and +0.5 (lower is better: ahead in one seed); gender: +0.05 and +0.08, t = 0.065 / (0.0212 / √2)
    assert "-0.250 ± 1.061 (t = -0.3), 1 of 2" in row and "+0.065 ± 0.021 (t = 4.3), 2 of 2" in row


def test_distribution_matching_benchmark_runs_every_variant_and_its_baselines(tmp_path, monkeypatch, capsys):
    import distribution_matching as bench
    monkeypatch.setattr(bench, "SYNTHETIC_MODEL", TINY_MODEL)
    variants = ["plain MTL", "+ both", "+ both (Du 2014 table)", "+ both + fused outputs",
                "+ both (class means) + fused outputs"]
    args = ["--seeds", "0", "--steps", "4", "--faces", "96", "--test-faces", "16", "--mixing", "sqrt",
            "--variants", *variants, "--out", str(tmp_path / "runs")]
    assert bench.main(args) == 0
    out = capsys.readouterr().out
    assert "AU F1 w/o AU labels" in out and "expr acc street" in out and "negative transfer" in out
    assert "implied by the expression head" in out
    results = json.loads((tmp_path / "runs" / "results.json").read_text())
    assert [r["variant"] for r in results] == ["single-task"] + variants
    assert set(results[0]["scores"]) == {f"{t}@{d}" for t in ("expression", "action_units") for d in bench.DOMAINS}
    assert set(results[1]["implied"]) == set(bench.DOMAINS) and set(results[1]["implied"]["lab"]) == {"head", "implied"}
    seed0 = tmp_path / "runs" / "seed0"
    both = yaml.safe_load((seed0 / "both" / "config.yaml").read_text())["coupling"]
    assert both["coannotation"] and both["distribution_matching"] and both["relations"][0]["table"] == "estimate"
    assert yaml.safe_load((seed0 / "both_Du_2014_table" / "config.yaml").read_text())[
        "coupling"]["relations"][0]["table"] == "du2014"
    assert json.loads((seed0 / "plain_MTL" / "report.json").read_text())["coupling"] is None
    assert both["fuse_outputs"] is False
    fused = json.loads((seed0 / "both_fused_outputs" / "report.json").read_text())["coupling"]
    assert fused["fused_outputs"] == ["expression->action_units"] and fused["coannotation"]
    assert fused["level"] == "sample" and both["level"] == "sample"
    class_level = json.loads((seed0 / "both_class_means_fused_outputs" / "report.json").read_text())
    assert class_level["coupling"]["level"] == "class" and class_level["coupling"]["fused_outputs"]
    assert "coannot_action_units" in class_level["final_epoch_metrics"]
    assert yaml.safe_load((seed0 / "plain_MTL" / "config.yaml").read_text())["training"]["mixing"] == "sqrt"
    stl = yaml.safe_load((seed0 / "single-task_action_units" / "config.yaml").read_text())
    assert [s.split("?")[0] for s in stl["sources"]] == ["synthetic:lab"]  # AUs: the lab domain only
    assert (tmp_path / "runs" / "distribution_matching.png").stat().st_size > 0


def test_throughput_benchmark_times_pipeline_cache_and_model_alone(tmp_path, capsys):
    import throughput as bench
    common = ["--setting", "synthetic", "--synthetic-faces", "64", "--steps", "3", "--warmup", "1",
              "--model", json.dumps(TINY_MODEL)]
    assert bench.main(common + ["--one", "alone_mixed"]) == 0  # what each fresh process of a full run does
    child = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert child["images_per_s"] > 0 and child["dataset_seconds"] >= 0 and child["peak_rss_mb"] > 0
    assert child["gpu_peak_mb"] is None  # no GPU here
    assert bench.main(common + ["--repeats", "1", "--in-process", "--out", str(tmp_path / "tp"),
                                "--variants", "files,cached,alone", "--batch-size", "16"]) == 0
    out = capsys.readouterr().out
    assert "full pipeline (decoded-image cache)" in out and "model-FLOP utilisation" in out
    assert "mixed_float16 (model.mixed_precision)  not measured" in out and "full pipeline, XLA" in out
    r = json.loads((tmp_path / "tp" / "results.json").read_text())["synthetic"]
    assert set(r["runs"]) == {"files", "cached", "alone"} and all(len(v) == 1 for v in r["runs"].values())
    assert r["input_shape"] == TINY_MODEL["input_shape"] and r["forward_flops_per_image"] > 0
    assert r["batch_size"] == 16 and r["precision"] == "float32" and "float32 matmul peak (2048^3)" in out
    assert 0 < r["model_flop_utilisation"] < 1 and r["inference_images_per_s"] > 0 and r["peak_rss_mb"] > 0
    assert bench.main(["--setting", "real", "--data", str(tmp_path / "none")]) == 0  # no real data: a message
    assert "real data not found" in capsys.readouterr().out


def test_throughput_variants_are_a_base_and_tags_and_compare_in_one_process(capsys):
    import doctest

    import throughput as bench
    assert doctest.testmod(bench, optionflags=doctest.NORMALIZE_WHITESPACE).failed == 0
    assert bench.parse_variant("cached_xla_step_dev_spe8") == {
        "base": "cached", "xla": True, "mixed": False, "step": True, "dev": True, "steps_per_execution": 8}
    for bad in ("cache", "cached_fast", "alone_spe0", "alone_spe2_spe4"):
        with pytest.raises(ValueError, match="expected files, cached or alone"):
            bench.parse_variant(bad)
    common = ["--setting", "synthetic", "--synthetic-faces", "64", "--steps", "3", "--warmup", "1",
              "--model", json.dumps(TINY_MODEL), "--batch-size", "16"]
    assert bench.main(common + ["--one", "alone_step_spe2,cached_step_spe2,cached_dev"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    rows = [json.loads(line) for line in lines if line.startswith("{")]
    assert [r["variant"] for r in rows] == ["alone_step_spe2", "cached_step_spe2", "cached_dev"]
    assert all(r["images_per_s"] > 0 for r in rows)
    table = "\n".join(lines)
    assert "% of alone_step_spe2" in table and "2 steps per call" in table and "augmented in the train step" in table
    with pytest.raises(SystemExit):
        bench.main(common + ["--one", "alone,fast"])


def test_serving_benchmark_times_signatures_single_task_models_and_decoding(capsys):
    import serving
    assert serving.main(["--seconds", "0.02", "--image-size", "32", "--jpeg-size", "48", "--streams", "2",
                         "--tasks", "gender,age"]) == 0
    out = capsys.readouterr().out
    for row in ("(a) SavedModel bytes signature", "(a) bytes signature, JPEGs of 12 sizes (36-58 px)",
                "(b) SavedModel float signature", "(c) keras model.predict",
                "(d) 2 single-task models", "decoding alone"):
        assert f"| {row}" in out, row
    assert "(b)/(d) [target ≥ 1.6]" in out and "(a)/(b) [target ≥ 0.90]" in out and "2 streams" in out


def test_throughput_step_clock_leaves_the_warm_up_steps_out():
    import time
    from throughput import StepClock
    clock = StepClock(skip=2)
    for batch, pause in enumerate([0.3, 0.3, 0.01, 0.01, 0.01]):  # two slow warm-up steps (tracing), three timed
        clock.on_train_batch_begin(batch)
        time.sleep(pause)
        clock.on_train_batch_end(batch)
    assert 0.03 <= clock.seconds < 0.25


def test_backbone_benchmark_trains_variants_for_equal_time_and_compares_them(tmp_path, capsys):
    import backbone
    _real_layout(tmp_path / "data")
    cfg = yaml.safe_load((ROOT / "configs" / "real_mtl.yaml").read_text())
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


def test_gpu_throughput_exports_plain_keras_networks_and_times_them(tmp_path, capsys):
    import keras
    import throughput_gpu as bench
    from kfacemtl.models import build_model
    from kfacemtl.tasks import resolve_tasks
    cfg = yaml.safe_load((ROOT / "configs" / "real_mtl.yaml").read_text())
    cfg["model"].update(TINY_MODEL)
    (tmp_path / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    arch = tmp_path / "arch.json"
    assert bench.main(["export", "--config", str(tmp_path / "tiny.yaml"), "--out", str(arch),
                       "--variant", 'narrow={"widths": [4, 8]}']) == 0
    nets = json.loads(arch.read_text())["networks"]
    assert list(nets) == ["default", "narrow"] and nets["narrow"]["forward_flops"] < nets["default"]["forward_flops"]
    assert nets["default"]["outputs"] == {"age": {"kind": "regression", "units": 1},
                                          "gender": {"kind": "classification", "units": 2},
                                          "race": {"kind": "classification", "units": 5},
                                          "expression": {"kind": "classification", "units": 8}}
    # the plain Keras network is kfacemtl's: same weights, same class probabilities
    model = build_model(resolve_tasks(cfg["tasks"]), **cfg["model"])
    plain = keras.models.model_from_json(json.dumps(nets["default"]["model"]))
    assert type(plain).__name__ == "Functional" and plain.count_params() == nets["default"]["parameters"]
    plain.set_weights(model.get_weights())
    x = np.random.default_rng(0).random((3, 24, 24, 3), dtype=np.float32)
    ours, theirs = model.predict_dict(x, verbose=0), dict(zip(plain.output_names, plain.predict(x, verbose=0)))
    for task in ("gender", "race", "expression"):
        np.testing.assert_allclose(theirs[task], ours[task], atol=1e-5)
    half = bench.with_precision(nets["default"], "mixed_float16")
    policies = {layer["name"]: layer["config"]["dtype"]["config"]["name"] for layer in half["config"]["layers"]
                if isinstance(layer["config"].get("dtype"), dict)}
    assert policies["block1_conv1"] == "mixed_float16" and policies["age"] == "float32"  # float32 outputs and losses
    assert bench.main(["run", str(arch), "--batches", "8", "--precisions", "float32,mixed_float16", "--images", "16",
                       "--repeats", "1", "--matmul-size", "64", "--out", str(tmp_path / "gpu")]) == 0
    assert "vs default float32" in capsys.readouterr().out
    r = json.loads((tmp_path / "gpu" / "results.json").read_text())
    assert [(row["network"], row["precision"]) for row in r["rows"]] == [
        ("default", "float32"), ("default", "mixed_float16"), ("narrow", "float32"), ("narrow", "mixed_float16")]
    assert all(row["train_images_per_s"] > 0 and row["inference_images_per_s"] > 0 and row["mfu"] > 0
               for row in r["rows"])
    assert r["backend"] == "tensorflow" and set(r["matmul_peak_flops_per_s"]) == {"float32", "mixed_float16"}
