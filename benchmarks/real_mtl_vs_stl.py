"""Multi-task versus single-task on real faces: UTKFace, FER2013 and CK+ (with action units), tested also on LFW.

Trains, with one backbone and one budget:

  (a) the multi-task model of ``configs/real_mtl.yaml`` (age, gender and race from UTKFace, expression from FER2013 and
      CK+, 14 action units from CK+), once per ``--variants`` entry: ``recipe`` (the config as it is), ``plain`` (every
      block shared, no distillation, no coupling, every loss weighed 1), ``branch`` (blocks 1-3 shared, then a face
      group and an expression group; ``branch2``: blocks 1-2 shared), ``bam`` (the single-task models below distilled
      into it with teacher annealing; ``unlabelled``: bam whose teachers also answer for the rows their task has no
      label on, ``distillation.anneal_unlabelled: 1``, the config's default since 2026-12-05; ``labelled-only``: they
      are heard only where their task is labelled, the recipe before; ``unlabelled-expression``: only the expression
      teacher does; ``unlabelled-no-au``: every teacher but the AU one does), ``coupling`` (co-annotation and
      distribution matching between expression and AUs; ``coupling-estimated``: with the expression → AU table estimated
      from the training rows that carry both; ``coupling-light``: both at a tenth of the label weight,
      ``coannotation_weight`` and ``matching_weight`` 0.1), ``dynamic`` (Ming et al.'s task weights instead of equal
      ones; the single-task models have one task to weigh), ``fer-heavy`` (mixing shares 0.35 / 0.55 / 0.10 for UTKFace
      / FER2013 / CK+ instead of 0.45 / 0.45 / 0.10), ``fer-weight`` (the expression loss weighed 2, the other tasks' 1:
      ``training.loss_weights``, the config's own since 2026-12-06; ``equal-weights``: every task's loss weighed 1, the
      recipe before), or combinations such as ``branch+bam``; each changes the config only where it says (``coupling``
      alone is the config with coupling; ``branch+bam`` keeps the config's ``anneal_unlabelled``, ``plain+bam`` plain's
      0);
  (b) one single-task model per task, on only the sources that label it.

**Equal budgets.** (a) runs S optimizer steps of batch B; in every step each task gets on average B x (the mixing
share of the sources labelling it) labelled faces. Each single-task model runs the same S steps with batches of
exactly that many faces of its task, mixed between its sources in (a)'s proportions; same backbone, optimizer,
schedule, augmentation and seed. The wall time of every run is printed beside it; a distilled student's time counts
its teachers' training time too.

**An honest protocol.** ``--protocol val`` (choosing settings) evaluates on the validation parts held out of the
training sets (``val_fraction``, by person), on development seeds (default 0); ``--protocol test`` (reporting)
evaluates on UTKFace's test split, FER2013 PublicTest, LFW expressions and the CK+ test subjects, on fresh seeds
(default 100, 101, 102). Seeds used for choosing are recorded in ``OUT/seeds_used_for_choosing.json`` and refused for
reporting. A results file that exists is kept under a new name before a table with other seeds or variants
replaces it, so a table is never silently extended after it was seen.

Per task and set: single-task, multi-task, the delta (positive = multi-task better) with its paired 95 % interval
(a bootstrap over faces for the AUs' mean F1), and over the seeds each side's mean ± std, the delta's, in how many
seeds multi-task was ahead, and the per-seed deltas. A benchmark measures and prints; it asserts nothing.

    python -m benchmarks.real_mtl_vs_stl --protocol val [--seeds 0] [--variants plain branch bam] [--steps 3000]
    python -m benchmarks.real_mtl_vs_stl --protocol test [--seeds 100 101 102] [--variants recipe plain]

Rerunning with the same ``--out`` (default ``runs/real_mtl_vs_stl``) resumes interrupted runs and reuses finished
ones; the runs of a seed serve both protocols (only what they are evaluated on differs).
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

import numpy as np

from benchmarks.common import (ROOT, cell, compare, missing_real_data, per_face_score, predictions, train,
                               with_data_root, with_steps)
from kfacemtl.analysis.evaluation import headline_metric, multilabel_metrics, text_table
from kfacemtl.files import atomic_write_text
from kfacemtl.models import load_model, model_tasks
from kfacemtl.training import build_sources
from kfacemtl.training.config import load_config
from kfacemtl.training.single_task import single_task_configs

DEV_SEEDS, REPORT_SEEDS = (0,), (100, 101, 102)
GROUPS = {"face": ["age", "gender", "race"], "expression": ["expression", "action_units"]}
VARIANTS = {  # config overrides on top of the multi-task config; "bam" also needs this seed's single-task runs
    "recipe": {},
    "plain": {"model": {"branch_at": None, "branches": None},
              "distillation": {"anneal": False, "teachers": None, "anneal_unlabelled": 0.0},
              "coupling": {"coannotation": False, "distribution_matching": False},
              "training": {"loss_weights": None}},
    "branch": {"model": {"branch_at": 3, "branches": GROUPS}},
    "bam": {"distillation": {"anneal": True}},
    "unlabelled": {"distillation": {"anneal": True, "anneal_unlabelled": 1.0}},
    "unlabelled-expression": {"distillation": {"anneal": True, "anneal_unlabelled": {"expression": 1.0}}},
    "unlabelled-no-au": {"distillation": {"anneal": True, "anneal_unlabelled": {
        "age": 1.0, "gender": 1.0, "race": 1.0, "expression": 1.0}}},
    "labelled-only": {"distillation": {"anneal_unlabelled": 0.0}},
    "branch2": {"model": {"branch_at": 2, "branches": GROUPS}},
    "coupling": {"coupling": {"coannotation": True, "distribution_matching": True}},
    "coupling-estimated": {"coupling": {"coannotation": True, "distribution_matching": True, "relations": [
        {"source": "expression", "target": "action_units", "table": "estimate"}]}},
    "coupling-light": {"coupling": {"coannotation": True, "distribution_matching": True, "coannotation_weight": 0.1,
                                    "matching_weight": 0.1}},
    "dynamic": {"training": {"weighting": "dynamic", "loss_weights": None}},  # learned weights instead of static ones
    "fer-heavy": {"training": {"mixing": {"utkface-train": 0.35, "fer2013-Training": 0.55, "ckplus-train": 0.1}}},
    "fer-weight": {"training": {"loss_weights": {"expression": 2.0}}},  # the recipe's own since its 9,000-step report
    "equal-weights": {"training": {"loss_weights": None}},  # every task's loss weighed 1: the recipe before it
}
SEEDS_FILE = "seeds_used_for_choosing.json"


def variant_config(cfg: dict, variant: str, teachers: dict) -> dict:
    """The multi-task config of ``variant`` (names joined by ``+``); ``teachers`` ``{task: run folder}`` for bam."""
    out = copy.deepcopy(cfg)
    for part in variant.split("+"):
        if part not in VARIANTS:
            raise SystemExit(f"--variants: unknown variant {part!r}; variants are {sorted(VARIANTS)} (joined by +)")
        for section, values in VARIANTS[part].items():
            out.setdefault(section, {}).update(copy.deepcopy(values))
        if VARIANTS[part].get("model", {}).get("branches"):  # only the groups of the config's tasks
            names = list(out["tasks"])
            out["model"]["branches"] = {g: [t for t in ts if t in names] for g, ts in GROUPS.items()
                                        if any(t in names for t in ts)}
        if VARIANTS[part].get("distillation", {}).get("anneal"):  # bam and its kin: this seed's teachers
            out["distillation"]["teachers"] = "single-task"
    if out.get("distillation", {}).get("teachers") == "single-task":  # this seed's single-task models: the same
        out["distillation"]["teachers"] = {t: str(f) for t, f in teachers.items()}  # configs, trained once
    return out


def protocol_eval_specs(cfg: dict, protocol: str) -> list:
    """What a protocol evaluates on: the config's test sets, or the validation part of every training source."""
    if protocol == "test":
        return list(cfg["eval_sources"])
    specs = [s if isinstance(s, str) else s["spec"] for s in cfg["sources"]]
    missing = [s for s in specs if "val_fraction=" not in s]
    if missing:
        raise SystemExit(f"--protocol val needs a validation part of every training source; {missing[0]} has no "
                         "val_fraction option")
    return [f"{s}&part=val" for s in specs]


