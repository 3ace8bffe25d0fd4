"""How far would averaging trained models take a task? Each run's model alone, then every ensemble of k of them.

One model's answers can only be improved so far by teaching it (distillation from teachers, from earlier generations):
a teacher knows what the models it is built from know. This scores several trained runs on one set, alone and as
ensembles (the mean of their answers: class probabilities, AU probabilities, regressed values), for every k from 2 to
the number of runs (all combinations up to ``--max-combinations`` per k, else that many drawn with seed 0), so that a
target can be set against what even an ensemble of the recipe's models reaches on the same faces.

    python -m benchmarks.ensembles RUN RUN ... [--source SPEC] [--tasks race gender age] [--tta flip]

``--source`` defaults to UTKFace's validation part of the real recipe
(``utkface:../shared/data/utkface/UTKFace?split=train&val_fraction=0.1&part=val``). It trains nothing; a benchmark
measures and prints, it asserts nothing.
"""

import argparse
import itertools
import sys
import warnings

import numpy as np

from kfacemtl.analysis.evaluation import headline_metric, labelled_predictions, task_metrics
from kfacemtl.data import make_source
from kfacemtl.models import load_model, model_file, model_tasks
from kfacemtl.tables import text_table

UTKFACE_VAL = "utkface:../shared/data/utkface/UTKFace?split=train&val_fraction=0.1&part=val"


def ensemble_scores(answers: list[dict], task: str, max_combinations: int = 50) -> list[tuple[int, list[float]]]:
    """``[(k, [headline score of each ensemble of k])]`` for k = 1 .. len(answers), from each model's
    ``labelled_predictions`` (``{task: (task, labels, predictions)}``); at most ``max_combinations`` ensembles per k
    (drawn with seed 0 when there are more).

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> race, y = get_task("race"), np.array([0, 1])
        >>> a = {"race": (race, y, np.array([[.6, .4, 0, 0, 0], [.6, .4, 0, 0, 0]]))}   # right on the first face
        >>> b = {"race": (race, y, np.array([[.4, .6, 0, 0, 0], [.4, .6, 0, 0, 0]]))}   # right on the second
        >>> c = {"race": (race, y, np.array([[.9, .1, 0, 0, 0], [.2, .8, 0, 0, 0]]))}   # right on both
        >>> ensemble_scores([a, b, c], "race")
        [(1, [0.5, 0.5, 1.0]), (2, [0.5, 1.0, 1.0]), (3, [1.0])]
    """
    spec, labels = answers[0][task][0], answers[0][task][1]
    for other in answers[1:]:
        if not np.array_equal(other[task][1], labels):
            raise ValueError(f"{task}: the runs were scored on different faces (their labels differ)")
    rng = np.random.default_rng(0)
    out = []
    for k in range(1, len(answers) + 1):
        combos = list(itertools.combinations(range(len(answers)), k))
        if len(combos) > max_combinations:
            combos = [combos[i] for i in sorted(rng.choice(len(combos), max_combinations, replace=False))]
        scores = []
        for combo in combos:
            mean = np.mean([answers[i][task][2] for i in combo], axis=0)
            scores.append(round(float(task_metrics(spec, labels, mean)[headline_metric(spec)]), 4))
        out.append((k, scores))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories or .keras files (at least two)")
    p.add_argument("--source", default=UTKFACE_VAL, help="the set to score on, a source spec (default: %(default)s)")
    p.add_argument("--tasks", nargs="+", default=None, help="tasks to score (default: every task the set labels)")
    p.add_argument("--tta", default=None, help="each model's answers as the mean over these views (flip, six)")
    p.add_argument("--max-combinations", type=int, default=50, help="ensembles scored per k at most")
    args = p.parse_args(argv)
    if len(args.runs) < 2:
        p.error("name at least two runs: an ensemble needs more than one model")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # a dataset's skipped file names, said once per model otherwise
        source = make_source(args.source)
    answers = []
    for run in args.runs:
        model = load_model(model_file(run), compile=False)
        answers.append(labelled_predictions(model, source, model_tasks(model), tta=args.tta))
    tasks = args.tasks or [t for t in answers[0] if all(t in a for a in answers)]
    missing = [t for t in tasks if not all(t in a for a in answers)]
    if missing or not tasks:
        p.error(f"{missing or tasks}: not answered by every run on {source.name} (or not labelled there)")
    print(f"{source.name}, {len(answers[0][tasks[0]][1])} faces; views: {args.tta or 'none'}")
    rows = []
    for task in tasks:
        metric = headline_metric(answers[0][task][0])
        by_k = ensemble_scores(answers, task, args.max_combinations)
        for run, score in zip(args.runs, by_k[0][1]):
            rows.append([task, metric, run, f"{score:.4f}", "", ""])
        for k, scores in by_k[1:]:
            best = min(scores) if metric == "mae" else max(scores)
            rows.append([task, metric, f"ensembles of {k} ({len(scores)})", f"{np.mean(scores):.4f}",
                         f"{best:.4f}", f"{np.std(scores):.4f}" if len(scores) > 1 else ""])
    print(text_table(["task", "metric", "model", "mean", "best", "std"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
