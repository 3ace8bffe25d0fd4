"""``python -m benchmarks.distribution_matching`` runs end to end on small data (tiny models, few steps)."""
import pytest
import json

import yaml

from helpers import TINY_MODEL


@pytest.mark.e2e
def test_distribution_matching_benchmark_runs_every_variant_and_its_baselines(tmp_path, monkeypatch, capsys):
    from benchmarks import distribution_matching as bench
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