def mean_f1_delta(task, y, p_stl, p_mtl, draws: int = 1000) -> tuple[float, float, float, float]:
    """(stl, mtl, delta, 95 % half-width) of the mean F1 over AUs; the interval from a paired bootstrap over faces."""
    names = list(task.classes)
    f1 = lambda rows, p: multilabel_metrics(y[rows], p[rows], names)["mean_f1"]  # noqa: E731
    every = np.arange(len(y))
    stl, mtl = f1(every, p_stl), f1(every, p_mtl)
    rng = np.random.default_rng(0)
    boot = [f1(r, p_mtl) - f1(r, p_stl) for r in (rng.integers(0, len(y), len(y)) for _ in range(draws))]
    return stl, mtl, mtl - stl, float(1.96 * np.nanstd(boot))


def stl_predictions(stl_models: dict, eval_sources, image_size) -> dict:
    """``{task: {set: (labels, predictions)}}`` of each single-task model, computed once for every multi-task model
    compared with them."""
    return {t: {s.name: predictions(m, s, image_size) for s in eval_sources} for t, m in stl_models.items()}


def compare_models(stl_preds: dict, mtl, eval_sources, image_size) -> list[dict]:
    """Rows of (task, test set): the single-task model of the task (its :func:`stl_predictions`) against ``mtl``,
    face by face."""
    rows = []
    preds = {s.name: predictions(mtl, s, image_size) for s in eval_sources}
    for task in model_tasks(mtl):
        for src in eval_sources:
            if task.name not in preds[src.name]:
                continue
            y, p_mtl = preds[src.name][task.name]
            _, p_stl = stl_preds[task.name][src.name][task.name]
            metric = headline_metric(task)
            if task.kind == "multilabel":
                stl, mtl_score, delta, ci = mean_f1_delta(task, y, p_stl, p_mtl)
            else:
                s_mtl, s_stl = per_face_score(task, y, p_mtl), per_face_score(task, y, p_stl)
                delta, ci = compare(s_stl, s_mtl, metric == "mae")
                stl, mtl_score = float(s_stl.mean()), float(s_mtl.mean())
            verdict = "MTL better" if delta - ci > 0 else "STL better" if delta + ci < 0 else "no clear difference"
            rows.append({"task": task.name, "test_set": src.name, "metric": {"mae": "MAE (years)"}.get(metric, metric),
                         "n": int(len(y)), "stl": stl, "mtl": mtl_score, "delta": delta, "ci95": ci,
                         "verdict": verdict})
    return rows


