"""Every metric by group, the worst-group gap, and the model card that carries them."""
import json

import numpy as np
import pytest

from helpers import tiny_model
from kfacemtl.analysis.evaluation import evaluate_sources
from kfacemtl.analysis.fairness import evaluate_groups, format_groups
from kfacemtl.data import make_source


def test_groups_split_the_labelled_faces_and_the_gap_is_between_the_best_and_worst_group():
    model = tiny_model(["age", "gender", "race"])
    source = make_source("synthetic:portraits?n=120")
    result = evaluate_groups(model, [source], by=["gender", "race"], image_size=(64, 64), min_faces=5)
    overall = evaluate_sources(model, [source], image_size=(64, 64))["portraits-train"]
    for attribute, classes in (("gender", 2), ("race", 5)):
        entry = result["portraits-train"][attribute]
        assert set(entry["groups"]) <= set(("male", "female") if classes == 2 else
                                           ("white", "black", "asian", "indian", "others"))
        assert sum(m["age"]["n"] for m in entry["groups"].values()) == overall["age"]["n"]
        # the groups' accuracies, weighted by their faces, give the overall accuracy back
        weighted = sum(m["gender"]["accuracy"] * m["gender"]["n"] for m in entry["groups"].values())
        assert weighted / overall["gender"]["n"] == pytest.approx(overall["gender"]["accuracy"])
        age = entry["gap"]["age"]
        maes = {g: m["age"]["mae"] for g, m in entry["groups"].items() if m["age"]["n"] >= 5}
        assert age["metric"] == "mae" and age["worst"] == max(maes, key=maes.get)  # the largest error is the worst
        assert age["gap"] == pytest.approx(max(maes.values()) - min(maes.values()))
        accs = {g: m["race"]["accuracy"] for g, m in entry["groups"].items() if m["race"]["n"] >= 5}
        assert entry["gap"]["race"]["worst"] == min(accs, key=accs.get)
    table = format_groups(result)
    assert "portraits-train by gender" in table and "worst-group gap" in table


def test_small_groups_are_shown_but_left_out_of_the_gap_and_wrong_attributes_are_named():
    model = tiny_model(["gender"])
    result = evaluate_groups(model, [make_source("synthetic:portraits?n=30")], by=["race"], image_size=(64, 64),
                             min_faces=1000)
    entry = result["portraits-train"]["race"]
    assert entry["groups"] and entry["gap"] == {}
    assert evaluate_groups(model, [make_source("synthetic:lab?n=8")], by=["race"], image_size=(64, 64)) == {
        "lab-train": {}}  # a set without race labels has no breakdown by race
    with pytest.raises(ValueError, match="by: age is not a classification task"):
        evaluate_groups(model, [], by=["age"])


def test_evaluate_by_groups_and_the_model_card_carries_it(tmp_path, capsys):
    from kfacemtl.cli import main
    from kfacemtl.serving import export_model
    from kfacemtl.training import train_run
    cfg = {"tasks": ["age", "gender"], "sources": ["synthetic:portraits?n=64"],
           "eval_sources": ["synthetic:portraits?split=test&n=48"],
           "model": {"input_shape": [24, 24, 3], "widths": [8], "depths": [1], "embedding_dim": 8, "head_units": 4},
           "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16}}
    run = tmp_path / "run"
    train_run(cfg, run, verbose=0)
    assert main(["evaluate", str(run), "--by", "gender,race"]) == 0
    out = capsys.readouterr().out
    assert "portraits-test by gender" in out and "portraits-test by race" in out
    saved = json.loads((run / "fairness.json").read_text())
    assert set(saved["portraits-test"]) == {"gender", "race"}
    card = (export_model(run, tmp_path / "models", "faces", warmup=False) / "model_card.md").read_text()
    assert "## By group" in card and "| portraits-test | gender | age | mae |" in card
    assert main(["evaluate", str(run), "--by", "age"]) == 2
    assert "--by: age is not a classification task" in capsys.readouterr().err
    assert np.isfinite(saved["portraits-test"]["gender"]["gap"]["age"]["gap"])
