import math

import numpy as np
import pytest
import tensorflow as tf

from kfacemtl.data import augment_batch, augment_options, make_dataset, make_source
from kfacemtl.data.augment import warp_batch
from kfacemtl.tasks import resolve_tasks

GEOMETRY = {"zoom": 0.2, "rotate": 15.0}


def _images(n=4, size=12, seed=0):
    return tf.constant(np.random.default_rng(seed).random((n, size, size, 3)).astype("float32"))


def test_no_zoom_and_no_turn_is_the_light_augmentation_to_the_bit():
    images, seed = _images(), tf.constant([2, 5], tf.int64)
    np.testing.assert_array_equal(augment_batch(images, seed, zoom=0.0, rotate=0.0).numpy(),
                                  augment_batch(images, seed).numpy())


def test_warp_leaves_the_image_at_zoom_one_and_no_turn_and_turns_a_quarter_as_rot90():
    images = _images(3, 9)
    ones, zeros = tf.ones((3, 1, 1)), tf.zeros((3, 1, 1))
    np.testing.assert_allclose(warp_batch(images, ones, zeros).numpy(), images.numpy(), atol=1e-6)
    for size in (8, 9):  # the centre between pixels and on one
        x = _images(2, size)
        turned = warp_batch(x, tf.ones((2, 1, 1)), tf.fill((2, 1, 1), math.pi / 2)).numpy()
        np.testing.assert_allclose(turned, np.rot90(x.numpy(), k=1, axes=(1, 2)), atol=1e-5)


def test_warp_zooms_about_the_centre_and_is_black_outside():
    size = 9
    ramp = tf.constant(np.tile(np.arange(size, dtype="float32")[None, None, :, None], (1, size, 1, 1)))
    zoomed_in = warp_batch(ramp, tf.fill((1, 1, 1), 2.0), tf.zeros((1, 1, 1))).numpy()[0, 0, :, 0]
    np.testing.assert_allclose(zoomed_in, 4 + (np.arange(size) - 4) / 2, atol=1e-5)  # half the slope, same centre
    zoomed_out = warp_batch(ramp + 1, tf.fill((1, 1, 1), 0.5), tf.zeros((1, 1, 1))).numpy()[0, 4, :, 0]
    assert zoomed_out[0] == 0 and zoomed_out[-1] == 0  # beyond the image: black
    np.testing.assert_allclose(zoomed_out[2:7], 1 + 4 + (np.arange(2, 7) - 4) * 2, atol=1e-5)


def test_zoom_and_turn_draw_per_image_repeat_with_their_seed_and_compile_with_xla():
    images, seed = _images(6), tf.constant([3, 9], tf.int64)
    out = augment_batch(images, seed, **GEOMETRY).numpy()
    np.testing.assert_array_equal(out, augment_batch(images, seed, **GEOMETRY).numpy())
    assert not np.allclose(out, augment_batch(images, seed).numpy())
    assert not np.allclose(out, augment_batch(images, tf.constant([3, 10], tf.int64), **GEOMETRY).numpy())
    np.testing.assert_allclose(augment_batch(images, seed, compiled=True, **GEOMETRY).numpy(), out, atol=1e-5)
    assert out.min() >= 0 and out.max() <= 1


@pytest.mark.parametrize("value,match", [
    ("yes", "expected true, false or a mapping"),
    ({"shear": 0.1}, "^shear: unknown key"),
    ({"zoom": 0.5}, r"^zoom: expected a fraction in \[0, 0.5\)"),
    ({"rotate": -1}, r"^rotate: expected a number of degrees in \[0, 45\]"),
    ({"zoom": True}, "^zoom: expected a fraction"),
])
def test_bad_options_name_the_option(value, match):
    with pytest.raises((ValueError, TypeError), match=match):
        augment_options(value)


def test_the_training_pipeline_zooms_and_turns_when_asked():
    sources, tasks = [make_source("synthetic:lab?n=16")], resolve_tasks(["gender"])

    def first(augment):
        ds = make_dataset(sources, tasks, batch_size=8, image_size=(24, 24), augment=augment, seed=1)
        return next(iter(ds))[0].numpy()
    light, geometric = first(True), first(GEOMETRY)
    assert light.shape == geometric.shape == (8, 24, 24, 3)
    assert not np.allclose(light, geometric)
    np.testing.assert_array_equal(geometric, first(dict(GEOMETRY)))  # the same seed, the same images


def test_warp_equals_keras_affine_transform():
    import keras
    images = _images(5, 16, seed=3)
    rng = np.random.default_rng(1)
    zoom = rng.uniform(0.8, 1.25, (5, 1, 1)).astype("float32")
    angle = rng.uniform(-0.3, 0.3, (5, 1, 1)).astype("float32")
    c = (16 - 1) / 2
    cos, sin = np.cos(angle[:, 0, 0]) / zoom[:, 0, 0], np.sin(angle[:, 0, 0]) / zoom[:, 0, 0]
    # output (x, y) reads the input at (cos·x − sin·y + b0, sin·x + cos·y + b1): the turn about the centre
    transform = np.stack([cos, -sin, c - cos * c + sin * c, sin, cos, c - sin * c - cos * c,
                          np.zeros(5), np.zeros(5)], 1).astype("float32")
    expected = keras.ops.image.affine_transform(images, transform, interpolation="bilinear", fill_mode="constant")
    np.testing.assert_allclose(warp_batch(images, tf.constant(zoom), tf.constant(angle)).numpy(),
                               np.asarray(expected), atol=1e-5)
