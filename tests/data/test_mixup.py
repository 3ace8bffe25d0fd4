"""Mixup for partially labelled batches: the blended image and its blended, masked targets."""
import numpy as np
import pytest
import tensorflow as tf

from kfacemtl.data import make_dataset, make_source
from kfacemtl.data.mixup import mix_batch
from kfacemtl.tasks import resolve_tasks

TASKS = resolve_tasks(["gender", "age"])


def _batch(n=64, seed=0):
    """Images whose three channels hold, as constants, the row's gender, whether its age is labelled, and
    labelled × age / 100: a blend of two images is then the blend the targets must follow."""
    rng = np.random.default_rng(seed)
    gender, labelled, age = rng.integers(0, 2, n), rng.integers(0, 2, n).astype("float32"), rng.uniform(1, 90, n)
    x = np.ones((n, 4, 4, 3)) * np.stack([gender, labelled, labelled * age / 100], -1)[:, None, None, :]
    y = {"gender": tf.constant(gender), "age": tf.constant(np.where(labelled > 0, age, 0.0)[:, None], tf.float32)}
    w = {"gender": tf.ones(n), "age": tf.constant(labelled)}
    return tf.constant(x, tf.float32), y, w


def test_each_target_is_the_blend_of_the_labels_the_image_blends_weighted_by_their_shares():
    x, y, w = _batch()
    mx, my, mw = mix_batch(x, y, w, TASKS, alpha=1.0, seed=tf.constant([3, 4], tf.int64))
    pixel = mx.numpy()[:, 0, 0, :]
    assert ((pixel[:, 0] > 0.01) & (pixel[:, 0] < 0.99)).sum() > 10  # many images are true blends
    np.testing.assert_allclose(my["gender"].numpy()[:, 1], pixel[:, 0], atol=1e-5)  # P(female) = her share
    np.testing.assert_allclose(mw["gender"].numpy(), 1.0, atol=1e-6)  # both labelled: the whole weight
    np.testing.assert_allclose(mw["age"].numpy(), pixel[:, 1], atol=1e-5)  # the labelled ages' share of the image
    np.testing.assert_allclose(my["age"].numpy()[:, 0] * mw["age"].numpy(), pixel[:, 2] * 100, atol=1e-3)
    assert (mw["age"].numpy() == 0).any() and (np.diff(np.sort(pixel[:, 1])) > 0).any()
    again = mix_batch(x, y, w, TASKS, alpha=1.0, seed=tf.constant([3, 4], tf.int64))[0]
    np.testing.assert_array_equal(again.numpy(), mx.numpy())  # the same seed, the same batch


def test_a_small_alpha_mostly_keeps_one_image_and_a_large_one_blends_halves():
    x, y, w = _batch(256)
    share = {a: mix_batch(x, y, w, TASKS, alpha=a, seed=tf.constant([1, 2], tf.int64))[1]["gender"].numpy()
             for a in (0.1, 10.0)}
    # how far each target is from half and half (where the two faces' genders differ): 1 one face, 0 halves
    own = {a: np.abs(p[:, 1] - p[:, 0]) for a, p in share.items()}
    differ = (own[0.1] < 1 - 1e-6) | (own[10.0] < 1 - 1e-6)
    assert differ.sum() > 50 and own[0.1][differ].mean() > own[10.0][differ].mean() + 0.3, (
        own[0.1][differ].mean(), own[10.0][differ].mean())


def test_the_training_pipeline_mixes_and_evaluation_does_not():
    sources = [make_source("synthetic:portraits?n=32")]
    train = next(iter(make_dataset(sources, TASKS, batch_size=16, image_size=(16, 16), mixup=0.4)))
    assert train[1]["gender"].shape == (16, 2)  # distributions
    plain = next(iter(make_dataset(sources, TASKS, batch_size=16, image_size=(16, 16))))
    assert plain[1]["gender"].shape == (16,)
    evaluated = next(iter(make_dataset(sources, TASKS, batch_size=16, image_size=(16, 16), training=False,
                                       mixup=0.4)))
    assert evaluated[1]["gender"].shape == (16,)
    with pytest.raises(ValueError, match="^mixup: expected Beta"):
        make_dataset(sources, TASKS, mixup=-0.1)
