"""Where each head looks, measured on the synthetic benchmark whose renderer knows where the cues live.

For a trained model, for each head and saliency method, prints the mean over test faces of
(share of saliency mass inside a region) / (share of the image the region covers): 1 means no
preference, > 1 attention concentrated there. Regions: ``expression`` (brows, eyes, cheeks, nose,
mouth, chin: where the AUs act), ``face``, ``hair``, ``forehead`` and ``background`` (neither face
nor hair: no cue lives there). A benchmark measures and prints; it asserts nothing.

    python -m benchmarks.saliency_regions runs/demo-.../model.keras [--faces 200]
"""

import argparse
import time

import numpy as np

from kfacemtl.data import synthetic
from kfacemtl.analysis.explain import METHODS, explain, region_ratio
from kfacemtl.models import load_model

# each head on the test split of a domain that labels it in the demo
HEADS = {"expression": "lab", "action_units": "lab", "gender": "portraits", "age": "portraits", "race": "portraits"}
REGIONS = ("expression", "face", "hair", "forehead", "background")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model", help="a trained .keras model (e.g. from make demo)")
    ap.add_argument("--faces", type=int, default=200, help="test faces per domain")
    ap.add_argument("--methods", nargs="+", default=list(METHODS))
    args = ap.parse_args(argv)
    model = load_model(args.model, compile=False)
    heads = [h for h in HEADS if h in model.output_names]
    data = {}
    for domain in sorted(set(HEADS[h] for h in heads)):
        images, _, regions = synthetic.generate(domain, args.faces, split="test", seed=0, regions=True)
        regions["background"] = ~(regions["face"] | regions["hair"])
        data[domain] = (images.astype("float32") / 255.0, regions)
    print(f"model {args.model}; {args.faces} test faces per head; mean ratio (mass share / area share) per region; "
          f"target: each image's predicted class (age: the value; action units: AU12)\n")
    print("| head (test domain) | method | " + " | ".join(REGIONS) + " | seconds |")
    print("|---|---|" + "---|" * len(REGIONS) + "---|")
    for head in heads:
        x, regions = data[HEADS[head]]
        for method in args.methods:
            start = time.time()
            maps = explain(model, x, head, target="AU12" if head == "action_units" else None, method=method)
            ratios = [np.nanmean(region_ratio(maps, regions[r])) for r in REGIONS]
            print(f"| {head} ({HEADS[head]}) | {method} | " + " | ".join(f"{r:.2f}" for r in ratios)
                  + f" | {time.time() - start:.0f} |", flush=True)


if __name__ == "__main__":
    main()
