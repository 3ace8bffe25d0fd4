"""How good a labeller is an expression → action-unit table, on the AUs that CK+ codes?

Co-annotation gives every face with an expression label and no AU label the soft AU target ``d(expression, ·)``,
and distribution matching pulls the AU head's predictions on those faces toward ``Σ_i p(expression_i) · d(i, ·)``:
both teach the AU head what the table says an expression shows. This measures what the table says against what
CK+'s FACS coders saw on the same faces: for each table (Du, Tao & Martinez 2014, the default; and one estimated
from the CK+ training subjects' own labels), the table's row for each face's true expression is read as AU
probabilities and scored with the AU head's metric (F1 per AU at 0.5, mean over the AUs that occur) on the CK+
training and test subjects. It also prints how much of the AU loss's weight those table targets carry in a batch
of a config, against the real AU labels.

With ``--runs``, it also reads trained models' AU outputs on the CK+ test subjects: mean F1 at 0.5 (the headline
metric), mean average precision (threshold-free: how well the AU probabilities rank the faces), how many of the
probabilities lie between 0.3 and 0.7, and AUs predicted against AUs coded per face, so a model trained towards the
table's fractional entries (0.5-0.67 for AU1, AU2, AU5, AU6 and AU17) can be told apart from one that ranks worse.

It trains nothing; it reads ``ckplus_au`` of the shared data, the config's mixing shares and the runs' models.

    python -m benchmarks.coupling_tables [--data ../shared/data] [--config configs/real_mtl.yaml] [--runs RUN ...]
"""

import argparse
import os
import sys
import warnings
from pathlib import Path

import numpy as np

from benchmarks.common import ROOT, predictions, with_data_root
from kfacemtl.analysis.evaluation import multilabel_metrics, text_table
from kfacemtl.files import atomic_write_text
from kfacemtl.models import load_model
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training import build_sources
from kfacemtl.training.config import load_config
from kfacemtl.training.coupling import Relatedness


def table_scores(relation: Relatedness, source) -> dict:
    """The multilabel metrics of ``relation``'s AUs for each face's true expression, on the faces of ``source``
    labelled for both."""
    labels, weights = source.labels([relation.source, relation.target])
    both = (weights[relation.source.name] > 0) & (weights[relation.target.name] > 0)
    expression = labels[relation.source.name][both].astype(int)
    implied = np.asarray(relation.forward(expression))
    truth = labels[relation.target.name][both].reshape(len(expression), -1)
    return multilabel_metrics(truth, implied, list(relation.target.classes))


def average_precision(truth, probs) -> float:
    """Mean over labels that occur of the average precision (the precision at each positive, faces ranked by
    probability).

    Example:
        >>> average_precision(np.array([[1, 0], [0, 1], [1, 0]]), np.array([[0.9, 0.2], [0.8, 0.7], [0.3, 0.1]]))
        0.9166666666666666
    """
    truth, probs, aps = np.asarray(truth) >= 0.5, np.asarray(probs), []
    for k in range(truth.shape[1]):
        if truth[:, k].any():
            hits = truth[np.argsort(-probs[:, k], kind="stable"), k]
            aps.append(float(np.mean((np.cumsum(hits) / np.arange(1, len(hits) + 1))[hits])))
    return float(np.mean(aps)) if aps else float("nan")


def model_rows(runs, test, names) -> tuple[list[list[str]], list[list[str]]]:
    """Two rows per run folder: its AU outputs on ``test`` (see the module docstring) and its F1 per AU."""
    rows, per_au = [], []
    for run in runs:
        model = load_model(Path(run) / "model.keras", compile=False)
        truth, probs = predictions(model, test, tuple(model.input_shape[1:3]))["action_units"]
        m = multilabel_metrics(truth, probs, names)
        rows.append([str(run), str(len(truth)), f"{m['mean_f1']:.3f}", f"{average_precision(truth, probs):.3f}",
                     f"{np.mean((probs > 0.3) & (probs < 0.7)):.3f}", f"{np.mean(np.sum(probs >= 0.5, 1)):.2f}",
                     f"{np.mean(np.sum(truth >= 0.5, 1)):.2f}"])
        per_au.append([str(run)] + [f"{m[f'f1_{a}']:.2f}" for a in names])
    return rows, per_au


def label_weights(cfg: dict) -> tuple[float, float]:
    """The AU loss's expected weight per batch row from real AU labels and from co-annotated ones (faces with an
    expression label and no AU label, at ``coupling.coannotation_weight``), from the config's mixing shares."""
    shares = cfg["training"]["mixing"]
    weight = cfg.get("coupling", {}).get("coannotation_weight", 0.5)
    sources = build_sources(cfg["sources"])
    real = sum(shares.get(s.name, 0.0) for s in sources if "action_units" in s.tasks)
    coannotated = sum(shares.get(s.name, 0.0) * weight for s in sources
                      if "expression" in s.tasks and "action_units" not in s.tasks)
    return real, coannotated


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")),
                    help="the folder holding ckplus_au/ (default ../shared/data)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "real_mtl.yaml"),
                    help="the multi-task config whose mixing shares weigh the labels")
    ap.add_argument("--out", default=str(ROOT / "runs" / "coupling_tables"), help="where results.txt goes")
    ap.add_argument("--runs", nargs="*", default=[], help="run folders whose models' AU outputs are read too")
    args = ap.parse_args(argv)
    data = Path(args.data)
    if not (data / "ckplus_au" / "labels.csv").is_file():
        print(f"ckplus_au/labels.csv not found under {data}; pass --data or set KFACEMTL_DATA. Nothing to do.")
        return 0
    tasks = {t.name: t for t in resolve_tasks({"expression": {"contempt": True}, "action_units": {}})}
    expression, aus = tasks["expression"], tasks["action_units"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        train, test = build_sources([f"ckplus:{data}/ckplus_au?split=train", f"ckplus:{data}/ckplus_au?split=test"])
    tables = {"du2014 (the default)": Relatedness.du_2014(expression, aus),
              "estimated from CK+ train": Relatedness.estimate([train], expression, aus)}
    scores = {(name, s.name): table_scores(rel, s) for name, rel in tables.items() for s in (train, test)}
    header = ["table", "faces", "n", "mean F1"] + list(aus.classes)
    rows = [[name, src, str(m["n"]), f"{m['mean_f1']:.3f}"] + [f"{m[f'f1_{a}']:.2f}" for a in aus.classes]
            for (name, src), m in scores.items()]
    parts = ["AU F1 of each table's row for the face's true expression (CK+ FACS codes as truth; 0.5 threshold)",
             text_table(header, rows)]
    cfg = with_data_root(load_config(args.config), str(data))
    real, coannotated = label_weights(cfg)
    parts.append(f"\n{args.config}: per batch row, the AU loss's weight from real AU labels {real:.3f}, from "
                 f"co-annotated ones {coannotated:.3f} (×{coannotated / real:.2f} the real labels')")
    if args.runs:
        rows, per_au = model_rows(args.runs, test, list(aus.classes))
        header = ["run", "faces", "mean F1 @0.5", "mean AP", "share in (0.3, 0.7)", "AUs predicted", "AUs coded"]
        parts += ["\nThe models' AU outputs on the CK+ test subjects", text_table(header, rows),
                  "\nTheir F1 per AU", text_table(["run"] + list(aus.classes), per_au)]
    text = "\n".join(parts)
    print(text)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "results.txt", text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
