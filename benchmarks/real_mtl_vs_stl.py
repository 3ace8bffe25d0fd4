"""Multi-task versus single-task on real faces (UTKFace + FER2013, tested also on LFW expressions).

Trains, with one backbone and one budget:

  (a) the multi-task model of ``configs/real_mtl.yaml``: age, gender and race from UTKFace's
      training split plus expression from FER2013 Training, batches mixed half and half;
  (b) one single-task model per task, on only that task's training source(s).

How the budget is matched: (a) runs S optimizer steps of batch B; in every step each task
gets, on average, B x (the mixing share of the sources labelling it) labelled faces (here
B/2 = 32: UTKFace rows carry age, gender and race, FER2013 rows expression). Each
single-task model runs the same S steps with batches of exactly that many faces of its
task, so every task gets the same number of optimizer steps and labelled faces in (a) and
(b); same backbone, optimizer, learning rate, augmentation and seed. What (a) adds is only
the other tasks' labels and faces, through the shared backbone.

Then evaluates every model on the held-out UTKFace split (by face), FER2013 PublicTest and
LFW expressions, and prints per task and test set: single-task, multi-task, the delta
(positive = multi-task better) with its paired 95 % interval, and the training wall times.
A benchmark measures and prints; it asserts nothing.

    python -m benchmarks.real_mtl_vs_stl [--data ../shared/data] [--out runs/real_mtl_vs_stl]
                                         [--steps 3000] [--seeds 0 1 2] [--config configs/real_mtl.yaml]

Rerunning with the same ``--out`` resumes interrupted runs and reuses finished ones. With several ``--seeds``,
each seed's runs go to ``OUT/seedN`` and a table over the seeds follows (``results_seeds.txt``): per task and
test set the mean ± std of each side and of the delta, and in how many seeds multi-task was ahead.
"""

import argparse
import copy
import json
import os
import sys
import time
import warnings
from pathlib import Path



from kfacemtl.training.config import load_config
from kfacemtl.analysis.evaluation import headline_metric, text_table
from kfacemtl.files import atomic_write_text
from kfacemtl.models import load_model, model_tasks
from kfacemtl.training import build_sources
from benchmarks.common import (ROOT, cell, compare, missing_real_data, per_face_score, predictions, single_task_configs,
                               train, with_data_root, with_steps)



















def format_rows(rows: list[dict]) -> str:
    header = ["task", "test set", "metric", "n", "single-task", "multi-task", "delta (MTL better > 0)", "verdict"]
    lines = [[r["task"], r["test_set"], r["metric"], str(r["n"]), f"{r['stl']:.4f}", f"{r['mtl']:.4f}",
              f"{r['delta']:+.4f} ± {r['ci95']:.4f}", r["verdict"]] for r in rows]
    return text_table(header, lines)


def run_seed(cfg: dict, sources, eval_sources, out: Path) -> list[dict]:
    """Train (or reuse) the multi-task model and the matched single-task models of ``cfg`` in ``out``, compare them
    face by face on ``eval_sources``, print the table and write ``results.txt`` / ``results.json`` there; returns
    the rows."""
    steps = cfg["training"]["epochs"] * cfg["training"]["steps_per_epoch"]
    runs = {"multi-task": cfg, **{f"single-task {t}": c for t, c in single_task_configs(cfg, sources).items()}}
    print(f"{len(runs)} runs of {steps} steps, seed {cfg['training']['seed']}; multi-task batch "
          f"{cfg['training']['batch_size']}; "
          + ", ".join(f"{n.split()[-1]} batch {c['training']['batch_size']}" for n, c in runs.items() if n != "multi-task"))
    start = time.time()
    seconds, models = {}, {}
    for name, run_cfg in runs.items():
        folder = out / name.replace(" ", "_")
        print(f"\n== {name}: {', '.join(run_cfg['sources'])} -> {folder}", flush=True)
        t = time.time()
        report = train(run_cfg, folder)
        seconds[name] = (report.get("train_seconds_this_session", 0.0), time.time() - t)
        models[name] = load_model(folder / "model.keras")

    image_size = tuple(cfg["model"]["input_shape"][:2])
    preds = {name: {s.name: predictions(m, s, image_size) for s in eval_sources} for name, m in models.items()}
    rows = []
    mtl = models["multi-task"]
    for task in model_tasks(mtl):
        stl_name = f"single-task {task.name}"
        for src in eval_sources:
            if task.name not in preds["multi-task"][src.name]:
                continue
            y, p_mtl = preds["multi-task"][src.name][task.name]
            _, p_stl = preds[stl_name][src.name][task.name]
            s_mtl, s_stl = per_face_score(task, y, p_mtl), per_face_score(task, y, p_stl)
            metric = headline_metric(task)
            lower = metric == "mae"
            delta, ci = compare(s_stl, s_mtl, lower)
            verdict = "MTL better" if delta - ci > 0 else "STL better" if delta + ci < 0 else "no clear difference"
            rows.append({"task": task.name, "test_set": src.name, "metric": "MAE (years)" if lower else "accuracy",
                         "n": int(len(y)), "stl": float(s_stl.mean()), "mtl": float(s_mtl.mean()),
                         "delta": delta, "ci95": ci, "verdict": verdict})
    table = format_rows(rows)
    wall = ["", "run                       steps  batch  train s (this session)  wall s"]
    for name, run_cfg in runs.items():
        wall.append(f"{name:<25} {steps:>6} {run_cfg['training']['batch_size']:>6} {seconds[name][0]:>23.0f} "
                    f"{seconds[name][1]:>7.0f}")
    single = sum(v[0] for n, v in seconds.items() if n != "multi-task")
    wall.append(f"training time: multi-task {seconds['multi-task'][0]:.0f} s, all single-task models {single:.0f} s; "
                f"benchmark wall time {time.time() - start:.0f} s")
    text = table + "\n" + "\n".join(wall)
    print("\n" + text)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.txt", text + "\n")
    atomic_write_text(out / "results.json", json.dumps({"rows": rows, "steps": steps, "seconds": seconds}, indent=2))
    return rows




