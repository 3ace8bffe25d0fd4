"""Co-annotation and distribution matching (Kollias et al.) against plain multi-task learning and single-task models.

The synthetic benchmark knows every face's action units, but only the lab domain labels them: lab (expression and
AUs), webcam and affect (expression only) train one network for expression and action units (32x32 input, the
narrower backbone of the ablation benchmark, --mixing (default balanced), cosine decay, --steps steps of batch 64).
Variants, all at the same budget:

  plain MTL                    masked losses only
  + co-annotation              webcam/affect faces get soft AU targets from their expression label, lab faces keep theirs
  + distribution matching      AU predictions on faces without AU labels are matched to
                               q(AU_k | x) = sum_i p(expression_i | x) d(i, k), and expression predictions on faces
                               without expression labels to the expression distribution the AU predictions imply
  + both                       the two together
  + fused outputs              plain MTL whose AU output, where the model answers (not in training), is the product of
                               experts of the AU head and the AUs its expression head implies (coupling.fuse_outputs)
  + both + fused outputs       both couplings in training, fused outputs in evaluation
  + both (class means)         both couplings at coupling.level: class: each expression's mean AU prediction over
                               the faces without AU labels matched to d(expression, ·), not each face's to its q
  + both (class means) + fused outputs   the same with fused outputs
The relatedness d is estimated from the lab training split (the rows that carry both labels; --table du2014 uses Du,
Tao & Martinez's PNAS 2014 table instead), and "+ both (Du 2014 table)" runs both couplings with the published table
to show what a prior that does not fit the data's AUs does.

Single-task baselines (the same steps; expression on lab + webcam + affect, AUs on lab, each with the task's share of
the multi-task batch) give the negative-transfer column: a task whose metric, averaged over the five test splits, is
below its single-task model's (paired seed by seed; mean ± std of the difference over seeds).

Tables (mean ± std over --seeds): AU mean F1 on each test split and on the four domains without AU labels, expression
accuracy on each test split. Written to --out: results.txt, results.json, distribution_matching.png. A benchmark
measures and prints; it asserts nothing.

    python -m benchmarks.distribution_matching [--seeds 0 1 2] [--steps 2400] [--lab-faces N] [--mixing sqrt]
        [--variants ...] [--out runs/distribution_matching]

Finished runs in --out are reused (their config must match); interrupted ones resume.
"""

import argparse
import copy
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

from kfacemtl.analysis.evaluation import text_table
from kfacemtl.files import atomic_write_text
from kfacemtl.data.mixing import MIXING_MODES
from kfacemtl.training import build_sources
from benchmarks.common import ROOT, SYNTHETIC_MODEL, cell, run, scores
from kfacemtl.training.single_task import single_task_configs

DOMAINS = ("lab", "webcam", "affect", "portraits", "street")
WITHOUT_AU_LABELS = ("webcam", "affect", "portraits", "street")
VARIANTS = {  # name: (co-annotation, distribution matching, table or None for --table, fused outputs, level)
    "plain MTL": (False, False, None, False, "sample"),
    "+ co-annotation": (True, False, None, False, "sample"),
    "+ distribution matching": (False, True, None, False, "sample"),
    "+ both": (True, True, None, False, "sample"),
    "+ both (Du 2014 table)": (True, True, "du2014", False, "sample"),
    "+ fused outputs": (False, False, None, True, "sample"),
    "+ both + fused outputs": (True, True, None, True, "sample"),
    "+ both (class means)": (True, True, None, False, "class"),
    "+ both (class means) + fused outputs": (True, True, None, True, "class"),
}


