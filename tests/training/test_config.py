import pytest

from kfacemtl.training.config import load_config, resolve_config
from kfacemtl.errors import ConfigError

from helpers import ROOT, TINY_MODEL, tiny_model

BASE = {"sources": ["synthetic:lab?n=8"]}


@pytest.mark.parametrize("cfg,match", [
    ({"trainig": {}}, r"'trainig': unknown key; did you mean 'training'"),
    ({"training": {"epochz": 3}}, r"'training.epochz': unknown key; did you mean 'epochs'"),
    ({"model": {"widths": "abc"}}, r"'model.widths': expected a list of integers"),
    ({"training": {"epochs": 0}}, r"'training.epochs': expected a positive integer"),
    ({"training": {"learning_rate": "fast"}}, r"'training.learning_rate': expected a number"),
    ({"training": {"optimizer": "adagrad"}}, r"'training.optimizer'"),
    ({"training": {"loss_normalization": "mean"}}, r"'training.loss_normalization'"),
    ({"training": {"augment": "yes"}}, r"'training.augment': expected true, false or a mapping"),
    ({"training": {"augment": {"zoom": 0.6}}}, r"'training.augment.zoom': expected a fraction in \[0, 0.5\)"),
    ({"training": {"augment": {"turn": 10}}}, r"'training.augment.turn': unknown key"),
    ({"training": {"jit_compile": "gpu"}}, r"'training.jit_compile': expected true, false or auto"),
    ({"training": {"augment_on": "gpu"}}, r"'training.augment_on': expected one of \('auto', 'pipeline', 'step'\)"),
    ({"training": {"mixup": -1}}, r"'training.mixup': expected Beta\(alpha, alpha\)'s alpha, a number >= 0"),
    ({"training": {"mixup": 0.2}, "coupling": {"coannotation": True}},
     r"'training.mixup': not combined with coupling.coannotation"),
    ({"training": {"steps_per_execution": 0}}, r"'training.steps_per_execution': expected a positive integer or auto"),
    ({"training": {"steps_per_execution": "8"}}, r"'training.steps_per_execution': expected a positive integer"),
    ({"training": {"steps_per_execution": 8, "strategy": "mirrored"}},
     r"'training.steps_per_execution': 8 steps per call need strategy: default"),
    ({"training": {"loss_weights": [1, 2]}}, r"'training.loss_weights': expected a mapping"),
    ({"training": {"loss_weights": {"age": -1}}}, r"'training.loss_weights.age': expected a number >= 0"),
])
def test_bad_keys_and_values_name_the_key_path(cfg, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config({**BASE, **cfg})


def test_defaults_and_files(tmp_path):
    cfg = resolve_config(BASE)
    assert cfg["training"]["loss_normalization"] == "mean_with_sample_weight"
    assert cfg["training"]["jit_compile"] == "auto"
    assert cfg["training"]["augment_on"] == "auto" and cfg["training"]["steps_per_execution"] == "auto"
    assert cfg["tasks"][0] == "age" and cfg["model"]["input_shape"] == [64, 64, 3]
    with pytest.raises(ConfigError, match="at least one training source"):
        resolve_config({})
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("training: {epochs: [\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    (tmp_path / "evil.yaml").write_text("sources: !!python/object/apply:os.system ['echo hi']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):  # safe loading: no code runs
        load_config(tmp_path / "evil.yaml")
    (tmp_path / "ok.yaml").write_text("sources: ['synthetic:lab?n=8']\ntraining: {epochs: 2}\n")
    assert load_config(tmp_path / "ok.yaml")["training"]["epochs"] == 2


def test_the_real_data_config_resolves_and_loss_weights_reach_the_model():
    from kfacemtl.tasks import resolve_tasks
    from kfacemtl.training import compile_model
    for name, expected in (("real_mtl", ["age", "gender", "race", "expression", "action_units"]),
                           ("real_utk_fer", ["age", "gender", "race", "expression"])):
        cfg = load_config(ROOT / "configs" / f"{name}.yaml")
        tasks = resolve_tasks(cfg["tasks"])
        assert [t.name for t in tasks] == expected and len(tasks[3].classes) == 8
    import numpy as np
    model = compile_model(tiny_model(["age", "expression"]), loss_weights={"expression": 3.0})
    x = np.random.default_rng(0).random((8, 64, 64, 3), "float32")
    y = {"age": np.full((8, 1), 30.0, "float32"), "expression": np.arange(8) % 7}
    m = model.evaluate(x, y, batch_size=8, verbose=0, return_dict=True)
    assert m["loss"] == pytest.approx(m["age_loss"] + 3.0 * m["expression_loss"], rel=1e-4)
    with pytest.raises(ValueError, match=r"^loss_weights\.race: not a task of the model"):
        compile_model(tiny_model(["age", "expression"]), loss_weights={"race": 2.0})


def test_the_real_distillation_config_resolves():
    cfg = load_config(ROOT / "configs" / "real_distillation.yaml")
    d = cfg["distillation"]
    assert cfg["training"]["epochs"] == d["epochs_per_round"] * (d["rounds"] + 1) and cfg["unlabelled_sources"]


@pytest.mark.parametrize("change,match", [
    ({"training": {"mixing": {"nope": 1.0}}}, r"'training\.mixing\.nope': not a source; sources are \['lab-train'\]"),
    ({"sources": ["synthetic:lab?n=8&split=val"]}, r"'sources\[0\]\.split': expected train or test, got 'val'"),
    ({"training": {"strategy": "mirrored", "strategy_devices": ["/gpu:7"]}},
     r"'training\.strategy_devices': \['/gpu:7'\]: not devices of this machine"),
    ({"training": {"weighting": "gradnorm", "weighting_options": {"alpha": -1}}},
     r"'training\.weighting_options\.alpha': expected >= 0, got -1"),
    ({"tasks": ["expression", "action_units"], "coupling": {"distribution_matching": True, "relations": [
        {"source": "expression", "target": "action_units", "table": {"joy": {"AU12": 1.0}}}]}},
     r"'coupling\.relations\[0\]\.table\.joy': not a class of expression"),
    ({"tasks": ["expression"], "unlabelled_sources": ["synthetic:street?n=8"], "training": {"epochs": 2},
      "distillation": {"rounds": 1, "thresholds": {"age": 0.5}}},
     r"'distillation\.thresholds\.age': not a task of the model \['expression'\]"),
])
def test_a_modules_plain_error_reaches_the_config_user_under_its_key(change, match, tmp_path):
    # the modules raise ValueError("argument: ..."); the run names the config key that gave the argument
    from kfacemtl.training.run import model_for_run, prepare_run, training_data
    cfg = {"tasks": ["expression"], "sources": ["synthetic:lab?n=8"], "model": dict(TINY_MODEL),
           "training": {"epochs": 1, "batch_size": 4}}
    for section, values in change.items():
        cfg[section] = {**cfg.get(section, {}), **values} if isinstance(values, dict) else values
    with pytest.raises(ConfigError, match=match):
        run = prepare_run(cfg, tmp_path / "run")
        training_data(run, model_for_run(run)[0], verbose=0)
