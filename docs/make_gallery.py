"""Render docs/synthetic_faces.png: eight test faces of every synthetic domain, titled by expression.

    python docs/make_gallery.py
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from kfacemtl.data import synthetic  # noqa: E402
from kfacemtl.tasks import EXPRESSION_CLASSES  # noqa: E402


def main(path=os.path.join(os.path.dirname(__file__), "synthetic_faces.png"), per_domain=8):
    fig, axes = plt.subplots(len(synthetic.DOMAINS), per_domain, figsize=(per_domain * 1.1, len(synthetic.DOMAINS) * 1.25))
    for row, name in zip(axes, synthetic.DOMAINS):
        images, labels = synthetic.generate(name, per_domain, split="test", seed=7, workers=1)
        for ax, image, expr in zip(row, images, labels["expression"]):
            ax.imshow(image)
            ax.set_title(EXPRESSION_CLASSES[expr], fontsize=7)
            ax.set_xticks([]), ax.set_yticks([])
        row[0].set_ylabel(name, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