def in_half_widths(row: dict) -> float | None:
    """A row's delta in units of its 95 % half-width (what the choosing rule compares); None without an interval."""
    ci = row["ci95"]
    return None if not ci or math.isnan(ci) else row["delta"] / ci


def format_rows(rows: list[dict], ratio: bool = False) -> str:
    """One line per row; ``ratio`` adds the delta in units of its half-width (what the choosing rule compares)."""
    header = ["task", "test set", "metric", "n", "single-task", "multi-task", "delta (MTL better > 0)", "verdict"]
    lines = [[r["task"], r["test_set"], r["metric"], str(r["n"]), f"{r['stl']:.4f}", f"{r['mtl']:.4f}",
              f"{r['delta']:+.4f} ± {r['ci95']:.4f}", r["verdict"]] for r in rows]
    if ratio:
        header.append("delta / half-width")
        for line, r in zip(lines, rows):
            ratio_ = in_half_widths(r)
            line.append("-" if ratio_ is None else f"{ratio_:+.2f}")
    return text_table(header, lines)


def run_seed(cfg: dict, sources, eval_sources, variants, out: Path) -> tuple[dict, list[str]]:
    """Train (or reuse) the single-task models and every variant of the multi-task model of one seed in ``out``;
    returns ``({variant: rows}, lines of the time table)``."""
    steps = cfg["training"]["epochs"] * cfg["training"]["steps_per_epoch"]
    stl_cfgs = single_task_configs(cfg, sources)
    image_size = tuple(cfg["model"]["input_shape"][:2])
    seconds, stl_models, folders = {}, {}, {}
    for task, stl_cfg in stl_cfgs.items():
        folders[task] = out / f"single-task_{task}"
        seconds[f"single-task {task}"] = _train(stl_cfg, folders[task])
        stl_models[task] = load_model(folders[task] / "model.keras")
    stl_preds = stl_predictions(stl_models, eval_sources, image_size)
    rows, lines = {}, [f"seed {cfg['training']['seed']}: run, steps, batch, training seconds"]
    for name, stl_cfg in stl_cfgs.items():
        lines.append(f"  single-task {name:<14} {steps:>6} {stl_cfg['training']['batch_size']:>4} "
                     f"{seconds[f'single-task {name}']:>8.0f}")
    for variant in variants:
        mtl_cfg = variant_config(cfg, variant, folders)
        folder = out / f"multi-task_{variant.replace('+', '_')}"
        own = _train(mtl_cfg, folder)
        teachers = sum(seconds[f"single-task {t}"] for t in (mtl_cfg["distillation"].get("teachers") or {}))
        rows[variant] = compare_models(stl_preds, load_model(folder / "model.keras"), eval_sources, image_size)
        lines.append(f"  multi-task {variant:<15} {steps:>6} {cfg['training']['batch_size']:>4} {own:>8.0f}"
                     + (f"  + teachers {teachers:.0f} = {own + teachers:.0f}" if teachers else ""))
    return rows, lines


