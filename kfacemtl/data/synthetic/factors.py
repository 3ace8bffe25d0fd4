"""The synthetic benchmark's domains and the latent factors of its faces (identity, age, gender, race, expression,
action units, valence/arousal, and the nuisance factors of pose, lighting and background).

Example:
    >>> import numpy as np
    >>> f = sample_factors(4, DOMAINS["lab"], np.random.default_rng(0))
    >>> f["action_units"].shape, DOMAINS["lab"].labels
    ((4, 14), ('expression', 'action_units'))
"""
from __future__ import annotations

import dataclasses
import hashlib

import numpy as np

from kfacemtl.tasks import ACTION_UNITS, EXPRESSION_CLASSES


SIZE = 64


ZOOM = 1.4  # face units → image units


CENTER_Y = 0.06  # the face point drawn at the image centre


AU_INDEX = {au: i for i, au in enumerate(ACTION_UNITS)}


# Prototypical AU combinations of the basic expressions (EMFACS / Ekman & Friesen).
PROTOTYPES = {
    "angry": ("AU4", "AU5", "AU7", "AU23"),
    "disgust": ("AU9", "AU15", "AU17"),
    "fear": ("AU1", "AU2", "AU4", "AU5", "AU20", "AU25"),
    "happy": ("AU6", "AU12", "AU25"),
    "sad": ("AU1", "AU4", "AU15"),
    "surprise": ("AU1", "AU2", "AU5", "AU26"),
    "neutral": (),
}


# Valence and arousal at full intensity (circumplex positions of the basic emotions).
EXPRESSION_VA = {
    "angry": (-0.6, 0.7), "disgust": (-0.65, 0.35), "fear": (-0.6, 0.8), "happy": (0.8, 0.45),
    "sad": (-0.7, -0.4), "surprise": (0.25, 0.85), "neutral": (0.0, 0.0),
}


# Skin tone means (RGB, 0..1) per race group, deliberately overlapping.
SKIN_TONE = np.array([[0.86, 0.70, 0.60], [0.42, 0.29, 0.21], [0.84, 0.69, 0.53],
                      [0.62, 0.45, 0.33], [0.70, 0.54, 0.42]], dtype="float32")


# Group-level feature tendencies: eye height, nose width, lip thickness, dark-hair probability.
RACE_FEATURES = np.array([[1.00, 1.00, 1.00, 0.45], [1.05, 1.30, 1.30, 0.97], [0.70, 1.05, 0.95, 0.97],
                          [1.05, 1.10, 1.05, 0.92], [0.90, 1.10, 1.10, 0.80]], dtype="float32")


@dataclasses.dataclass(frozen=True)
class Domain:
    """A rendering style plus the label availability of a real dataset.

    Args:
        name: the domain's name.
        labels: the tasks a training split of this domain is labelled for.
        color: colour (True) or grayscale rendering.
        resolution: the face is rendered then resampled through this resolution (webcams).
        pose: amount of pose variation (roll, yaw, scale, shift), 0 = frontal and centred.
        lighting: amount of lighting variation.
        background: ``plain``, ``studio`` or ``clutter``.
        noise: standard deviation of pixel noise.
        occluders: probability of an occluder (glasses, a hand-like patch).
        expression_probs: how often each expression appears (FER2013 order).
        age_range: ages drawn in this domain.
        identities: people in the training split (the test split has as many new ones).

    Example:
        >>> lab = DOMAINS["lab"]
        >>> lab.labels, lab.color
        (('expression', 'action_units'), True)
    """

    name: str
    labels: tuple
    color: bool = True
    resolution: int = SIZE
    pose: float = 0.5
    lighting: float = 0.5
    background: str = "studio"
    noise: float = 0.02
    occluders: float = 0.1
    expression_probs: tuple = (1 / 7,) * 7
    age_range: tuple = (1, 90)
    identities: int = 2000

    def to_config(self) -> dict:
        return dataclasses.asdict(self)


