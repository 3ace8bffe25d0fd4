"""Backbone variants on real faces at equal wall time: is a cheaper network as accurate for the same training time?

For the default backbone of ``configs/real_utk_fer.yaml`` and each variant (model overrides, e.g. one convolution per
block, or half the channels):

  1. its training speed on the machine it runs on: the model alone (one batch in memory, benchmarks/throughput.py's
     ``alone``), each timing in a fresh process, the median of ``--repeats``;
  2. its budget: the config's steps times its speed over the default's, so every network trains for about the same
     time (steps, not seconds, are fixed, so a slow spell of this shared machine changes no budget);
  3. training (train_run, the config's recipe: batch 64, UTKFace and FER2013 half and half, cosine schedule over its
     own steps), then every test set: each task's headline metric, and its difference from the default with a
     paired 95 % interval (positive = the variant is better).

A benchmark measures and prints; it asserts nothing. Rerunning with the same ``--out`` reuses the measured speeds
(``speeds.json``) and finished runs, and resumes interrupted ones.

    python -m benchmarks.backbone [--data ../shared/data] [--out runs/backbone] [--steps 3000]
        [--variant NAME=JSON ...] [--repeats 3] [--seed N]
"""

import argparse
import json
import os
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from kfacemtl.training.config import load_config
from kfacemtl.analysis.evaluation import headline_metric, text_table
from kfacemtl.files import atomic_write_text
from kfacemtl.models import build_model, count_flops, load_model
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training import build_sources
from benchmarks.common import (ROOT, compare, missing_real_data, parse_variants, per_face_score, predictions, train,
                               with_data_root, with_steps)

VARIANTS = {"one conv per block": {"depths": [1, 1, 1, 1]}, "half the channels": {"widths": [16, 32, 64, 128]}}


def model_alone_rate(args: list, overrides: dict, repeats: int) -> float:
    """Training images/s of the model alone with ``overrides``: the median of ``repeats`` fresh processes."""
    rates = []
    for _ in range(repeats):
        out = subprocess.run([sys.executable, "-m", "benchmarks.throughput", "--one", "alone",
                              "--model", json.dumps(overrides)] + args, capture_output=True, text=True, check=True,
                             cwd=ROOT)
        rates.append(json.loads(out.stdout.strip().splitlines()[-1])["images_per_s"])
    return float(np.median(rates))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--config", default=str(ROOT / "configs" / "real_utk_fer.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "backbone"))
    ap.add_argument("--steps", type=int, help="the default network's steps (default: the config's)")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help="a variant: its name and JSON overrides of the model section (default: "
                         + "; ".join(f"{n}={json.dumps(o)}" for n, o in VARIANTS.items()) + ")")
    ap.add_argument("--repeats", type=int, default=3, help="timings of each network's speed")
    ap.add_argument("--timing-steps", type=int, default=30)
    ap.add_argument("--seed", type=int, help="training.seed of every run (default: the config's)")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if message := missing_real_data(data):
        print(message)
        return 0
    variants = {"default": {}, **(parse_variants(args.variant) if args.variant else VARIANTS)}
    cfg = with_data_root(load_config(args.config), str(data))
    if args.seed is not None:
        cfg["training"]["seed"] = args.seed
    base_steps = args.steps or cfg["training"]["epochs"] * cfg["training"]["steps_per_epoch"]
    eval_specs, cfg["eval_sources"] = cfg["eval_sources"], []  # evaluated below, face by face
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # UTKFace's one malformed file name, reported once per build
        eval_sources = build_sources(eval_specs, "eval_sources")
    out = Path(args.out)
    timing = ["--data", str(data), "--config", args.config, "--steps", str(args.timing_steps), "--warmup", "10"]
    tasks = resolve_tasks(cfg["tasks"])
    speeds_file = out / "speeds.json"  # measured once per --out, so a rerun resumes runs of the same budgets
    speeds = json.loads(speeds_file.read_text()) if speeds_file.exists() else {}
    nets = {}
    for name, overrides in variants.items():
        model = build_model(tasks, **dict(cfg["model"], **overrides))
        if name not in speeds:
            speeds[name] = model_alone_rate(timing, overrides, args.repeats)
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(speeds_file, json.dumps(speeds, indent=2))
        rate = speeds[name]
        nets[name] = {"overrides": overrides, "forward_flops": count_flops(model),
                      "parameters": int(model.count_params()), "images_per_s": rate}
        print(f"{name}: {nets[name]['forward_flops'] / 1e6:.1f} MFLOP/image, {rate:.0f} images/s (model alone)",
              flush=True)
    image_size = tuple(cfg["model"]["input_shape"][:2])
    scores = {}
    for name, net in nets.items():
        net["steps"] = round(base_steps * net["images_per_s"] / nets["default"]["images_per_s"])
        run_cfg = with_steps(cfg, net["steps"])
        run_cfg["model"].update(net["overrides"])
        folder = out / name.replace(" ", "_")
        print(f"\n== {name}: {net['steps']} steps -> {folder}", flush=True)
        t = time.time()
        report = train(run_cfg, folder)
        net["train_seconds"] = report.get("train_seconds_this_session", 0.0) or time.time() - t
        model = load_model(folder / "model.keras")
        scores[name] = {s.name: predictions(model, s, image_size) for s in eval_sources}
    rows, header = [], ["network", "MFLOP", "params", "images/s", "steps", "train s"]
    columns = [(t, s.name) for t in tasks for s in eval_sources if t.name in scores["default"][s.name]]
    header += [f"{t.name} {src} ({'MAE' if headline_metric(t) == 'mae' else 'acc'})" for t, src in columns]
    result = {"base_steps": base_steps, "networks": nets, "metrics": {}}
    for name, net in nets.items():
        row = [name, f"{net['forward_flops'] / 1e6:.1f}", f"{net['parameters']:,}", f"{net['images_per_s']:.0f}",
               str(net["steps"]), f"{net['train_seconds']:.0f}"]
        for task, src in columns:
            y, p = scores[name][src][task.name]
            _, p0 = scores["default"][src][task.name]
            s, s0 = per_face_score(task, y, p), per_face_score(task, y, p0)
            lower = headline_metric(task) == "mae"
            delta, ci = compare(s0, s, lower)
            result["metrics"].setdefault(name, {})[f"{task.name} {src}"] = {"value": float(s.mean()), "delta": delta,
                                                                            "ci95": ci}
            row.append(f"{s.mean():.4f}" + ("" if name == "default" else f" ({delta:+.4f} ± {ci:.4f})"))
        rows.append(row)
    text = (f"equal wall time: each network trains the default's {base_steps} steps times its speed over the "
            f"default's (the model alone on the machine it ran on, median of {args.repeats} fresh processes); in brackets "
            f"the difference from the default with its paired 95 % interval, positive = better\n"
            + text_table(header, rows))
    text += "\n" + "\n".join(f"{n}: model overrides {json.dumps(v['overrides'])}" for n, v in nets.items() if v["overrides"])
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.txt", text + "\n")
    atomic_write_text(out / "results.json", json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