def _train(cfg: dict, folder: Path) -> float:
    print(f"\n== {folder}: {', '.join(s if isinstance(s, str) else s['spec'] for s in cfg['sources'])}", flush=True)
    start = time.time()
    report = train(cfg, folder)
    return float(report.get("train_seconds_this_session") or time.time() - start)


def format_seeds(rows_by_seed: dict) -> str:
    """Per task and test set over the seeds (``{seed: rows}``): single-task and multi-task mean ± std, the delta's
    mean ± std (positive = multi-task better), in how many seeds multi-task was ahead, and each seed's delta."""
    seeds = sorted(rows_by_seed)
    lines = []
    for i, r in enumerate(rows_by_seed[seeds[0]]):
        per_seed = [rows_by_seed[s][i] for s in seeds]
        deltas = [p["delta"] for p in per_seed]
        lines.append([r["task"], r["test_set"], r["metric"], cell([p["stl"] for p in per_seed], 4),
                      cell([p["mtl"] for p in per_seed], 4), cell(deltas, 4, signed=True),
                      f"{sum(d > 0 for d in deltas)} of {len(seeds)}", " ".join(f"{d:+.4f}" for d in deltas)])
    header = ["task", "test set", "metric", "single-task", "multi-task", "delta (MTL better > 0)", "MTL ahead",
              "per seed"]
    return f"seeds {', '.join(map(str, seeds))} (mean ± std over seeds)\n" + text_table(header, lines)


def keep_earlier(path: Path, text: str):
    """Write ``text`` to ``path``; an earlier, different table there is kept beside it first (``NAME.<time>.txt``,
    ``.json``)."""
    if path.exists() and path.read_text() != text:
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(path.stat().st_mtime))
        path.rename(path.with_name(f"{path.stem}.{stamp}{path.suffix}"))
    atomic_write_text(path, text)


