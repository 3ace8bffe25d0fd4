import pytest

from kfacemtl.config import load_config, resolve_config
from kfacemtl.errors import ConfigError

BASE = {"sources": ["synthetic:lab?n=8"]}


@pytest.mark.parametrize("cfg,match", [
    ({"trainig": {}}, r"'trainig': unknown key; did you mean 'training'"),
    ({"training": {"epochz": 3}}, r"'training.epochz': unknown key; did you mean 'epochs'"),
    ({"model": {"widths": "abc"}}, r"'model.widths': expected a list of integers"),
    ({"training": {"epochs": 0}}, r"'training.epochs': expected a positive integer"),
    ({"training": {"learning_rate": "fast"}}, r"'training.learning_rate': expected a number"),
    ({"training": {"optimizer": "adagrad"}}, r"'training.optimizer'"),
    ({"training": {"loss_normalization": "mean"}}, r"'training.loss_normalization'"),
    ({"training": {"augment": "yes"}}, r"'training.augment': expected true or false"),
])
def test_bad_keys_and_values_name_the_key_path(cfg, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config({**BASE, **cfg})


def test_defaults_and_files(tmp_path):
    cfg = resolve_config(BASE)
    assert cfg["training"]["loss_normalization"] == "mean_with_sample_weight"
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
