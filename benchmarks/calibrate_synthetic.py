"""Calibration of the synthetic benchmark: single-task baselines against chance and ceiling.

For each task, a single-task network (the default backbone, one head) trains only on the demo's
training sources that label that task, for the same number of optimizer steps as the multi-task
network of `kfacemtl demo` gets in all (``--steps`` × ``--epochs``). Both are evaluated on the test
splits of the domains that label the task in training (in-domain) and on the unlabelled street
domain. The multi-task row uses the demo config with the same steps.

A benchmark measures and prints; it asserts nothing.

    python -m benchmarks.calibrate_synthetic [--epochs E --steps S --faces 6000]   # default: the demo's budget
"""

import argparse
import json
import os
import tempfile
import time

import numpy as np

from kfacemtl.analysis.evaluation import headline_metric
from kfacemtl.data import parse_spec, synthetic
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training import DEMO_EPOCHS, DEMO_STEPS, demo_config, train_run


def chance(task, labels):
    """The score of a constant predictor: the majority class, the mean age, etc."""
    y = labels[task.name]
    if task.kind == "classification":
        return float(np.max(np.bincount(y.astype(int), minlength=len(task.classes))) / len(y))
    if task.kind == "multilabel":
        return 0.0  # predicting no AU gives F1 0
    if task.dim == 1:
        return float(np.mean(np.abs(y - y.mean())))
    return 0.0  # a constant has CCC 0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    ap.add_argument("--steps", type=int, default=DEMO_STEPS)
    ap.add_argument("--faces", type=int, default=6000)
    ap.add_argument("--test-faces", type=int, default=1000)
    ap.add_argument("--json", help="also write the rows here")
    args = ap.parse_args(argv)
    base = demo_config(args.faces, args.test_faces, args.epochs, args.steps)
    tasks = resolve_tasks(base["tasks"])
    rows, work = {}, tempfile.mkdtemp(prefix="kfacemtl-calib-")
    t0 = time.time()
    mtl = train_run(base, os.path.join(work, "mtl"), verbose=0)
    mtl_s = time.time() - t0
    print(f"multi-task run: {mtl_s:.0f} s", flush=True)
    for task in tasks:
        domains = [d for d in synthetic.LABELLED_DOMAINS if task.name in synthetic.DOMAINS[d].labels]
        cfg = dict(base, tasks=[task.name],
                   sources=[s for s in base["sources"] if parse_spec(s)[1] in domains])
        t = time.time()
        stl = train_run(cfg, os.path.join(work, task.name), verbose=0)
        metric = headline_metric(task)
        in_dom = [f"{d}-test" for d in domains]
        _, test_labels = synthetic.load_split(domains[0], args.test_faces, "test", 0)
        rows[task.name] = {
            "metric": metric, "train_domains": domains,
            "chance": chance(task, test_labels),
            "stl_in_domain": float(np.mean([stl["evaluation"][s][task.name][metric] for s in in_dom])),
            "stl_street": stl["evaluation"]["street-test"][task.name][metric],
            "mtl_in_domain": float(np.mean([mtl["evaluation"][s][task.name][metric] for s in in_dom])),
            "mtl_street": mtl["evaluation"]["street-test"][task.name][metric],
            "stl_seconds": round(time.time() - t),
        }
        print(f"{task.name}: {rows[task.name]}", flush=True)
    print(f"\nSynthetic benchmark calibration: {args.epochs} epochs x {args.steps} steps x batch 64 for every "
          f"model; test splits of {args.test_faces} faces. MTL trained in {mtl_s:.0f} s.\n")
    print("| task | metric | train domains (labelled) | constant predictor | single-task in-domain | "
          "single-task street | multi-task in-domain | multi-task street |")
    print("|---|---|---|---|---|---|---|---|")
    for name, r in rows.items():
        print(f"| {name} | {r['metric']} | {', '.join(r['train_domains'])} | {r['chance']:.3f} | "
              f"{r['stl_in_domain']:.3f} | {r['stl_street']:.3f} | {r['mtl_in_domain']:.3f} | {r['mtl_street']:.3f} |")
    print("\nThe multi-task model (the config of `kfacemtl demo`, same budget) on every test split:\n")
    print(mtl["table"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(rows, f, indent=2)


if __name__ == "__main__":
    main()
