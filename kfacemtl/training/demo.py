"""The demo: four labelled synthetic domains train one network, five test splits evaluate it.

Example:
    >>> demo_config(train_faces=600, test_faces=100, epochs=2, steps_per_epoch=50)["training"]["mixing"]
    'balanced'
"""
from __future__ import annotations

DEMO_EPOCHS, DEMO_STEPS = 8, 300  # the demo budget: 2,400 steps of batch 64, about 8.5 minutes on 2 CPU cores


def demo_config(train_faces: int = 6000, test_faces: int = 1000, epochs: int = DEMO_EPOCHS,
                steps_per_epoch: int | None = DEMO_STEPS, seed: int = 0) -> dict:
    """The config of ``kfacemtl demo``: four labelled synthetic domains, all five test splits.

    portraits (age, gender, race), lab (expression, AUs; a small CK+-like set), webcam
    (expression, grayscale, low resolution) and affect (expression, valence/arousal) train one
    network; street (no labels) is only evaluated.

    Example:
        >>> cfg = demo_config(train_faces=600, test_faces=100, epochs=2, steps_per_epoch=50)
        >>> cfg["sources"][0], cfg["training"]["mixing"]
        ('synthetic:portraits?n=600&seed=0', 'balanced')
    """
    sizes = {"portraits": train_faces, "lab": max(64, train_faces // 3), "webcam": train_faces,
             "affect": max(64, (2 * train_faces) // 3)}
    return {
        "tasks": ["age", "gender", "race", "expression", "action_units", "valence_arousal"],
        "sources": [f"synthetic:{d}?n={n}&seed={seed}" for d, n in sizes.items()],
        "eval_sources": [f"synthetic:{d}?split=test&n={test_faces}&seed={seed}"
                         for d in ("portraits", "lab", "webcam", "affect", "street")],
        # balanced: each domain a quarter of every batch, so the small lab set (the only AU labels) is not drowned
        "training": {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": 64, "seed": seed,
                     "mixing": "balanced"},
    }
