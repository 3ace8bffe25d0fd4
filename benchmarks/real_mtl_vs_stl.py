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

    python benchmarks/real_mtl_vs_stl.py [--data ../shared/data] [--out runs/real_mtl_vs_stl]
                                         [--steps 3000] [--seeds 0 1 2] [--config configs/real_mtl.yaml]

Rerunning with the same ``--out`` resumes interrupted runs and reuses finished ones. With several ``--seeds``,
each seed's runs go to ``OUT/seedN`` and a table over the seeds follows (``results_seeds.txt``): per task and
test set the mean ± std of each side and of the delta, and in how many seeds multi-task was ahead.
"""

import argparse
import copy
import json
import math
import os
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

from kfacemtl.training.config import load_config  # noqa: E402
from kfacemtl.analysis.evaluation import headline_metric, text_table  # noqa: E402
from kfacemtl.files import atomic_write_text  # noqa: E402
from kfacemtl.models import load_model, model_tasks  # noqa: E402
from kfacemtl.data import make_dataset, mixing_weights  # noqa: E402
from kfacemtl.training import build_sources, train_run  # noqa: E402

DATA_PREFIX = "../shared/data"  # how configs/real_mtl.yaml names the data folder


def with_data_root(cfg: dict, data: str) -> dict:
    """The config with ``../shared/data`` in every source spec replaced by ``data``."""
    cfg = copy.deepcopy(cfg)
    for key in ("sources", "eval_sources"):
        cfg[key] = [s.replace(f":{DATA_PREFIX}", f":{data}", 1) if isinstance(s, str) else s for s in cfg[key]]
    return cfg


def single_task_configs(cfg: dict, sources) -> dict:
    """One config per task: only the sources labelling it, batch = the task's share of (a)'s batch."""
    tasks = cfg["tasks"]
    share = mixing_weights(sources, cfg["training"]["mixing"])
    out = {}
    for name in tasks:  # task names, whether the config lists them or maps them to overrides
        keep = [i for i, s in enumerate(sources) if name in s.tasks]
        if not keep:
            raise SystemExit(f"task {name!r}: no training source labels it")
        stl = copy.deepcopy(cfg)
        stl["tasks"] = {name: tasks[name]} if isinstance(tasks, dict) else [name]
        stl["sources"] = [cfg["sources"][i] for i in keep]
        stl["training"]["batch_size"] = max(1, int(round(cfg["training"]["batch_size"] * share[keep].sum())))
        stl["training"]["mixing"] = "proportional"
        if stl["training"].get("loss_weights"):
            stl["training"]["loss_weights"] = {k: v for k, v in stl["training"]["loss_weights"].items() if k == name}
        out[name] = stl
    return out


def missing_real_data(data: Path, then: str = "Nothing to do.") -> str | None:
    """What to tell a user when ``data`` lacks the real sets the real-face benchmarks read (ending with ``then``);
    None when all are there."""
    needed = [data / "utkface" / "UTKFace", data / "fer2013" / "train", data / "lfw_expressions" / "labels.csv"]
    if all(p.exists() for p in needed):
        return None
    return (f"real data not found under {data} (needs {', '.join(str(p.relative_to(data)) for p in needed)}); "
            f"pass --data or set KFACEMTL_DATA. {then}")


def with_steps(cfg: dict, steps: int) -> dict:
    """The config trained for about ``steps`` optimizer steps (its epochs kept, up to ``steps``; each epoch's steps
    scaled)."""
    cfg = copy.deepcopy(cfg)
    tr = cfg["training"]
    tr["epochs"] = max(1, min(tr["epochs"], steps))
    tr["steps_per_epoch"] = max(1, steps // tr["epochs"])
    return cfg


def train(cfg: dict, out_dir: Path) -> dict:
    """train_run into ``out_dir``, resuming it when it holds an unfinished run."""
    resume = (out_dir / "config.yaml").exists()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # UTKFace's one malformed file name, reported once per build
        return train_run(cfg, out_dir, resume=resume, verbose=2)


def predictions(model, source, image_size):
    """``{task: (labels, predictions)}`` on the rows of ``source`` that label each task of the model."""
    tasks = model_tasks(model)
    ds = make_dataset([source], tasks, batch_size=256, image_size=image_size, training=False)
    preds = model.predict(ds.map(lambda x, y, w: x), verbose=0)
    preds = dict(zip(model.output_names, preds if isinstance(preds, (list, tuple)) else [preds]))
    labels, weights = source.labels(tasks)
    return {t.name: (labels[t.name][weights[t.name] > 0], preds[t.name][weights[t.name] > 0])
            for t in tasks if weights[t.name].any()}


def per_face_score(task, y, p) -> np.ndarray:
    """Per-face score whose mean is the headline metric: correct (0/1) or absolute error."""
    if task.kind == "classification":
        return (np.argmax(p, axis=1) == y).astype("float64")
    return np.abs(p - y).mean(axis=1)


def compare(stl_score: np.ndarray, mtl_score: np.ndarray, lower_is_better: bool) -> tuple[float, float]:
    """Delta (positive = multi-task better) and the half-width of its paired 95 % interval."""
    diff = (stl_score - mtl_score) if lower_is_better else (mtl_score - stl_score)
    return float(diff.mean()), float(1.96 * diff.std(ddof=1) / math.sqrt(len(diff))) if len(diff) > 1 else math.nan


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


def _cell(values, digits, signed: bool = False):
    """``mean ± std`` of ``values`` over seeds (the value alone when there is one); ``signed``: the mean with its
    sign."""
    values = np.asarray(values, "float64")
    mean = f"{values.mean():{'+' if signed else ''}.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {values.std(ddof=1):.{digits}f}"


def format_seeds(rows_by_seed: dict) -> str:
    """Per task and test set over the seeds (``{seed: rows}``): single-task and multi-task mean ± std, the delta's
    mean ± std (positive = multi-task better) and in how many seeds multi-task was ahead."""
    seeds = sorted(rows_by_seed)
    first = rows_by_seed[seeds[0]]
    lines = []
    for i, r in enumerate(first):
        per_seed = [rows_by_seed[s][i] for s in seeds]
        deltas = [p["delta"] for p in per_seed]
        lines.append([r["task"], r["test_set"], r["metric"], _cell([p["stl"] for p in per_seed], 4),
                      _cell([p["mtl"] for p in per_seed], 4), _cell(deltas, 4, signed=True),
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