DOMAINS = {
    "portraits": Domain("portraits", ("age", "gender", "race"), color=True, pose=0.45, lighting=0.5,
                        background="studio", noise=0.02, occluders=0.1,
                        expression_probs=(0.04, 0.02, 0.03, 0.38, 0.05, 0.04, 0.44), identities=4000),
    "lab": Domain("lab", ("expression", "action_units"), color=True, pose=0.1, lighting=0.15,
                  background="plain", noise=0.01, occluders=0.0, age_range=(18, 60), identities=150),
    "webcam": Domain("webcam", ("expression",), color=False, resolution=32, pose=0.45, lighting=0.7,
                     background="studio", noise=0.04, occluders=0.15,
                     expression_probs=(0.14, 0.03, 0.14, 0.25, 0.17, 0.11, 0.16), identities=4000),
    "affect": Domain("affect", ("expression", "valence_arousal"), color=True, pose=0.5, lighting=0.7,
                     background="clutter", noise=0.03, occluders=0.15,
                     expression_probs=(0.12, 0.06, 0.08, 0.3, 0.12, 0.1, 0.22), identities=4000),
    "street": Domain("street", (), color=True, resolution=40, pose=1.0, lighting=1.0, background="clutter",
                     noise=0.04, occluders=0.3, identities=4000),
    # street faces through a gray, low-resolution camera: a shift that only webcam (labelled for expression) covers
    "cctv": Domain("cctv", (), color=False, resolution=32, pose=1.0, lighting=1.0, background="clutter",
                   noise=0.04, occluders=0.3, identities=4000),
}


LABELLED_DOMAINS = ("portraits", "lab", "webcam", "affect")


