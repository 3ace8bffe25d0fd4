"""The teachers a run trains first: born-again generations of the student (single-task teachers: test_distillation)."""
import json

import keras
import numpy as np
import pytest
import yaml

from helpers import TINY_MODEL
from kfacemtl.data import make_dataset, make_source
from kfacemtl.errors import ConfigError
from kfacemtl.models import load_model
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training import train_run


def test_born_again_trains_a_generation_first_that_teaches_the_run_with_its_views(tmp_path):
    model, training = TINY_MODEL, {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16}
    sources = ["synthetic:lab?n=32"]
    teacher = train_run({"tasks": ["expression"], "sources": sources, "model": model, "training": training},
                        tmp_path / "stl", verbose=0)
    assert teacher["epochs_done"] == 1
    cfg = {"tasks": ["expression"], "sources": sources, "eval_sources": ["synthetic:lab?split=test&n=16"],
           "model": model, "training": training,
           "distillation": {"anneal": True, "teachers": {"expression": str(tmp_path / "stl")},
                            "born_again": {"generations": 1, "views": "flip"}}}
    report = train_run(cfg, tmp_path / "student", verbose=0)
    first = tmp_path / "student" / "generations" / "1"
    saved = yaml.safe_load((first / "config.yaml").read_text())["distillation"]
    assert saved["teachers"] == {"expression": str(tmp_path / "stl")} and saved["teacher_views"] == "none"
    assert saved["born_again"] is None and not json.loads((first / "report.json").read_text()).get("evaluation")
    (entry,) = report["distillation"]
    assert entry["views"] == "flip" and set(entry["teacher_runs"]) == {"generation-1"}
    assert entry["teachers_train_seconds"] > 0 and "lab-test" in report["evaluation"]
    # the run's targets are generation 1's answers, as the mean over each face and its mirror
    images = next(iter(make_dataset([make_source(sources[0])], resolve_tasks(["expression"]), batch_size=32,
                                    image_size=(24, 24), training=False)))[0].numpy()
    first_model = load_model(first / "model.keras", compile=False)
    flip = (first_model.predict(images, verbose=0) + first_model.predict(images[:, :, ::-1], verbose=0)) / 2
    with np.load(tmp_path / "student" / "teacher_targets.npz") as targets:
        np.testing.assert_allclose(targets["lab-train/expression"], flip, atol=1e-5)
    # a resumed run reuses the finished generation
    stamp = (first / "model.keras").stat().st_mtime_ns
    assert train_run(cfg, tmp_path / "student", resume=True, verbose=0)["epochs_done"] == 1
    assert (first / "model.keras").stat().st_mtime_ns == stamp
    keras.backend.clear_session()


@pytest.mark.parametrize("born_again, key", [({"generations": 0}, "distillation.born_again.generations"),
                                             ({"views": "mirror"}, "distillation.born_again.views"),
                                             ({"rounds": 2}, "distillation.born_again.rounds"),
                                             (2, "distillation.born_again")])
def test_born_again_config_errors_name_the_key(tmp_path, born_again, key):
    cfg = {"tasks": ["expression"], "sources": ["synthetic:lab?n=8"],
           "distillation": {"anneal": True, "teachers": "x", "born_again": born_again}}
    with pytest.raises(ConfigError, match=rf"'{key}'"):
        train_run(cfg, tmp_path / "bad", verbose=0)


def test_born_again_needs_teacher_annealing(tmp_path):
    with pytest.raises(ConfigError, match="'distillation.born_again'.*anneal: true"):
        train_run({"sources": ["synthetic:lab?n=8"], "distillation": {"born_again": {"generations": 1}}},
                  tmp_path / "bad", verbose=0)
