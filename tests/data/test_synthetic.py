import numpy as np

from kfacemtl.data import synthetic
from kfacemtl.data.synthetic import DOMAINS, generate, load_split, render_faces, sample_factors
from kfacemtl.data.synthetic.factors import AU_INDEX
from kfacemtl.tasks import ACTION_UNITS, EXPRESSION_CLASSES


def test_deterministic_serial_or_parallel_and_splits_hold_different_people():
    a, la = generate("lab", 600, seed=1, workers=1)
    b, lb = generate("lab", 600, seed=1, workers=2)
    assert np.array_equal(a, b) and all(np.array_equal(la[k], lb[k]) for k in la)
    assert a.shape == (600, 64, 64, 3) and a.dtype == np.uint8
    c, _ = generate("lab", 600, seed=2, workers=1)
    assert not np.array_equal(a, c)
    # the same identity id in train and test is a different person (different geometry)
    rng = np.random.default_rng(0)
    tr = sample_factors(64, DOMAINS["portraits"], rng, split="train")
    te = sample_factors(64, DOMAINS["portraits"], np.random.default_rng(0), split="test")
    assert np.array_equal(tr["identity"], te["identity"]) and not np.allclose(tr["face_w"], te["face_w"])


def test_labels_are_complete_and_in_range():
    _, lab = generate("street", 300, split="test", workers=1)
    assert set(lab) == set(synthetic.LABEL_KEYS)
    assert lab["action_units"].shape == (300, len(ACTION_UNITS))
    assert set(np.unique(lab["gender"])) <= {0, 1} and set(np.unique(lab["race"])) <= set(range(5))
    assert lab["expression"].min() >= 0 and lab["expression"].max() < len(EXPRESSION_CLASSES)
    assert np.all(np.abs(lab["valence_arousal"]) <= 1) and lab["age"].min() >= 1
    # neutral faces mostly show no AU; happy faces mostly show AU12
    neutral = lab["expression"] == EXPRESSION_CLASSES.index("neutral")
    happy = lab["expression"] == EXPRESSION_CLASSES.index("happy")
    assert lab["action_units"][neutral].sum(1).mean() < 1.0
    assert lab["action_units"][happy, AU_INDEX["AU12"]].mean() > 0.7
    # valence follows expression
    assert lab["valence_arousal"][happy, 0].mean() > 0.3 > lab["valence_arousal"][neutral, 0].mean()


def test_expression_lives_in_the_expression_regions():
    """Turning on one AU changes pixels mostly inside the facial-feature regions (about a fifth
    of the image): where that AU lives on a real face."""
    dom = DOMAINS["lab"]
    f = sample_factors(32, dom, np.random.default_rng(3))
    f["au_intensity"][:] = 0
    f["occluder"][:] = 0
    plain, regions = render_faces(f, dom, np.random.default_rng(4), regions=True)
    assert regions["expression"].mean() < 0.25 and regions["mouth"].mean() < 0.05  # measured 0.21, 0.03
    for au in ACTION_UNITS:
        g = {k: v.copy() for k, v in f.items()}
        g["au_intensity"][:, AU_INDEX[au]] = 1.0
        moved, moved_regions = render_faces(g, dom, np.random.default_rng(4), regions=True)
        diff = np.abs(plain.astype(int) - moved.astype(int)).sum(-1)
        inside = (diff * (regions["expression"] | moved_regions["expression"])).sum()
        assert diff.sum() > 0, au
        assert inside / diff.sum() > 0.6, au  # measured 0.62 (AU9, AU12) to 1.0 (AU17)


def test_grayscale_domain_and_cache(tmp_path):
    for domain in ("cctv", "webcam"):  # cctv: the street domain through a gray camera, never labelled
        img, _ = generate(domain, 8, workers=1)
        assert np.array_equal(img[..., 0], img[..., 1]) and np.array_equal(img[..., 1], img[..., 2])
    assert DOMAINS["cctv"].labels == () and DOMAINS["street"].color and not DOMAINS["cctv"].color
    a, la = load_split("webcam", 8, cache_dir=tmp_path)
    files = list(tmp_path.glob("*.npz"))
    assert len(files) == 1
    b, lb = load_split("webcam", 8, cache_dir=tmp_path)
    assert np.array_equal(a, b) and np.array_equal(a, img)
    files[0].write_bytes(b"broken")  # a damaged cache is rendered again, not trusted
    c, _ = load_split("webcam", 8, cache_dir=tmp_path)
    assert np.array_equal(c, img)