def _identity_rng(domain: str, split: str, identity: int) -> np.random.Generator:
    digest = hashlib.sha256(f"{domain}/{split}/{identity}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def sample_factors(n: int, domain: Domain, rng: np.random.Generator, split: str = "train") -> dict:
    """Draw the latent factors of ``n`` faces of a domain.

    People are fixed per (domain, split, identity): the same identity always has the same
    gender, race, skin, hair and face geometry. Train and test splits hold different people.

    Returns:
        A dict of numpy arrays, one row per face: the labels (``age``, ``gender``, ``race``,
        ``expression``, ``action_units`` (n, 14), ``valence_arousal`` (n, 2), ``identity``) and
        the rendering parameters.

    Example:
        >>> f = sample_factors(4, DOMAINS["portraits"], np.random.default_rng(0))
        >>> f["age"].shape, bool(((f["age"] >= 0) & (f["age"] <= 120)).all())
        ((4,), True)
    """
    ids = rng.integers(0, domain.identities, size=n)
    uniq = np.unique(ids)
    person = {}
    for i in uniq:
        r = _identity_rng(domain.name, split, int(i))
        gender = int(r.integers(0, 2))
        race = int(r.choice(5, p=(0.42, 0.19, 0.15, 0.17, 0.07)))
        lo, hi = domain.age_range
        # UTKFace-like: many young adults, a tail of children and elderly.
        age = float(np.clip(r.choice([r.uniform(lo, max(lo + 1, min(hi, 14))), r.normal(30, 9), r.uniform(lo, hi)],
                                     p=(0.12, 0.55, 0.33)), lo, hi))
        feat = RACE_FEATURES[race]
        person[int(i)] = dict(
            gender=gender, race=race, age=age,
            skin=np.clip(SKIN_TONE[race] + r.normal(0, 0.075) + r.normal(0, 0.02, 3), 0.1, 0.98),
            face_w=r.normal(0.50 + 0.03 * (1 - gender), 0.03), face_h=r.normal(0.64, 0.035),
            jaw=r.normal(0.85 + 0.12 * (1 - gender), 0.07),
            eye_sep=r.normal(0.20, 0.018), eye_y=r.normal(-0.10, 0.025),
            eye_w=r.normal(0.075, 0.008), eye_h=r.normal(0.036, 0.005) * feat[0],
            brow_t=max(0.012, r.normal(0.026 + 0.012 * (1 - gender), 0.006)),
            nose_len=r.normal(0.15, 0.02), nose_w=r.normal(0.05, 0.008) * feat[1],
            mouth_y=r.normal(0.30, 0.025), mouth_w=r.normal(0.14, 0.014), lip_t=r.normal(0.022, 0.004) * feat[2],
            lip_red=r.normal(0.12 + 0.10 * gender, 0.05),
            hair_len=r.normal(0.25 + 0.45 * gender, 0.22), hair_line=r.normal(-0.36, 0.05),
            hair_dark=float(r.random() < feat[3]), hair_hue=r.uniform(0, 1),
            beard=float(gender == 0 and age > 17 and r.random() < 0.3),
        )
    f = {k: np.array([person[int(i)][k] for i in ids], dtype="float32") for k in person[int(uniq[0])]}
    f["identity"] = ids.astype("int64")
    f["gender"] = f["gender"].astype("int64")
    f["race"] = f["race"].astype("int64")
    f["age"] = np.clip(f["age"] + rng.normal(0, 1.0, n), *domain.age_range).astype("float32")

    expr = rng.choice(7, size=n, p=np.asarray(domain.expression_probs) / np.sum(domain.expression_probs))
    intensity = rng.uniform(0.55, 1.0, n).astype("float32")
    aus = np.zeros((n, len(ACTION_UNITS)), dtype="float32")
    for e, name in enumerate(EXPRESSION_CLASSES):
        rows = expr == e
        for au in PROTOTYPES[name]:
            keep = rng.random(n) > 0.15  # a prototype AU is sometimes absent
            aus[rows & keep, AU_INDEX[au]] = 1.0
    spurious = rng.random((n, len(ACTION_UNITS))) < 0.04  # and unrelated AUs sometimes appear
    aus = np.maximum(aus, spurious.astype("float32"))
    # Per-AU intensity: the expression's intensity, jittered.
    au_int = aus * np.clip(intensity[:, None] + rng.normal(0, 0.12, aus.shape), 0.15, 1.0).astype("float32")
    va = np.array([EXPRESSION_VA[EXPRESSION_CLASSES[e]] for e in expr], dtype="float32")
    va = va * (0.4 + 0.6 * intensity[:, None]) + rng.normal(0, 0.08, (n, 2))
    f.update(expression=expr.astype("int64"), intensity=intensity, action_units=aus, au_intensity=au_int,
             valence_arousal=np.clip(va, -1, 1).astype("float32"))

    p = domain.pose
    f.update(
        roll=rng.normal(0, 0.12 * p, n), yaw=np.clip(rng.normal(0, 0.35 * p, n), -0.6, 0.6),
        scale=np.exp(rng.normal(0, 0.08 * p, n)), tx=rng.normal(0, 0.07 * p, n), ty=rng.normal(0, 0.06 * p, n),
        light_x=rng.normal(0, 0.5 * domain.lighting, n), light_y=rng.normal(0, 0.3 * domain.lighting, n),
        brightness=np.exp(rng.normal(0, 0.18 * domain.lighting, n)),
        contrast=np.exp(rng.normal(0, 0.15 * domain.lighting, n)),
        bg_color=rng.uniform(0.1, 0.9, (n, 3)), bg_color2=rng.uniform(0.1, 0.9, (n, 3)),
        bg_angle=rng.uniform(0, 2 * np.pi, n), bg_freq=rng.uniform(2, 9, n),
        occluder=(rng.random(n) < domain.occluders) * rng.integers(1, 3, n),
        occ_x=rng.uniform(-0.7, 0.7, n), occ_y=rng.uniform(-0.6, 0.7, n), occ_color=rng.uniform(0, 1, (n, 3)),
        glasses_dark=rng.uniform(0.0, 0.7, n),
    )
    for k, v in f.items():
        if v.dtype == np.float64:
            f[k] = v.astype("float32")
    return f
