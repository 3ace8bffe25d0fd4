import subprocess
import sys

import numpy as np
import pytest

from kfacemtl.errors import ConfigError
from kfacemtl.models import TaskOutput, build_model, count_flops, load_model, model_tasks
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training.config import resolve_config
from kfacemtl.training import compile_model

TASKS = resolve_tasks(None)


def test_outputs_are_a_list_in_task_order_named_after_tasks():
    model = build_model(TASKS, widths=(8, 16), depths=1)
    assert model.output_names == [t.name for t in TASKS]
    assert [o.shape[-1] for o in model.outputs] == [1, 2, 5, 7, 14, 2]
    assert all(isinstance(model.get_layer(t.name), TaskOutput) for t in TASKS)
    assert model_tasks(model) == TASKS
    x = np.random.default_rng(0).random((3, 64, 64, 3)).astype("float32")
    out = model.predict_dict(x, verbose=0)
    np.testing.assert_allclose(out["expression"].sum(-1), 1, atol=1e-5)
    assert np.all((out["action_units"] > 0) & (out["action_units"] < 1))
    # the backbone's conv layers are reachable (saliency needs the last one)
    assert any(layer.name == "block2_conv1" for layer in model.backbone.layers)
    assert count_flops(model) > 0


def test_keras_round_trip_in_a_fresh_process(tmp_path):
    model = compile_model(build_model(TASKS, widths=(8, 16), depths=1))
    x = np.random.default_rng(1).random((4, 64, 64, 3)).astype("float32")
    ref = model.predict(x, verbose=0)
    model.save(tmp_path / "m.keras")
    np.save(tmp_path / "x.npy", x)
    code = f"""
import numpy as np, kfacemtl
m = kfacemtl.load_model({str(tmp_path / 'm.keras')!r})
assert type(m).__name__ == 'MultiTaskModel' and m.output_names == {model.output_names!r}
assert m.loss[0].normalization == 'mean_with_sample_weight'
out = m.predict(np.load({str(tmp_path / 'x.npy')!r}), verbose=0)
np.savez({str(tmp_path / 'out.npz')!r}, *out)
print([t.name for t in kfacemtl.model_tasks(m)])
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    with np.load(tmp_path / "out.npz") as z:
        for i, r in enumerate(ref):
            np.testing.assert_array_equal(z[f"arr_{i}"], r)
    assert "valence_arousal" in run.stdout
    # the reloaded model has the same tasks in a plain load too
    assert model_tasks(load_model(tmp_path / "m.keras", compile=False)) == TASKS


def test_pooling_is_a_backbone_option_with_a_clear_error():
    names = lambda m: {layer.name for layer in m.layers}  # noqa: E731
    assert "flatten" in names(build_model(TASKS[:1], widths=(8, 16), depths=1))  # default keeps feature positions
    assert "gap" in names(build_model(TASKS[:1], widths=(8, 16), depths=1, pooling="avg"))
    with pytest.raises(ValueError, match="pooling: expected one of"):
        build_model(TASKS[:1], widths=(8, 16), depths=1, pooling="max")
    with pytest.raises(ConfigError, match="model.pooling"):  # a config names the key
        resolve_config({"sources": ["synthetic:lab"], "model": {"pooling": "max"}})


def test_model_files_load_in_safe_mode_so_they_cannot_run_code(tmp_path):
    import keras
    inputs = keras.Input((4,))
    outputs = keras.layers.Lambda(lambda t: t * 2.0)(inputs)  # a Lambda layer's code travels as Python bytecode
    keras.Model(inputs, outputs).save(tmp_path / "lambda.keras")
    with pytest.raises(ValueError, match="safe_mode"):
        load_model(tmp_path / "lambda.keras")


def test_fit_traces_the_train_step_once():
    # Keras creates Adam's slots inside the first step unless they exist; TensorFlow then traces the step twice.
    import tensorflow as tf
    model = compile_model(build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1))
    traced = []
    step = model.train_step
    model.train_step = lambda data: (traced.append(1), step(data))[1]
    ds = tf.data.Dataset.from_tensors((np.zeros((2, 16, 16, 3), "float32"), {"gender": np.zeros(2, "int32")}))
    model.fit(ds.repeat(), epochs=2, steps_per_epoch=2, verbose=0)
    assert len(traced) == 1 and model.optimizer.built


@pytest.mark.parametrize("jit", [False, True])
def test_the_train_step_augments_its_batch_when_asked(jit):
    # One step of a model that augments in its step = one step of the same model on the images augmented beforehand
    # with augment_batch and the step's seed (seed, optimizer step 0, replica 0): the step applies exactly that.
    import keras
    import tensorflow as tf

    from kfacemtl.data import augment_batch
    tasks = resolve_tasks(["gender", "age"])
    rng = np.random.default_rng(0)
    x = rng.random((8, 16, 16, 3)).astype("float32")
    y = {"gender": rng.integers(0, 2, 8).astype("float32"), "age": rng.uniform(1, 80, 8).astype("float32")}
    w = {k: np.ones(8, "float32") for k in y}

    def one_step(augment_seed, images):
        keras.utils.set_random_seed(1)
        model = compile_model(build_model(tasks, input_shape=(16, 16, 3), widths=(4,), depths=1, embedding_dim=4,
                                          head_units=4, dropout=0.0), "sgd", 0.1, jit_compile=jit)
        # (SGD: Adam's first step is lr · sign(gradient), which float noise in a near-zero gradient flips)
        model.set_augmentation(augment_seed)
        model.fit(tf.data.Dataset.from_tensors((images, y, w)), epochs=1, verbose=0)
        return model

    by_step = one_step(7, x)
    # (under XLA the same stateless seed draws other numbers than without: the augmentation compiled likewise)
    before = tf.function(augment_batch, jit_compile=jit)(
        tf.constant(x), tf.random.experimental.stateless_fold_in(tf.constant([7, 0], tf.int64), 0))
    beforehand, plain = one_step(None, before.numpy()), one_step(None, x)
    for a, b, c in zip(by_step.get_weights(), beforehand.get_weights(), plain.get_weights()):
        np.testing.assert_allclose(a, b, atol=1e-5)
    assert any(np.abs(a - c).max() > 1e-4 for a, c in zip(by_step.get_weights(), plain.get_weights()))
    assert int(by_step.optimizer.iterations) == 1  # the next step draws from (7, 1): another augmentation
    assert not np.allclose(by_step.augmented(tf.constant(x)).numpy(), before.numpy())
    by_step.set_augmentation(None)
    assert by_step.augmented(x) is x and by_step.train_function is None  # traced again, without it


def test_the_train_step_zooms_and_turns_when_asked():
    # the step's augmentation is augment_batch with the zoom and turn it was given (the step itself: the test above)
    import tensorflow as tf

    from kfacemtl.data import augment_batch
    model = build_model(resolve_tasks(["gender"]), input_shape=(16, 16, 3), widths=(4,), depths=1)
    model.compile("sgd")
    x = tf.constant(np.random.default_rng(0).random((4, 16, 16, 3)).astype("float32"))
    model.set_augmentation(3, zoom=0.2, rotate=15)
    seed = tf.random.experimental.stateless_fold_in(tf.constant([3, 0], tf.int64), 0)
    np.testing.assert_array_equal(model.augmented(x).numpy(), augment_batch(x, seed, zoom=0.2, rotate=15).numpy())
    assert not np.allclose(model.augmented(x).numpy(), augment_batch(x, seed).numpy())
