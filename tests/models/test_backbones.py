"""Backbones: the registry, the built-in residual backbone and any Keras model as a backbone train, save, export and
explain through build_model."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from kfacemtl.analysis.explain import explain, last_conv_layer
from kfacemtl.data import make_dataset, make_source
from kfacemtl.errors import ConfigError
from kfacemtl.models import (BACKBONES, ResidualBackbone, VGGBackbone, build_model, count_flops, load_model,
                             make_backbone)
from kfacemtl.serving import export_model
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training import compile_model, resolve_config, train_run

TASKS = resolve_tasks(["gender", "expression"])


def test_registered_backbones_rebuild_from_their_config():
    assert {"vgg", "residual"} <= set(BACKBONES)
    for cls in (VGGBackbone, ResidualBackbone):
        backbone = cls(input_shape=(32, 32, 3), widths=(8, 16), depths=(1, 2), stem_stride=1)
        again = cls.from_config(backbone.get_config())
        assert again.get_config() == backbone.get_config() and again.output.shape == backbone.output.shape
    with pytest.raises(ValueError, match="unknown backbone 'resnet'"):
        make_backbone("resnet")
    with pytest.raises(ValueError, match="depths: expected 2 positive integers"):
        VGGBackbone(widths=(8, 16), depths=(1, 2, 3))
    with pytest.raises(ConfigError, match="model.backbone"):
        resolve_config({"sources": ["synthetic:lab"], "model": {"backbone": "resnet"}})


def test_the_residual_backbone_trains_saves_exports_and_explains(tmp_path):
    model = compile_model(build_model(TASKS, input_shape=(32, 32, 3), widths=(8, 16), depths=1, embedding_dim=16,
                                      head_units=8, backbone="residual"), learning_rate=1e-2)
    assert isinstance(model.backbone, ResidualBackbone)
    assert count_flops(model) > count_flops(build_model(TASKS, input_shape=(32, 32, 3), widths=(8, 16), depths=1,
                                                        embedding_dim=16, head_units=8))  # two convs a block
    ds = make_dataset([make_source("synthetic:lab?n=64"), make_source("synthetic:portraits?n=64")], TASKS,
                      batch_size=16, image_size=(32, 32))
    history = model.fit(ds, epochs=2, steps_per_epoch=4, verbose=0).history
    assert np.isfinite(history["loss"]).all() and history["loss"][-1] < history["loss"][0]
    x = np.random.default_rng(0).random((3, 32, 32, 3)).astype("float32")
    model.save(tmp_path / "m.keras")
    again = load_model(tmp_path / "m.keras")
    assert isinstance(again.backbone, ResidualBackbone)
    for a, b in zip(model.predict(x, verbose=0), again.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    path = export_model(again, base=tmp_path / "exports", name="residual")
    out = tf.saved_model.load(str(path)).signatures["serving_float"](images=x)
    np.testing.assert_allclose(out["gender_probs"].numpy(), again.predict(x, verbose=0)[0], atol=1e-5)
    assert last_conv_layer(again) == "stage2_block1_out"  # the backbone's feature map, reachable for Grad-CAM
    for method in ("gradcam++", "saliency"):
        maps = explain(again, x, "expression", method=method)
        assert maps.shape == (3, 32, 32) and maps.min() >= 0 and maps.max() <= 1 and maps.std() > 0


def test_any_keras_model_is_a_backbone(tmp_path):
    inputs = keras.Input((24, 24, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu", name="mine_conv")(inputs)
    mine = keras.Model(inputs, keras.layers.Conv2D(8, 3, activation="relu", name="mine_out")(x), name="mine")
    model = compile_model(build_model(TASKS, backbone=mine, embedding_dim=8, head_units=0))
    assert model.input_shape == (None, 24, 24, 3) and model.backbone is mine
    run = train_run({"tasks": ["gender"], "sources": ["synthetic:portraits?n=32"],
                     "model": {"backbone": "residual", "input_shape": [24, 24, 3], "widths": [8], "depths": [1],
                               "embedding_dim": 8, "head_units": 0},
                     "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16}}, tmp_path / "run", verbose=0)
    assert isinstance(load_model(tmp_path / "run" / "model.keras").backbone, ResidualBackbone) and run["parameters"]
    ds = make_dataset([make_source("synthetic:portraits?n=32")], TASKS, batch_size=16, image_size=(24, 24))
    assert np.isfinite(model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0).history["loss"]).all()
    model.save(tmp_path / "mine.keras")  # a plain functional backbone saves and loads too
    assert load_model(tmp_path / "mine.keras").backbone.get_layer("mine_conv").filters == 8
    assert last_conv_layer(model) == "mine_out"
    assert explain(model, np.zeros((2, 24, 24, 3), "float32"), "gender", method="gradcam++").shape == (2, 24, 24)
