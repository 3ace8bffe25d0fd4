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


BRANCHES = {"face": ["age", "gender"], "expression": ["expression"]}


@pytest.mark.parametrize("backbone", ["vgg", "residual"])
def test_branches_give_each_group_its_own_late_blocks_and_embedding(tmp_path, backbone):
    tasks = resolve_tasks(["age", "gender", "expression"])
    model = compile_model(build_model(tasks, input_shape=(32, 32, 3), widths=(8, 16), depths=1, embedding_dim=8,
                                      head_units=0, backbone=backbone, branch_at=1, branches=BRANCHES),
                          learning_rate=1e-2, weighting="gradnorm")
    shared = build_model(tasks, input_shape=(32, 32, 3), widths=(8, 16), depths=1, embedding_dim=8, head_units=0,
                         backbone=backbone)
    assert model.branches == {"face": ("age", "gender"), "expression": ("expression",)}
    assert len(model.backbone.outputs) == 2 and model.count_params() > shared.count_params()
    prefix = "block2_conv1" if backbone == "vgg" else "stage2_block1_conv1"
    face, expr = (model.backbone.get_layer(f"{g}_{prefix}") for g in ("face", "expression"))
    assert face is not expr and face.filters == expr.filters == 16
    assert model.shared_kernel() is model.backbone.get_layer(model.backbone.shared_layer).kernel
    # a task's loss moves its own group's late layers only; the shared blocks get every task's gradient
    x = np.random.default_rng(0).random((4, 32, 32, 3)).astype("float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True)[2] * tf.range(7, dtype="float32"))  # expression
    grads = tape.gradient(loss, [expr.kernel, face.kernel, model.shared_kernel()])
    assert float(tf.norm(grads[0])) > 0 and grads[1] is None and float(tf.norm(grads[2])) > 0
    if backbone == "residual":
        return  # training, saving, exporting and explaining a branched model: shown once, on the VGG backbone
    ds = make_dataset([make_source("synthetic:lab?n=64"), make_source("synthetic:portraits?n=64")], tasks,
                      batch_size=16, image_size=(32, 32))
    history = model.fit(ds, epochs=2, steps_per_epoch=3, verbose=0).history  # GradNorm on the last shared layer
    assert np.isfinite(history["loss"]).all() and "weight_expression" in history
    model.save(tmp_path / "b.keras")
    again = load_model(tmp_path / "b.keras")
    assert again.branches == model.branches and again.backbone.branch_at == 1
    for a, b in zip(model.predict(x, verbose=0), again.predict(x, verbose=0)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    path = export_model(again, base=tmp_path / "exports", name="branched")
    out = tf.saved_model.load(str(path)).signatures["serving_float"](images=x)
    np.testing.assert_allclose(out["expression_probs"].numpy(), again.predict(x, verbose=0)[2], atol=1e-5)
    assert last_conv_layer(again, "expression").startswith("expression_")
    assert last_conv_layer(again, "age").startswith("face_")
    maps = explain(again, x, "expression", method="gradcam++")
    assert maps.shape == (4, 32, 32) and maps.std() > 0


def test_branches_from_a_config_and_their_errors(tmp_path):
    report = train_run({"tasks": ["gender", "expression"], "sources": ["synthetic:lab?n=32", "synthetic:portraits?n=32"],
                        "model": {"input_shape": [24, 24, 3], "widths": [8, 8], "depths": [1, 1], "embedding_dim": 8,
                                  "branch_at": 2},  # every block shared: only the embedding per task
                        "training": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 16, "weighting": "dynamic"}},
                       tmp_path / "run", verbose=0)
    model = load_model(tmp_path / "run" / "model.keras")
    assert model.branches == {"gender": ("gender",), "expression": ("expression",)} and report["epochs_done"] == 1
    base = {"tasks": ["gender", "expression"], "sources": ["synthetic:lab"]}
    for model_cfg, key, match in (
            ({"branch_at": 5}, "model.branch_at", r"1 \.\.\. 4, got 5"),
            ({"branches": {"a": ["gender"], "b": ["expression"]}}, "model.branch_at", "number of shared blocks"),
            ({"branch_at": 2, "branches": {"a": ["gender"]}}, "model.branches", "every task in exactly one group"),
            ({"branch_at": 2, "branches": {"a": ["gender", "age"], "b": ["expression"]}}, "model.branches",
             "'age' is not a task")):
        with pytest.raises(ConfigError, match=rf"'{key}'.*{match}"):
            resolve_config({**base, "model": model_cfg})
    with pytest.raises(ValueError, match="branch_at: needs a registered backbone"):
        build_model(resolve_tasks(["gender"]), backbone=make_backbone("vgg", input_shape=(16, 16, 3)), branch_at=1)
