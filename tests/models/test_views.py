"""Views of a face: the transforms in one batched op, and a model's answers averaged over them."""
import numpy as np
import pytest

from helpers import tiny_model
from kfacemtl.models.views import TTA_VIEWS, transform_batch, transform_boxes, tta_views, view_predictor


def _images(b=3, size=16, seed=0):
    return np.random.default_rng(seed).random((b, size, size, 3)).astype("float32")


def test_transform_batch_identity_flip_zoom_and_shift():
    x = _images()
    out = transform_batch(x, transform_boxes([(False, 1.0, 0.0, 0.0), (True, 1.0, 0.0, 0.0),
                                              (False, 2.0, 0.0, 0.0), (False, 1.0, 4 / 15, 0.0)])).numpy()
    assert out.shape == (12, 16, 16, 3)  # transform-major: T blocks of B
    np.testing.assert_allclose(out[0:3], x, atol=1e-6)
    np.testing.assert_allclose(out[3:6], x[:, :, ::-1], atol=1e-6)
    # x2 zoom: the box [0.25, 0.75] of a 16-pixel side samples pixel coordinates 3.75 ... 11.25, bilinearly
    centre = out[6:9]
    coords = np.linspace(0.25 * 15, 0.75 * 15, 16)
    lo, frac = np.floor(coords).astype(int), coords - np.floor(coords)
    rows = x[:, lo] * (1 - frac)[None, :, None, None] + x[:, lo + 1] * frac[None, :, None, None]
    expected = rows[:, :, lo] * (1 - frac)[None, None, :, None] + rows[:, :, lo + 1] * frac[None, None, :, None]
    np.testing.assert_allclose(centre, expected, atol=1e-5)
    # content shifted right by 4 pixels (box coordinates span W - 1 pixels): fill (0), then the image's left part
    shifted = out[9:12]
    assert np.all(shifted[:, :, :4] == 0)
    np.testing.assert_allclose(shifted[:, :, 4:], x[:, :, :12], atol=1e-5)


def test_bad_transforms_name_the_argument():
    with pytest.raises(ValueError, match=r"^transforms\[1\]: expected a scale in \[0.25, 4\]"):
        transform_boxes([(False, 1.0, 0.0, 0.0), (False, 10.0, 0.0, 0.0)])


def test_flip_views_average_the_face_and_its_mirror_for_every_output():
    model = tiny_model(["age", "gender", "action_units"])
    x = _images(size=64)
    plain = [o.numpy() for o in model(x, training=False)]
    mirrored = [o.numpy() for o in model(x[:, :, ::-1], training=False)]
    out = view_predictor(model, TTA_VIEWS["flip"])(x)
    assert len(out) == 3
    for (mean, spread), p, m in zip(out, plain, mirrored):
        np.testing.assert_allclose(mean.numpy(), (p + m) / 2, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(spread.numpy(), (np.abs(p - m) / 2).mean(-1), rtol=1e-4, atol=1e-5)
        assert not np.allclose(p, m)  # the mirror is another view: the test would notice a skipped one


def test_tta_names_are_checked():
    assert tta_views(None) is None and len(tta_views("six")) == 6
    with pytest.raises(ValueError, match=r"^tta: expected one of \('none', 'flip', 'six'\), got 'mirror'"):
        tta_views("mirror")
