"""Face detection and alignment: the similarity transform, cutting faces from photos, the detectors."""
import math

import numpy as np
import pytest
import tensorflow as tf

from helpers import REAL_DATA
from kfacemtl.data.alignment import LANDMARKS, TEMPLATE, align_faces, landmarks_in_crop, similarity, template_points
from kfacemtl.data.detection import DETECTORS, MTCNNDetector, as_rgb, make_detector
from kfacemtl.data.synthetic import generate


def _rotation(angle, scale, shift):
    c, s = scale * math.cos(angle), scale * math.sin(angle)
    return np.array([[c, -s, shift[0]], [s, c, shift[1]]])


def _apply(m, points):
    return points @ m[:, :2].T + m[:, 2]


def test_similarity_recovers_a_rotation_scale_and_shift_and_is_least_squares_with_noise():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 50, (5, 2))
    m = _rotation(0.4, 2.5, (30, -7))
    np.testing.assert_allclose(similarity(src, _apply(m, src)), m, atol=1e-9)
    noisy = _apply(m, src) + rng.normal(0, 0.5, (5, 2))
    fit = similarity(src, noisy)
    best = np.sum((_apply(fit, src) - noisy) ** 2)
    assert best < np.sum((_apply(m, src) - noisy) ** 2)  # the fit is at least as close as the truth
    mirrored = src * [-1, 1]  # no reflection: a mirror image cannot be matched exactly
    assert np.sum((_apply(similarity(src, mirrored), src) - mirrored) ** 2) > 1


def test_similarity_and_alignment_name_what_is_wrong():
    with pytest.raises(ValueError, match=r"target: expected 3 \(x, y\) points"):
        similarity(np.zeros((3, 2)) + [[0, 0], [1, 0], [0, 1]], np.zeros((4, 2)))
    with pytest.raises(ValueError, match="coincide"):
        similarity(np.ones((5, 2)), np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"landmarks: expected shape \(faces, 5, 2\).*left_eye, right_eye"):
        align_faces(np.zeros((10, 10, 3), np.uint8), np.zeros((5, 2)))
    with pytest.raises(ValueError, match="image: expected a uint8 array"):
        align_faces(np.zeros((10, 10, 3), np.float32), np.zeros((1, 5, 2)))


def test_a_face_rotated_and_enlarged_in_a_photo_is_cut_back_to_its_crop():
    crop = generate("portraits", 1, seed=3)[0][0]  # a 64x64 face, cut like the training crops
    m = _rotation(math.radians(25), 3.0, (150, 90))  # crop pixel -> photo pixel
    inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2]  # photo pixel -> crop pixel, as the warp wants it
    photo = tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.constant(crop[None], tf.float32), transforms=tf.constant([[*inv[0], *inv[1], 0, 0]], tf.float32),
        output_shape=[400, 500], fill_value=0.0, interpolation="BILINEAR", fill_mode="CONSTANT")
    photo = tf.cast(tf.round(photo[0]), tf.uint8).numpy()
    landmarks = _apply(m, template_points((64, 64)))
    back = align_faces(photo, landmarks[None], (64, 64)).numpy()[0]
    error = np.abs(back - crop / 255.0)[4:-4, 4:-4].mean()  # (the border rotated in from outside the face)
    assert error < 0.03, error
    other = align_faces(photo, _apply(m, template_points((64, 64)) + 6)[None], (64, 64)).numpy()[0]
    assert np.abs(other - crop / 255.0)[4:-4, 4:-4].mean() > 2 * error  # landmarks 6 px off: another cut


def test_alignment_of_several_faces_gray_photos_and_none():
    photo = np.zeros((120, 200, 1), np.uint8)
    photo[:, 100:] = 200
    left, right = template_points((60, 60)) + [10, 30], template_points((60, 60)) + [120, 30]
    faces = align_faces(photo, np.stack([left, right]), (32, 32)).numpy()
    assert faces.shape == (2, 32, 32, 3) and faces[0].max() == 0 and faces[1].min() > 0.7
    assert align_faces(photo, np.zeros((0, 5, 2)), (32, 32)).shape == (0, 32, 32, 3)


def test_template_points_and_crop_fractions_invert_each_other():
    assert TEMPLATE.shape == (len(LANDMARKS), 2)
    assert np.all(TEMPLATE[0] < TEMPLATE[1] + [0, 1e-6]) and TEMPLATE[2, 1] < TEMPLATE[3, 1]  # eyes, nose, mouth
    np.testing.assert_allclose(landmarks_in_crop(template_points((48, 64))[None], (48, 64))[0], TEMPLATE, atol=1e-6)


def test_detectors_are_registered_and_check_their_options():
    assert set(DETECTORS) >= {"mtcnn", "whole"}
    with pytest.raises(ValueError, match="detector: expected one of mtcnn, whole"):
        make_detector("haar")
    with pytest.raises(ValueError, match="min_face_size: expected at least 12"):
        MTCNNDetector(min_face_size=5)
    with pytest.raises(ValueError, match=r"photo: expected shape \(height, width, 1\|3\|4\)"):
        as_rgb(np.zeros((4, 4, 2), np.uint8))
    whole = make_detector("whole").detect([np.zeros((30, 20, 3), np.uint8)])[0][0]
    np.testing.assert_allclose(whole.landmarks, template_points((30, 20)))


