"""Ablation: task-weighting strategies and learning-rate schedules against single-task baselines.

Every variant trains the same multi-task network for the same number of optimizer steps of the
same batch (an equal budget); only the weighting or the learning-rate schedule changes:

  equal, static (expression x3), uncertainty, dwa, dynamic, gradnorm: all with cosine decay from 1e-3
  equal with cosine decay from 3e-3 and from 3e-4 (the cosine schedule tuned over its peak), with a
  constant 1e-3 learning rate, and with the dynamic learning rate (no schedule); and dynamic
  weighting with the dynamic learning rate (nothing tuned at all)

``equal`` with cosine is also the cosine row of the learning-rate comparison. The single-task
baselines are matched as in ``real_mtl_vs_stl.py``: one model per task, on the sources that label
it, the same steps, batches of the task's share of the multi-task batch.

Settings:
  synthetic  the demo's four labelled domains and five test splits, at a reduced size (age, gender,
             race and expression; 32x32 input, a narrower backbone, --synthetic-steps steps; about a
             minute a run on 2 CPU cores), over --seeds seeds
  real       configs/real_utk_fer.yaml (UTKFace + FER2013; tested on UTKFace, FER2013 PublicTest, LFW),
             3,000 steps, over --real-seeds seeds (about 7 minutes a run on 2 CPU cores)

For each variant the table gives each task's headline metric (synthetic: the mean over the five
test sets; real: one column per task and test set), the mean relative change against the
single-task models over every (task, test set) pair (positive = better than single-task; MAE
counts with its sign flipped), and the training time; with several seeds, mean ± standard
deviation over seeds, and the difference to ``equal`` seed by seed (paired: what a seed's runs
share, such as its rendered faces and single-task baselines, cancels). Also written to --out:
results.txt, results.json and one bar plot per setting (synthetic.png, real.png). A benchmark
measures and prints; it asserts nothing.

    python -m benchmarks.ablation_weighting_lr [--settings synthetic real] [--seeds 0 1 2]
        [--real-seeds 0] [--variants equal dynamic ...] [--variant 'NAME={"lr_schedule": ...}' ...]
        [--reference VARIANT] [--out runs/ablation_weighting_lr]

--variant adds a variant as overrides of the training section (e.g. DynamicLearningRate options through
dynamic_lr_options); --reference names the variant the paired column compares with (default: equal).

Finished runs in --out are reused (their config must match); interrupted ones resume.
"""

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from kfacemtl.analysis.evaluation import headline_metric, text_table
from kfacemtl.files import atomic_write_text
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training import build_sources, demo_config
from benchmarks.common import (ROOT, SYNTHETIC_MODEL, cell, missing_real_data, parse_variants, real_config, run,
                               scores)
from kfacemtl.training.single_task import single_task_configs

# name: overrides of the config's training section
VARIANTS = {
    "equal": {"weighting": "equal", "lr_schedule": "cosine"},
    "static": {"weighting": "equal", "loss_weights": {"expression": 3.0}, "lr_schedule": "cosine"},
    "uncertainty": {"weighting": "uncertainty", "lr_schedule": "cosine"},
    "dwa": {"weighting": "dwa", "lr_schedule": "cosine"},
    "dynamic": {"weighting": "dynamic", "lr_schedule": "cosine"},
    "gradnorm": {"weighting": "gradnorm", "lr_schedule": "cosine"},
    "equal, cosine from 3e-3": {"weighting": "equal", "lr_schedule": "cosine", "learning_rate": 3e-3},
    "equal, cosine from 3e-4": {"weighting": "equal", "lr_schedule": "cosine", "learning_rate": 3e-4},
    "equal, constant LR": {"weighting": "equal", "lr_schedule": "constant"},
    "equal, dynamic LR": {"weighting": "equal", "lr_schedule": "dynamic"},
    "dynamic, dynamic LR": {"weighting": "dynamic", "lr_schedule": "dynamic"},  # nothing tuned at all
}
SHORT = {"age": "age MAE", "gender": "gender acc", "race": "race acc", "expression": "expr acc",
         "action_units": "AU F1", "valence_arousal": "VA CCC"}