def base_config(seed: int, steps: int, faces: int = 3000, test_faces: int = 500, lab_faces: int | None = None,
                mixing: str = "balanced") -> dict:
    """Lab (``lab_faces``, default faces/3; expression + AUs), webcam (faces; expression), affect (2 faces/3;
    expression); five test splits; the multi-task models draw the domains with ``mixing``."""
    epochs = 4
    sizes = {"lab": lab_faces or max(64, faces // 3), "webcam": faces, "affect": max(64, 2 * faces // 3)}
    return {
        "tasks": ["expression", "action_units"],
        "sources": [f"synthetic:{d}?n={n}&seed={seed}" for d, n in sizes.items()],  # affect's valence/arousal unused
        "eval_sources": [f"synthetic:{d}?split=test&n={test_faces}&seed={seed}" for d in DOMAINS],
        "model": dict(SYNTHETIC_MODEL),
        "training": {"epochs": epochs, "steps_per_epoch": max(1, steps // epochs), "batch_size": 64, "seed": seed,
                     "mixing": mixing, "lr_schedule": "cosine"},
    }


def with_coupling(cfg: dict, variant: str, table: str) -> dict:
    co, dm, own_table, fuse, level = VARIANTS[variant]
    cfg = copy.deepcopy(cfg)
    if co or dm or fuse:
        cfg["coupling"] = {"coannotation": co, "distribution_matching": dm, "fuse_outputs": fuse, "level": level,
                           "relations": [{"source": "expression", "target": "action_units", "table": own_table or table}]}
    return cfg


def run_seed(seed: int, cfg: dict, variants, table: str, out: Path) -> list:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sources = build_sources(cfg["sources"])
        eval_sources = build_sources(cfg["eval_sources"], "eval_sources")
    stl = {}
    for task, stl_cfg in single_task_configs(cfg, sources).items():
        folder = out / f"seed{seed}" / f"single-task_{task}"
        print(f"[seed {seed}] single-task {task}", flush=True)
        stl.update(scores(stl_cfg, run(stl_cfg, folder), folder, eval_sources))
    results = [{"seed": seed, "variant": "single-task", "scores": _flat(stl), "train_seconds": None}]
    for variant in variants:
        folder = out / f"seed{seed}" / variant.strip("+ ").replace(" + ", " ").replace(" ", "_").replace(
            "(", "").replace(")", "")
        print(f"[seed {seed}] {variant}", flush=True)
        vcfg = with_coupling(cfg, variant, table)
        report = run(vcfg, folder)
        results.append({"seed": seed, "variant": variant, "scores": _flat(scores(vcfg, report, folder, eval_sources)),
                        "train_seconds": float(report.get("train_seconds_this_session", float("nan"))),
                        "implied": implied_scores(vcfg, folder, eval_sources) if variant == "plain MTL" else None})
    return results


def implied_scores(cfg: dict, folder: Path, eval_sources) -> dict:
    """AU mean F1 of a run's AU head and of the AUs its expression head implies, ``q = Σ_i p_i d(i, ·) ≥ 0.5`` (d
    estimated from the lab training split), on each test split: how good a signal coupling pulls the AU head
    towards. Cached in the run folder."""
    cache = folder / "implied_scores.json"
    if cache.exists():
        return json.loads(cache.read_text())
    from kfacemtl.training.coupling import Relatedness
    from kfacemtl.analysis.evaluation import multilabel_metrics
    from kfacemtl.models import load_model
    from kfacemtl.data import make_dataset
    model = load_model(folder / "model.keras", compile=False)
    expr, aus = (next(t for t in model.tasks if t.name == n) for n in ("expression", "action_units"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        lab = [s for s in build_sources(cfg["sources"]) if "action_units" in s.tasks]
    rel = Relatedness.estimate(lab, expr, aus)
    out = {}
    for src in eval_sources:
        ds = make_dataset([src], model.tasks, batch_size=250, image_size=tuple(cfg["model"]["input_shape"][:2]),
                          training=False)
        p = dict(zip(model.output_names, model.predict(ds.map(lambda x, y, w: x), verbose=0)))
        truth = src.labels([aus])[0]["action_units"]
        out[src.name.split("-")[0]] = {
            "head": multilabel_metrics(truth, p["action_units"], aus.classes)["mean_f1"],
            "implied": multilabel_metrics(truth, np.asarray(rel.forward(p["expression"])), aus.classes)["mean_f1"]}
    atomic_write_text(cache, json.dumps(out, indent=2))
    return out


def _flat(s: dict) -> dict:
    return {f"{task}@{test_set.split('-')[0]}": v for (task, test_set), v in s.items()}


def summary(r: dict) -> dict:
    """AU F1 on lab and on the domains without AU labels, expression accuracy over all test splits, per-task means."""
    s = r["scores"]
    return {"AU F1 lab": s["action_units@lab"],
            "AU F1 without AU labels": float(np.mean([s[f"action_units@{d}"] for d in WITHOUT_AU_LABELS])),
            "AU F1 all": float(np.mean([s[f"action_units@{d}"] for d in DOMAINS])),
            "expr acc all": float(np.mean([s[f"expression@{d}"] for d in DOMAINS]))}


def format_tables(results: list) -> str:
    seeds = sorted({r["seed"] for r in results})
    variants = list(dict.fromkeys(r["variant"] for r in results))
    by = {(r["variant"], r["seed"]): r for r in results}
    plain = "plain MTL" if "plain MTL" in variants else None

    def cells(v, fn, digits=3):
        return cell([fn(by[v, s]) for s in seeds], digits)

    title = f"synthetic, AUs labelled only in lab: seeds {', '.join(map(str, seeds))}" + (
        " (mean ± std)" if len(seeds) > 1 else "")
    # 1: AU mean F1 per test split
    header = ["variant"] + [f"AU F1 {d}" for d in DOMAINS] + ["AU F1 w/o AU labels"] + (
        ["Δ vs plain (paired)"] if plain else [])
    rows = []
    for v in variants:
        row = [v] + [cells(v, lambda r, d=d: r["scores"][f"action_units@{d}"]) for d in DOMAINS]
        row.append(cells(v, lambda r: summary(r)["AU F1 without AU labels"]))
        if plain:
            row.append("" if v in ("plain MTL", "single-task") else cells(
                v, lambda r: summary(r)["AU F1 without AU labels"]
                - summary(by["plain MTL", r["seed"]])["AU F1 without AU labels"]))
        rows.append(row)
    au = text_table(header, rows)
    # 2: expression accuracy per test split
    header = ["variant"] + [f"expr acc {d}" for d in DOMAINS] + ["expr acc mean"]
    rows = [[v] + [cells(v, lambda r, d=d: r["scores"][f"expression@{d}"]) for d in DOMAINS]
            + [cells(v, lambda r: summary(r)["expr acc all"])] for v in variants]
    expr = text_table(header, rows)
    # 3: negative transfer: each task's mean over the five test splits against its single-task model, seed by seed
    header = ["variant", "AU F1 - single-task", "expr acc - single-task", "negative transfer", "train s"]
    rows = []
    for v in variants:
        if v == "single-task":
            continue
        diffs = {key: [summary(by[v, s])[key] - summary(by["single-task", s])[key] for s in seeds]
                 for key in ("AU F1 all", "expr acc all")}
        worse = [name for name, key in (("AUs", "AU F1 all"), ("expression", "expr acc all")) if np.mean(diffs[key]) < 0]
        rows.append([v, cell(diffs["AU F1 all"], 3), cell(diffs["expr acc all"], 3),
                     ", ".join(worse) if worse else "none", cell([by[v, s]["train_seconds"] for s in seeds], 0)])
    neg = text_table(header, rows)
    text = (f"{title}\n\nAU mean F1 (AUs labelled only in lab)\n{au}\n\nexpression accuracy\n{expr}\n\n"
            f"against the single-task models (mean over the five test splits; negative transfer: a task below its "
            f"single-task model on average)\n{neg}")
    if plain and all(by[plain, s].get("implied") for s in seeds):
        header = ["plain MTL's AUs"] + [f"AU F1 {d}" for d in DOMAINS]
        rows = [[name] + [cell([by[plain, s]["implied"][d][key] for s in seeds], 3) for d in DOMAINS]
                for name, key in (("from the AU head", "head"), ("implied by the expression head", "implied"))]
        text += ("\n\nthe signal coupling pulls the AU head towards: AUs implied by plain MTL's expression predictions "
                 "(q = Σ_i p_i d(i, ·) ≥ 0.5, d estimated from lab) against its AU head\n" + text_table(header, rows))
    return text


def plot(results: list, out_png: Path) -> Path:
    from kfacemtl.analysis.plots import save_figure, subplots
    variants = list(dict.fromkeys(r["variant"] for r in results))
    fig, axes = subplots(1, 2, figsize=(12, 4))
    for ax, (key, label) in zip(axes, (("AU F1 without AU labels", "AU mean F1, domains without AU labels"),
                                       ("expr acc all", "expression accuracy, all five test splits"))):
        values = [[summary(r)[key] for r in results if r["variant"] == v] for v in variants]
        ax.bar(range(len(variants)), [np.mean(v) for v in values], yerr=[np.std(v) for v in values], capsize=3)
        ax.set_xticks(range(len(variants)), variants, rotation=25, ha="right", fontsize=8)
        ax.set(title=label, ylim=(min(np.mean(v) for v in values) * 0.8, None))
    return save_figure(fig, out_png)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--steps", type=int, default=2400)
    ap.add_argument("--faces", type=int, default=3000, help="webcam training faces (lab a third, affect two thirds)")
    ap.add_argument("--lab-faces", type=int, default=None, help="lab training faces, the only AU labels "
                                                                   "(default: a third of --faces)")
    ap.add_argument("--test-faces", type=int, default=500)
    ap.add_argument("--mixing", default="balanced", choices=list(MIXING_MODES),
                    help="how the multi-task models draw the three domains (the single-task ones: proportional, "
                         "each with its task's share of the multi-task batch)")
    ap.add_argument("--table", default="estimate", choices=["estimate", "du2014"],
                    help="the relatedness of the co-annotation / matching rows")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS), metavar="VARIANT")
    ap.add_argument("--out", default=str(ROOT / "runs" / "distribution_matching"))
    args = ap.parse_args(argv)
    out, start, results = Path(args.out), time.time(), []
    for seed in args.seeds:
        cfg = base_config(seed, args.steps, args.faces, args.test_faces, args.lab_faces, args.mixing)
        results += run_seed(seed, cfg, args.variants, args.table, out)
    text = format_tables(results) + f"\n\nbenchmark wall time {time.time() - start:.0f} s (reused runs take none)\n"
    print("\n" + text, flush=True)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.txt", text)
    atomic_write_text(out / "results.json", json.dumps(results, indent=2))
    plot(results, out / "distribution_matching.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