def _real_faces(n):
    paths = sorted((REAL_DATA / "utkface" / "UTKFace").glob("*.jpg"))[:n]
    if len(paths) < n:
        pytest.skip(f"the real data is not at {REAL_DATA} (set KFACEMTL_DATA)")
    return [tf.io.decode_image(tf.io.read_file(str(p)), channels=3).numpy() for p in paths]


def test_mtcnn_finds_faces_in_a_batch_of_photos_of_mixed_sizes_and_maps_shrunk_photos_back():
    faces = _real_faces(3)
    photos = [np.pad(f, ((40, 40), (60, 60), (0, 0)), constant_values=90) for f in faces]
    big = tf.cast(tf.image.resize(photos[0], (1100, 1300)), tf.uint8).numpy()  # shrunk to 400 px for detection
    blank = np.full((100, 100, 3), 128, np.uint8)
    detector = MTCNNDetector(max_side=400)
    found = detector.detect(photos + [big, blank])
    assert [len(f) for f in found] == [1, 1, 1, 1, 0]
    for face in [f[0] for f in found[:3]]:
        x, y, w, h = face.box
        assert 40 <= x + w / 2 <= 150 and 20 <= y + h / 2 <= 120 and face.score > 0.9
        assert face.landmarks[0, 0] < face.landmarks[1, 0] and face.landmarks[2, 1] < face.landmarks[3, 1]
    scale = np.array([1300 / 184, 1100 / 144])  # the enlarged photo's faces, in its own pixels
    np.testing.assert_allclose(found[3][0].landmarks / scale, found[0][0].landmarks, atol=3)
    # with this face's own landmarks (as fractions of its crop) as the template, the cut is the dataset's crop again
    own = landmarks_in_crop((found[0][0].landmarks - [60, 40])[None], (64, 64))[0]
    crop = align_faces(photos[0], found[0][0].landmarks[None], (64, 64), template=own).numpy()[0]
    assert np.abs(crop - faces[0] / 255.0).mean() < 0.02
    assert sorted(found[0][0].to_dict()["landmarks"]) == sorted(LANDMARKS)
    # a larger minimum face (mtcnn 1.0.0 alone finds nothing above about 24 px): the photo is shrunk instead
    assert [len(f) for f in MTCNNDetector(min_face_size=40).detect([big, photos[0]])] == [1, 1]
    large = MTCNNDetector(min_face_size=100).detect([big, photos[0]])
    assert [len(f) for f in large] == [1, 0]  # a face of about 60 pixels is below the minimum
    np.testing.assert_allclose(large[0][0].landmarks, found[3][0].landmarks, atol=12)


def test_any_source_can_be_aligned_with_its_labels_kept(tmp_path, monkeypatch):
    from kfacemtl.data import make_source
    from kfacemtl.errors import ConfigError
    from kfacemtl.tasks import resolve_tasks
    monkeypatch.setenv("KFACEMTL_CACHE", str(tmp_path / "cache"))
    plain = make_source("synthetic:lab?n=6")
    aligned = make_source("synthetic:lab?n=6&align=whole&align_size=32")
    assert len(aligned) == 6 and aligned.images().shape == (6, 32, 32, 3)
    tasks = resolve_tasks(["expression", "action_units"])
    for a, b in zip(aligned.labels(tasks), plain.labels(tasks)):
        for k in a:
            np.testing.assert_array_equal(a[k], b[k])
    assert list((tmp_path / "cache" / "aligned").glob("lab-train-*.npz"))  # kept for the next run
    with pytest.raises(ConfigError, match="'sources.align': expected one of mtcnn, whole"):
        make_source("synthetic:lab?n=6&align=haar")
    with pytest.raises(ConfigError, match="'sources.align_size': needs align"):
        make_source("synthetic:lab?n=6&align_size=64")
    with pytest.raises(ConfigError, match="'sources.align_size': expected a whole number of pixels of at least 16"):
        make_source("synthetic:lab?n=6&align=whole&align_size=8")


def test_raw_photos_train_on_the_faces_serving_cuts(tmp_path, monkeypatch):
    from helpers import write_png
    from kfacemtl.data import make_source
    monkeypatch.setenv("KFACEMTL_CACHE", str(tmp_path / "cache"))
    faces = _real_faces(2)
    for i, face in enumerate(faces):
        write_png(tmp_path / "photos" / f"p{i}.png", np.pad(face, ((50, 30), (20, 70), (0, 0)), constant_values=60))
    write_png(tmp_path / "photos" / "p2.png", np.full((120, 120, 3), 60, np.uint8))  # nobody in it
    with pytest.warns(UserWarning, match=r"no face found in 1 of 3 images; left out, e.g. \['2 \(.*p2.png\)'\]"):
        source = make_source(f"images:{tmp_path / 'photos'}?align=mtcnn&align_size=64")
        assert len(source) == 2
    assert source.rows.tolist() == [0, 1] and source.describe()["left_out"] == 1
    detector = MTCNNDetector()
    for photo, crop in zip(faces, source.images()):
        padded = np.pad(photo, ((50, 30), (20, 70), (0, 0)), constant_values=60)
        expected = align_faces(padded, detector.detect([padded])[0][0].landmarks[None], (64, 64)).numpy()[0]
        assert np.abs(crop / 255.0 - expected).max() < 1 / 255 + 1e-6  # the cut serving makes, rounded to uint8
    monkeypatch.setattr(MTCNNDetector, "detect", lambda self, photos: pytest.fail("detected again"))
    again = make_source(f"images:{tmp_path / 'photos'}?align=mtcnn&align_size=64")
    np.testing.assert_array_equal(again.images(), source.images())  # read from the cache