def format_seeds(rows_by_seed: dict) -> str:
    """Per task and test set over the seeds (``{seed: rows}``): single-task and multi-task mean ± std, the delta's
    mean ± std (positive = multi-task better) and in how many seeds multi-task was ahead."""
    seeds = sorted(rows_by_seed)
    first = rows_by_seed[seeds[0]]
    lines = []
    for i, r in enumerate(first):
        per_seed = [rows_by_seed[s][i] for s in seeds]
        deltas = [p["delta"] for p in per_seed]
        lines.append([r["task"], r["test_set"], r["metric"], cell([p["stl"] for p in per_seed], 4),
                      cell([p["mtl"] for p in per_seed], 4), cell(deltas, 4, signed=True),
                      f"{sum(d > 0 for d in deltas)} of {len(seeds)}"])
    header = ["task", "test set", "metric", "single-task", "multi-task", "delta (MTL better > 0)", "MTL ahead"]
    return f"seeds {', '.join(map(str, seeds))} (mean ± std over seeds)\n" + text_table(header, lines)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")),
                    help="the folder holding utkface/, fer2013/ and lfw_expressions/ (default ../shared/data)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "real_mtl.yaml"), help="the multi-task config (a)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "real_mtl_vs_stl"),
                    help="where the runs go; rerunning with the same folder resumes")
    ap.add_argument("--steps", type=int, help="total optimizer steps (default: the config's epochs x steps_per_epoch)")
    ap.add_argument("--seeds", type=int, nargs="+",
                    help="the seed of every run (default: the config's training.seed); with several, each seed's "
                         "runs go to OUT/seedN and a table over the seeds follows")
    args = ap.parse_args(argv)

    data = Path(args.data)
    if message := missing_real_data(data):
        print(message)
        return 0
    cfg = with_data_root(load_config(args.config), str(data))
    if args.steps:
        cfg = with_steps(cfg, args.steps)
    eval_specs, cfg["eval_sources"] = cfg["eval_sources"], []  # evaluated below, face by face
    out = Path(args.out)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # UTKFace's one malformed file name, reported once per build
        sources = build_sources(cfg["sources"])
        eval_sources = build_sources(eval_specs, "eval_sources")
    seeds = list(dict.fromkeys(args.seeds or [cfg["training"]["seed"]]))
    rows_by_seed = {}
    for seed in seeds:
        seed_cfg = copy.deepcopy(cfg)
        seed_cfg["training"]["seed"] = seed
        rows_by_seed[seed] = run_seed(seed_cfg, sources, eval_sources, out / f"seed{seed}" if len(seeds) > 1 else out)
    if len(rows_by_seed) > 1:
        text = format_seeds(rows_by_seed)
        print("\n" + text)
        atomic_write_text(out / "results_seeds.txt", text + "\n")
        atomic_write_text(out / "results_seeds.json", json.dumps({str(s): r for s, r in rows_by_seed.items()},
                                                                 indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