def synthetic_config(seed: int, steps: int, faces: int = 3000, test_faces: int = 500) -> dict:
    """The demo's domains and four of its tasks at a size that trains in about a minute on 2 cores."""
    epochs = 4
    cfg = demo_config(train_faces=faces, test_faces=test_faces, epochs=epochs,
                      steps_per_epoch=max(1, steps // epochs), seed=seed)
    # action units and valence/arousal stay near F1 0 / CCC 0 at this budget, which makes a relative change
    # meaningless; the four tasks kept are learnt by every model
    cfg["tasks"] = ["age", "gender", "race", "expression"]
    cfg["model"] = dict(SYNTHETIC_MODEL)
    return cfg


def with_variant(cfg: dict, overrides: dict) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["training"].update(copy.deepcopy(overrides))
    return cfg


def relative_change(mtl: dict, stl: dict, tasks) -> float:
    """Mean over (task, test set) of (multi - single) / |single|, sign flipped for MAE (positive = better)."""
    sign = {t.name: -1.0 if headline_metric(t) == "mae" else 1.0 for t in tasks}
    changes = [sign[key[0]] * (mtl[key] - stl[key]) / max(abs(stl[key]), 1e-6) for key in mtl if key in stl]
    return float(np.mean(changes))


def run_setting(name: str, configs_by_seed: dict, variants: dict, out: Path) -> list:
    """Train the variants (``{name: training overrides}``) and the single-task baselines of one setting; one
    result dict per variant and seed."""
    results = []
    for seed, cfg in configs_by_seed.items():
        tasks = resolve_tasks(cfg["tasks"])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            sources = build_sources(cfg["sources"])
            eval_sources = build_sources(cfg["eval_sources"], "eval_sources")  # shared by every run of the seed
        stl = {}
        for task, stl_cfg in single_task_configs(cfg, sources).items():
            folder = out / name / f"seed{seed}" / f"single-task_{task}"
            print(f"[{name} seed {seed}] single-task {task}", flush=True)
            stl.update(scores(stl_cfg, run(stl_cfg, folder), folder, eval_sources))
        for variant, overrides in variants.items():
            folder = out / name / f"seed{seed}" / variant.replace(", ", "_").replace(" ", "_")
            print(f"[{name} seed {seed}] {variant}", flush=True)
            vcfg = with_variant(cfg, overrides)
            report = run(vcfg, folder)
            mtl = scores(vcfg, report, folder, eval_sources)
            results.append({"setting": name, "seed": seed, "variant": variant,
                            "per_task": _per_task(mtl, tasks), "per_pair": _per_pair(mtl),
                            "relative_change": relative_change(mtl, stl, tasks),
                            "train_seconds": float(report.get("train_seconds_this_session", float("nan"))),
                            "stl_per_task": _per_task(stl, tasks), "stl_per_pair": _per_pair(stl)})
    return results


def _per_task(scores_: dict, tasks) -> dict:
    """Each task's metric, averaged over the test sets that label it."""
    return {t.name: float(np.mean([v for (task, _), v in scores_.items() if task == t.name])) for t in tasks}


def _per_pair(scores_: dict) -> dict:
    return {f"{task}@{test_set}": v for (task, test_set), v in scores_.items()}


def format_table(results: list, by: str = "task", reference: str = "equal") -> str:
    """One row per variant (and the single-task baseline): the metric per task (``by="task"``: the mean over
    its test sets) or per task and test set (``by="pair"``), the relative change, its difference to the
    ``reference`` variant's seed by seed (with several seeds), the training seconds."""
    key = "per_task" if by == "task" else "per_pair"
    columns = list(results[0][key])
    variants = list(dict.fromkeys(r["variant"] for r in results))
    seeds = sorted({r["seed"] for r in results})

    def label(column):
        task, _, test_set = column.partition("@")
        return SHORT.get(task, task) + (f" {test_set.split('-')[0]}" if test_set else "")

    paired = len(seeds) > 1 and reference in variants  # seed by seed: the seeds' shared noise cancels
    ref = {r["seed"]: r["relative_change"] for r in results if r["variant"] == reference}
    header = (["variant"] + [label(c) for c in columns] + ["Δ vs single-task %"]
              + ([f"Δ - {reference}'s Δ (paired)"] if paired else []) + ["train s"])
    first = [r for r in results if r["variant"] == variants[0]]
    lines = [["single-task"] + [cell([r["stl_" + key][c] for r in first], 3) for c in columns] + ["0"]
             + ([""] if paired else []) + [""]]
    for v in variants:
        rs = [r for r in results if r["variant"] == v]
        lines.append([v] + [cell([r[key][c] for r in rs], 3) for c in columns]
                     + [cell([100 * r["relative_change"] for r in rs], 2)]
                     + ([cell([100 * (r["relative_change"] - ref[r["seed"]]) for r in rs], 2)] if paired else [])
                     + [cell([r["train_seconds"] for r in rs], 0)])
    title = f"{results[0]['setting']}: seeds {', '.join(map(str, seeds))}" + (" (mean ± std)" if len(seeds) > 1 else "")
    return title + "\n" + text_table(header, lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["synthetic", "real"], choices=["synthetic", "real"])
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT",
                    help=f"default: all of {list(VARIANTS)}")
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=JSON",
                    help='one more variant, as overrides of the training section (repeatable), e.g. '
                         '\'slow grow={"lr_schedule": "dynamic", "dynamic_lr_options": {"grow_after": 2}}\'')
    ap.add_argument("--reference", default="equal", metavar="VARIANT",
                    help="the variant the paired column compares with (default: equal)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="synthetic seeds")
    ap.add_argument("--synthetic-steps", type=int, default=800)
    ap.add_argument("--synthetic-faces", type=int, default=3000, help="training faces per domain")
    ap.add_argument("--synthetic-test-faces", type=int, default=500, help="faces per test split")
    ap.add_argument("--real-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--config", default=str(ROOT / "configs" / "real_utk_fer.yaml"))
    ap.add_argument("--out", default=str(ROOT / "runs" / "ablation_weighting_lr"))
    args = ap.parse_args(argv)
    out = Path(args.out)
    variants = {name: VARIANTS[name] for name in args.variants}
    variants.update(parse_variants(args.variant))
    if args.reference != "equal" and args.reference not in variants:
        ap.error(f"--reference: {args.reference!r} is not one of the variants run: {list(variants)}")
    start, tables, all_results = time.time(), [], []
    for setting in args.settings:
        if setting == "synthetic":
            configs = {s: synthetic_config(s, args.synthetic_steps, args.synthetic_faces,
                                             args.synthetic_test_faces) for s in args.seeds}
        else:
            data = Path(args.data)
            if message := missing_real_data(data, then="The real setting is skipped."):
                print(message)
                continue
            configs = {s: real_config(str(data), args.config, s) for s in args.real_seeds}
        results = run_setting(setting, configs, variants, out)
        all_results += results
        tables.append(format_table(results, by="task" if setting == "synthetic" else "pair", reference=args.reference))
        print("\n" + tables[-1] + "\n", flush=True)
    if not tables:
        return 0
    wall = f"benchmark wall time {time.time() - start:.0f} s (a reused run takes none; its train s is its own)"
    print(wall)
    text = "\n\n".join(tables) + "\n\n" + wall + "\n"
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.txt", text)
    atomic_write_text(out / "results.json", json.dumps(all_results, indent=2))
    from kfacemtl.analysis.plots import plot_relative_change
    for setting in dict.fromkeys(r["setting"] for r in all_results):
        plot_relative_change([r for r in all_results if r["setting"] == setting], out / f"{setting}.png",
                             title=f"{setting}: mean relative change against single-task models\n"
                                   "(bars: mean over seeds; whiskers: standard deviation)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
