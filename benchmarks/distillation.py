"""Data distillation: no distillation vs single-task teachers vs the multi-task teacher.

Three ways to train the same multi-task student for the same steps (rounds × epochs per round):

  (a) no distillation          labelled sources only
  (b) single-task teachers     one single-task model per task (trained first, on the sources that
                               label its task, as the matched baselines of real_mtl_vs_stl.py, for
                               the steps the multi-task teacher has trained at the first round
                               boundary) pseudo-labels its task at every round
  (c) multi-task teacher       the student itself at each round boundary (Distill-2MD-MTL's rounds)

(b) and (c) also train on the unlabelled target domain, pseudo-labelled with the same ensemble of
transforms, thresholds and pseudo-label weight (kfacemtl.training.distillation's defaults). With balanced mixing its
rows take their share of each batch (a fifth on synthetic), so (b) and (c) see fewer labelled rows per step
than (a); --same-labelled-rows grows their batch by that share instead (synthetic: 80 rows, 64 of them
labelled on average), so that every row is an addition: the comparison is then at equal steps and equal
labelled rows, and (b) and (c) compute more. --trained-teachers trains the teachers for the whole budget
first, as the paper and Radosavovic et al. do (a teacher trained to convergence, then a student): the
single-task teachers for the student's steps, and for (c) the fixed model (a) itself, the multi-task model
trained for the whole budget on the labels alone; the student then starts from scratch as before.
--images-control adds a fourth row, "target images only": (c)'s batches, target images included, with
thresholds that no prediction passes (class confidence 2, age spread 0), so that no pseudo-label is
accepted: what the target domain's images alone do (they only reach the batch-norm statistics, as
their rows carry no loss), apart from what the pseudo-labels add.

Settings:
  synthetic  the demo's four labelled domains (age, gender, race, expression; 32x32 input) with the
             street domain as the unlabelled target (its training split has no labels; its ground
             truth only scores the pseudo-labels; street test scores the student), over --seeds;
             --target-domain cctv: street faces through a gray 32-px camera instead, a shift that only
             the webcam domain (labelled for expression alone) covers, so that a multi-task teacher has
             seen such images and the single-task age, gender and race teachers have not
  real       configs/real_utk_fer.yaml (UTKFace + FER2013 labelled) with the LFW expressions images as the
             unlabelled target (an unlabelled source: its labels only score the pseudo-labels; the
             student is scored on the same faces, transductively): expression on LFW; and where the single-task
             and multi-task teachers both pseudo-label a FER2013 face's age, gender or race, how
             often they agree (FER2013 has no such labels to score against)

Printed per setting: the pseudo-labels of each round (share of candidates accepted and accuracy of
the accepted ones; MAE for age) on the target domain, the student's metric on the target test set
after each round (round 0: before any pseudo-label), and the cost of the transform ensemble
(pseudo-labelling images/s against plain batched inference images/s divided by T, in the same run:
the ensemble alone on in-memory images, and a whole round through the pipeline), and the students after
the last round paired seed by seed against no distillation, and (c) against (b) (mean difference ± std, t,
seeds ahead).
Also written to --out: results.txt and results.json. A benchmark measures and prints; it asserts
nothing.

    python -m benchmarks.distillation [--settings synthetic real] [--seeds 0 1 2] [--rounds 2]
        [--epochs-per-round 3] [--thresholds gender=0.9 ...] [--same-labelled-rows] [--pseudo-weight W] [--soft]
        [--reinit] [--trained-teachers] [--target-domain street|cctv] [--images-control]
        [--out runs/distillation]

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

import keras
import numpy as np
import tensorflow as tf

from kfacemtl.training.distillation import EnsembleTeacher
from kfacemtl.analysis.evaluation import evaluate_sources, headline_metric, text_table
from kfacemtl.files import atomic_write_text
from kfacemtl.models import load_model
from kfacemtl.data import CsvSource, make_dataset
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training import build_sources, demo_config
from benchmarks.common import ROOT, SYNTHETIC_MODEL, cell, real_config, run
from kfacemtl.training.single_task import single_task_configs

VARIANTS = ("no distillation", "single-task teachers", "multi-task teacher")
CONTROL = "target images only"  # --images-control: (c)'s batches, no pseudo-label accepted
SHORT = {"age": "age", "gender": "gender", "race": "race", "expression": "expr"}


class RoundEvaluation(keras.callbacks.Callback):
    """Evaluate the student on ``sources`` at the end of every round (every ``every`` epochs) into a JSON file."""

    def __init__(self, every: int, sources, tasks, path: Path):
        super().__init__()
        self.every, self.sources, self.tasks, self.path = every, sources, tasks, Path(path)
        self.results = json.loads(self.path.read_text()) if self.path.exists() else {}

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        evaluation = evaluate_sources(self.model, self.sources, self.tasks)
        by_name = {t.name: t for t in self.tasks}
        self.results[str((epoch + 1) // self.every - 1)] = {
            s: {t: float(m[headline_metric(by_name[t])]) for t, m in e.items()} for s, e in evaluation.items()}
        atomic_write_text(self.path, json.dumps(self.results, indent=2))


def with_rounds(cfg: dict, rounds: int, epochs_per_round: int) -> dict:
    cfg = copy.deepcopy(cfg)
    cfg["training"]["epochs"] = epochs_per_round * (rounds + 1)
    return cfg


def variant_config(base: dict, variant: str, unlabelled: list, rounds: int, epochs_per_round: int,
                   teachers: dict | None = None, thresholds: dict | None = None,
                   same_labelled_rows: bool = False, multi_task_teacher: str | None = None,
                   options: dict | None = None) -> dict:
    """The config of one of ``VARIANTS`` or ``CONTROL``; ``same_labelled_rows``: the batch of (b), (c) and the
    control grows by the unlabelled sources' share of balanced mixing, so that a step carries as many labelled rows
    as (a)'s on average; ``multi_task_teacher``: (c)'s fixed teacher (a run directory) instead of the student itself;
    ``options``: other ``distillation`` settings of (b) and (c), e.g. ``{"soft": True, "pseudo_weight": 1.0}``."""
    cfg = with_rounds(base, rounds, epochs_per_round)
    if variant == "no distillation":
        return cfg
    cfg["unlabelled_sources"] = list(unlabelled)
    if same_labelled_rows:
        if cfg["training"].get("mixing") != "balanced":
            raise SystemExit("--same-labelled-rows needs balanced mixing (each source an equal share of a batch), "
                             f"the config has {cfg['training'].get('mixing')!r}")
        n = len(cfg["sources"])
        cfg["training"]["batch_size"] = int(round(cfg["training"]["batch_size"] * (n + len(unlabelled)) / n))
    cfg["distillation"] = {**(options or {}), "rounds": rounds, "epochs_per_round": epochs_per_round}
    if thresholds:
        cfg["distillation"]["thresholds"] = dict(thresholds)
    if variant == CONTROL:  # thresholds no prediction passes: confidence <= 1, an ensemble's spread > 0
        cfg["distillation"]["thresholds"] = {t.name: 0.0 if t.kind == "regression" else 2.0
                                             for t in resolve_tasks(cfg["tasks"])}
    elif variant == "single-task teachers":
        cfg["distillation"]["teachers"] = {task: str(path) for task, path in teachers.items()}
    elif multi_task_teacher is not None:
        cfg["distillation"]["teachers"] = str(multi_task_teacher)
    return cfg


def synthetic_base(seed: int, steps_per_epoch: int, faces: int, test_faces: int,
                   portraits_faces: int | None = None) -> dict:
    """The synthetic setting's config; ``portraits_faces``: that many portraits (the only age, gender and race
    labels) instead of ``faces``."""
    cfg = demo_config(train_faces=faces, test_faces=test_faces, epochs=1, steps_per_epoch=steps_per_epoch, seed=seed)
    if portraits_faces:
        portraits = f"synthetic:portraits?n={portraits_faces}&seed={seed}"
        cfg["sources"] = [portraits if s.startswith("synthetic:portraits") else s for s in cfg["sources"]]
    cfg["tasks"] = ["age", "gender", "race", "expression"]
    cfg["model"] = dict(SYNTHETIC_MODEL)
    cfg["training"]["lr_schedule"] = "cosine"
    return cfg


def run_variants(name: str, seed: int, base: dict, unlabelled: list, target_test, rounds: int, epochs_per_round: int,
                 out: Path, thresholds: dict | None = None, same_labelled_rows: bool = False,
                 trained_teachers: bool = False, options: dict | None = None, variants=VARIANTS) -> dict:
    """Train the single-task teachers and the students of one seed (``variants``); returns their round logs and
    scores. ``trained_teachers``: the teachers are trained for the whole budget first (see the module's text)."""
    tasks = resolve_tasks(base["tasks"])
    folder = out / name / f"seed{seed}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        sources = build_sources(base["sources"])
    teachers = {}
    # the teachers get the steps the multi-task teacher has at the first round boundary, or the whole budget
    teacher_budget = with_rounds(base, rounds if trained_teachers else 0, epochs_per_round)
    for task, stl_cfg in single_task_configs(teacher_budget, sources).items():
        teachers[task] = folder / f"teacher_{task}"
        print(f"[{name} seed {seed}] single-task teacher {task}", flush=True)
        run(stl_cfg, teachers[task])
    result, folders = {}, {variant: folder / variant.replace(" ", "_").replace("-", "_") for variant in variants}
    for variant, vfolder in folders.items():
        print(f"[{name} seed {seed}] {variant}", flush=True)
        cfg = variant_config(base, variant, unlabelled, rounds, epochs_per_round, teachers, thresholds,
                             same_labelled_rows, folders["no distillation"] if trained_teachers else None, options)
        callback = RoundEvaluation(epochs_per_round, [target_test], tasks, vfolder / "round_evaluation.json")
        run(cfg, vfolder, extra_callbacks=[callback])
        log_path = vfolder / "distillation.json"
        result[variant] = {
            "student": json.loads((vfolder / "round_evaluation.json").read_text()),
            "rounds": json.loads(log_path.read_text())["rounds"] if log_path.exists() else [],
            "folder": str(vfolder),
        }
    return result


def ensemble_cost(model, images: np.ndarray, batch_size: int = 128, repeats: int = 3) -> dict:
    """Images/s of plain batched inference and of the transform ensemble on the same in-memory batches."""
    batch_size = min(batch_size, len(images))
    teacher = EnsembleTeacher(model)
    plain = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    batches = [tf.constant(images[i:i + batch_size]) for i in range(0, len(images) - batch_size + 1, batch_size)]

    def rate(fn):
        fn(batches[0])  # trace and warm up
        best = 0.0
        for _ in range(repeats):
            start = time.perf_counter()
            for b in batches:
                out = fn(b)
            tf.nest.map_structure(lambda t: t.numpy() if hasattr(t, "numpy") else t, out)
            best = max(best, len(batches) * batch_size / (time.perf_counter() - start))
        return best
    plain_rate, ensemble_rate = rate(plain), rate(teacher)
    return {"T": teacher.T, "batch": batch_size, "plain_images_per_s": plain_rate,
            "ensemble_images_per_s": ensemble_rate, "ratio_vs_plain_over_T": ensemble_rate / (plain_rate / teacher.T)}


def round_cost(model, source, tasks, batch_size: int = 128) -> dict:
    """Images/s of a whole pseudo-labelling round (pipeline, ensemble, selection) on ``source`` against plain
    batched inference through the same pipeline, both timed on a second pass (the first traces)."""
    from kfacemtl.training.distillation import DataDistillation
    from kfacemtl.data import WithoutLabels
    ds = make_dataset([source], tasks, batch_size=batch_size, image_size=tuple(model.input_shape[1:3]), training=False)
    plain = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    for _ in range(2):
        start = time.perf_counter()
        n = sum(int(tf.nest.flatten(plain(x))[0].shape[0]) for x, _, _ in ds)
        plain_rate = n / (time.perf_counter() - start)
    rounds = DataDistillation([WithoutLabels(source)], tasks, rounds=2, batch_size=batch_size, verbose=0)
    round_rate = max(rounds.run_round(model)["images_per_second"] for _ in range(2))
    return {"T": len(rounds.transforms), "plain_images_per_s": plain_rate, "round_images_per_s": round_rate,
            "ratio_vs_plain_over_T": round_rate / (plain_rate / len(rounds.transforms))}


def _target_stats(entry: dict, target: str, task) -> tuple:
    """(share accepted, quality of accepted) of a task's pseudo-labels on the target source in one round."""
    s = entry["sources"].get(target, {}).get(task)
    if not s or not s["candidates"]:
        return np.nan, np.nan
    return s["accepted"] / s["candidates"], s.get("quality_accepted", np.nan)


def format_tables(name: str, per_seed: dict, tasks, target: str, target_test: str, rounds: int) -> str:
    seeds = sorted(per_seed)
    variants = [v for v in VARIANTS + (CONTROL,) if v in per_seed[seeds[0]]]
    title = f"{name}: seeds {', '.join(map(str, seeds))}" + (" (mean ± std)" if len(seeds) > 1 else "")
    by_name = {t.name: t for t in tasks}

    def finite_cell(values, digits=3):
        values = [v for v in values if np.isfinite(v)]
        return cell(values, digits) if values else "-"

    shown = [t.name for t in tasks if any(np.isfinite(_target_stats(e, target, t.name)[0])
                                          for s in seeds for v in variants[1:] for e in per_seed[s][v]["rounds"])]
    rows = []
    for v in variants[1:]:
        for r in range(1, rounds + 1):
            row = [v, str(r)]
            for t in shown:
                stats = [_target_stats(next(e for e in per_seed[s][v]["rounds"] if e["round"] == r), target, t)
                         for s in seeds]
                row += [finite_cell([q for _, q in stats]), finite_cell([100 * a for a, _ in stats], 1)]
            rows.append(row)
    header = ["teacher", "round"] + [h for t in shown for h in
                                     (f"{SHORT.get(t, t)} {'MAE' if by_name[t].kind == 'regression' else 'acc'}", "accepted %")]
    pseudo = f"pseudo-labels on {target} (accepted share of its rows; accuracy of the accepted, MAE for age)\n" \
        + text_table(header, rows)
    rows = []
    student_tasks = [t.name for t in tasks if any(t.name in per_seed[s][VARIANTS[0]]["student"]["0"].get(target_test, {})
                                                  for s in seeds)]
    for v in variants:
        for r in range(rounds + 1):
            rows.append([v, str(r)] + [finite_cell([per_seed[s][v]["student"][str(r)][target_test][t] for s in seeds])
                                       for t in student_tasks])
    header = ["student", "round"] + [f"{SHORT.get(t, t)} {headline_metric(by_name[t])}" for t in student_tasks]
    student = f"student on {target_test} after each round (round 0: before any pseudo-label)\n" + text_table(header, rows)
    parts = [title, pseudo, student]
    if len(seeds) > 1:
        paired = [by_name[t] for t in student_tasks]
        parts.append(format_paired(per_seed, paired, target_test, rounds, variants[1:], VARIANTS[0]))
        parts.append(format_paired(per_seed, paired, target_test, rounds, VARIANTS[2:], VARIANTS[1]))
    return "\n\n".join(parts)


def format_paired(per_seed: dict, tasks, target_test: str, rounds: int, variants, baseline: str) -> str:
    """The students of ``variants`` after the last round against ``baseline``'s, seed by seed: the mean difference
    ± its std, t = mean / (std / sqrt(seeds)), and in how many seeds the row is ahead (lower MAE, higher accuracy)."""
    seeds = sorted(per_seed)

    def score(v, s, t):
        return per_seed[s][v]["student"][str(rounds)][target_test][t.name]

    rows = []
    for v in variants:
        row = [v]
        for t in tasks:
            d = np.array([score(v, s, t) - score(baseline, s, t) for s in seeds])
            better = d < 0 if t.kind == "regression" else d > 0
            sd = d.std(ddof=1)
            tval = d.mean() / (sd / np.sqrt(len(d))) if sd > 0 else np.nan
            row.append(f"{d.mean():+.3f} ± {sd:.3f} (t = {tval:.1f}), {int(better.sum())} of {len(d)}")
        rows.append(row)
    header = ["student"] + [f"{SHORT.get(t.name, t.name)} {headline_metric(t)}" for t in tasks]
    return (f"paired against {baseline} after round {rounds} (difference per seed: mean ± std, t, seeds ahead)\n"
            + text_table(header, rows))


def format_cost(cost: dict, whole: dict) -> str:
    return (f"transform ensemble cost (T = {cost['T']}, batches of {cost['batch']}, in-memory images): plain inference "
            f"{cost['plain_images_per_s']:.0f} images/s, ensemble {cost['ensemble_images_per_s']:.0f} images/s = "
            f"{cost['ratio_vs_plain_over_T']:.2f} x (plain / T)\n"
            f"a whole round (the same images through the pipeline, ensemble and selection): plain inference through the "
            f"pipeline {whole['plain_images_per_s']:.0f} images/s, round {whole['round_images_per_s']:.0f} images/s = "
            f"{whole['ratio_vs_plain_over_T']:.2f} x (plain / T)")


def agreement(folder_b: str, folder_c: str, source: str, tasks) -> dict:
    """Where both teachers accepted a pseudo-label of ``source``: class agreement (or mean |difference|) per task."""
    b, c = np.load(Path(folder_b) / "pseudo_labels.npz"), np.load(Path(folder_c) / "pseudo_labels.npz")
    out = {}
    for t in tasks:
        key = f"{source}/{t.name}"
        if f"weights/{key}" not in b or f"weights/{key}" not in c:
            continue
        both = (b[f"weights/{key}"] > 0) & (c[f"weights/{key}"] > 0)
        if not both.any():
            continue
        vb, vc = b[f"values/{key}"][both], c[f"values/{key}"][both]
        value = float(np.mean(vb.argmax(-1) == vc.argmax(-1))) if t.kind == "classification" \
            else float(np.mean(np.abs(vb - vc)))
        out[t.name] = {"rows": int(both.sum()), "agreement" if t.kind == "classification" else "mean_abs_diff": value}
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--settings", nargs="+", default=["synthetic", "real"], choices=["synthetic", "real"])
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="synthetic seeds")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--epochs-per-round", type=int, default=3)
    ap.add_argument("--synthetic-steps-per-epoch", type=int, default=150)
    ap.add_argument("--synthetic-faces", type=int, default=3000, help="training faces per domain (street too)")
    ap.add_argument("--synthetic-test-faces", type=int, default=500)
    ap.add_argument("--portraits-faces", type=int,
                    help="scarce labels: this many portraits (the only age, gender and race labels) instead of "
                         "--synthetic-faces")
    ap.add_argument("--target-domain", default="street", choices=["street", "cctv"],
                    help="the synthetic setting's unlabelled target domain (cctv: street faces, gray, 32 px)")
    ap.add_argument("--real-seeds", nargs="+", type=int, default=[0])
    ap.add_argument("--real-epochs-per-round", type=int, default=3)
    ap.add_argument("--real-steps-per-epoch", type=int, default=300)
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")))
    ap.add_argument("--config", default=str(ROOT / "configs" / "real_utk_fer.yaml"))
    ap.add_argument("--thresholds", nargs="+", default=[], metavar="TASK=VALUE",
                    help="distillation thresholds other than the package's defaults, e.g. gender=0.9")
    ap.add_argument("--same-labelled-rows", action="store_true",
                    help="grow the batch of (b) and (c) by the unlabelled rows' share, so that every step carries "
                         "as many labelled rows as (a)'s (needs balanced mixing)")
    ap.add_argument("--trained-teachers", action="store_true",
                    help="train the teachers for the whole budget first: single-task teachers for the student's "
                         "steps, and (a)'s final model as (c)'s fixed multi-task teacher")
    ap.add_argument("--pseudo-weight", type=float, help="pseudo-labelled rows' weight (the package's default: 0.5)")
    ap.add_argument("--soft", action="store_true", help="soft pseudo-labels (the ensemble's probabilities) for classes")
    ap.add_argument("--reinit", action="store_true", help="re-initialise the student of (b) and (c) at each round "
                                                          "boundary (distillation.reinit), as the paper's students")
    ap.add_argument("--images-control", action="store_true",
                    help=f"add a row {CONTROL!r}: (c)'s batches with the target images, no pseudo-label accepted")
    ap.add_argument("--out", default=str(ROOT / "runs" / "distillation"))
    args = ap.parse_args(argv)
    options = {k: v for k, v in (("pseudo_weight", args.pseudo_weight), ("soft", args.soft or None),
                                 ("reinit", args.reinit or None)) if v is not None}
    try:
        thresholds = {k: float(v) for k, v in (t.split("=", 1) for t in args.thresholds)}
    except ValueError:
        ap.error(f"--thresholds: expected TASK=VALUE pairs, got {args.thresholds}")
    out, start, texts, results = Path(args.out), time.time(), [], {}
    variants = VARIANTS + ((CONTROL,) if args.images_control else ())
    for setting in args.settings:
        if setting == "synthetic":
            per_seed, cost, whole = {}, None, None
            for seed in args.seeds:
                base = synthetic_base(seed, args.synthetic_steps_per_epoch, args.synthetic_faces,
                                      args.synthetic_test_faces, args.portraits_faces)
                target = args.target_domain
                unlabelled = [f"synthetic:{target}?n={args.synthetic_faces}&seed={seed}"]
                test_spec = f"synthetic:{target}?split=test&n={args.synthetic_test_faces}&seed={seed}"
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    test = build_sources([test_spec])[0]
                per_seed[seed] = run_variants("synthetic", seed, base, unlabelled, test, args.rounds,
                                              args.epochs_per_round, out, thresholds, args.same_labelled_rows,
                                              args.trained_teachers, options, variants)
                if cost is None:
                    student = load_model(Path(per_seed[seed]["multi-task teacher"]["folder"]) / "model.keras")
                    ds = make_dataset([test], resolve_tasks(base["tasks"]), batch_size=512,
                                      image_size=tuple(base["model"]["input_shape"][:2]), training=False)
                    cost = ensemble_cost(student, np.concatenate([x.numpy() for x, _, _ in ds]))
                    whole = round_cost(student, test, resolve_tasks(base["tasks"]))
            tasks = resolve_tasks(base["tasks"])
            text = format_tables("synthetic", per_seed, tasks, f"{args.target_domain}-train", test.name, args.rounds)
            text += "\n\n" + format_cost(cost, whole)
            results["synthetic"] = {"per_seed": per_seed, "cost": cost, "round_cost": whole}
        else:
            data = Path(args.data)
            labels = data / "lfw_expressions" / "labels.csv"
            if not all(p.exists() for p in (data / "utkface" / "UTKFace", data / "fer2013" / "train", labels)):
                print(f"real data not found under {data}; the real setting is skipped (pass --data).")
                continue
            per_seed = {}
            for seed in args.real_seeds:
                base = real_config(str(data), args.config, seed)
                base["training"]["steps_per_epoch"] = args.real_steps_per_epoch
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)
                    lfw = CsvSource(str(labels), domain="lfw", name="lfw-expressions")
                unlabelled = [f"csv:{labels}?name=lfw-unlabelled&domain=lfw"]  # trained on without its labels
                per_seed[seed] = run_variants("real", seed, base, unlabelled, lfw, args.rounds,
                                              args.real_epochs_per_round, out, thresholds, args.same_labelled_rows,
                                              args.trained_teachers, options, variants)
                runs = per_seed[seed]
                per_seed[seed]["fer_agreement"] = agreement(
                    runs["single-task teachers"]["folder"], runs["multi-task teacher"]["folder"], "fer2013-Training",
                    resolve_tasks(base["tasks"]))
            tasks = resolve_tasks(base["tasks"])
            text = format_tables("real", per_seed, tasks, "lfw-unlabelled", "lfw-expressions", args.rounds)
            text += "\n\nsingle-task vs multi-task teacher on FER2013 faces (last round, rows both accepted): " + \
                json.dumps({s: per_seed[s]["fer_agreement"] for s in per_seed})
            results["real"] = {"per_seed": per_seed}
        texts.append(text)
        print("\n" + text + "\n", flush=True)
    if not texts:
        return 0
    wall = f"benchmark wall time {time.time() - start:.0f} s (a reused run takes none)"
    print(wall)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.txt", "\n\n".join(texts) + "\n\n" + wall + "\n")
    atomic_write_text(out / "results.json", json.dumps(results, indent=2, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