def check_seeds(out: Path, protocol: str, seeds: list[int]):
    """Record the seeds used for choosing; refuse them for reporting."""
    record = out / SEEDS_FILE
    used = set(json.loads(record.read_text())) if record.exists() else set()
    if protocol == "val":
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(record, json.dumps(sorted(used | set(seeds))))
    elif used & set(seeds):
        raise SystemExit(f"--seeds {sorted(used & set(seeds))} chose settings (--protocol val) in {out}; report on "
                         f"fresh seeds (default {list(REPORT_SEEDS)})")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")),
                    help="the folder holding utkface/, fer2013/, ckplus_au/ and lfw_expressions/ (default ../shared/data)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "real_mtl.yaml"), help="the multi-task config (a)")
    ap.add_argument("--out", default=str(ROOT / "runs" / "real_mtl_vs_stl"),
                    help="where the runs go; rerunning with the same folder resumes")
    ap.add_argument("--protocol", choices=("val", "test"), default="val",
                    help="val: choose settings on the validation parts; test: report on the test sets")
    ap.add_argument("--steps", type=int, help="total optimizer steps (default: the config's epochs x steps_per_epoch)")
    ap.add_argument("--seeds", type=int, nargs="+", help=f"default {list(DEV_SEEDS)} (val), {list(REPORT_SEEDS)} (test)")
    ap.add_argument("--variants", nargs="+", default=["recipe"], help=f"multi-task variants: {sorted(VARIANTS)}, "
                                                                      "or several joined by + (default recipe)")
    args = ap.parse_args(argv)

    data = Path(args.data)
    if message := missing_real_data(data, needs_ckplus=True):
        print(message)
        return 0
    cfg = with_data_root(load_config(args.config), str(data))
    if args.steps:
        cfg = with_steps(cfg, args.steps)
    for variant in args.variants:
        variant_config(cfg, variant, {})  # unknown names fail now, not after hours of training
    eval_specs = protocol_eval_specs(cfg, args.protocol)
    cfg["eval_sources"] = []  # evaluated below, face by face
    out = Path(args.out)
    seeds = list(dict.fromkeys(args.seeds or (DEV_SEEDS if args.protocol == "val" else REPORT_SEEDS)))
    check_seeds(out, args.protocol, seeds)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # UTKFace's one malformed file name, reported once per build
        sources = build_sources(cfg["sources"])
        eval_sources = build_sources(eval_specs, "eval_sources")
    purpose = ("choosing settings: validation parts, development seeds" if args.protocol == "val"
               else "reporting: test sets, seeds never used to choose anything")
    rows_by_variant = {v: {} for v in args.variants}
    times = []
    for seed in seeds:
        seed_cfg = copy.deepcopy(cfg)
        seed_cfg["training"]["seed"] = seed
        rows, lines = run_seed(seed_cfg, sources, eval_sources, args.variants, out / f"seed{seed}")
        times += lines
        for variant, r in rows.items():
            rows_by_variant[variant][seed] = r
    steps = cfg["training"]["epochs"] * cfg["training"]["steps_per_epoch"]
    parts = [f"protocol {args.protocol} ({purpose}); {steps} steps; config {args.config}"]
    for variant, by_seed in rows_by_variant.items():
        parts.append(f"\n-- multi-task {variant} against the single-task models")
        for seed, r in by_seed.items():
            parts.append(f"seed {seed}\n{format_rows(r)}")
        if len(by_seed) > 1:
            parts.append(format_seeds(by_seed))
    text = "\n".join(parts + [""] + times)
    print("\n" + text)
    keep_earlier(out / f"results_{args.protocol}.txt", text + "\n")
    keep_earlier(out / f"results_{args.protocol}.json",
                 json.dumps({"protocol": args.protocol, "steps": steps, "seeds": seeds,
                             "rows": {v: {str(s): r for s, r in bs.items()} for v, bs in rows_by_variant.items()}},
                            indent=2, default=lambda x: None if isinstance(x, float) and math.isnan(x) else x))
    return 0


if __name__ == "__main__":
    sys.exit(main())
