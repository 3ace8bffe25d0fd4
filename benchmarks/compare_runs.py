"""Multi-task runs already trained against single-task runs already trained, face by face, on one protocol's sets.

``benchmarks.real_mtl_vs_stl`` trains its own single-task and multi-task models; this scores runs made some other
way, for instance by ``kfacemtl train configs/real_mtl.yaml``, whose single-task teachers (``RUN/teachers/<task>``)
are the single-task models of that run's budget and seed. The table is the benchmark's (the delta's paired 95 %
interval, a bootstrap over faces for the AUs' mean F1), with each row's delta / half-width, and the choosing rule of
the benchmark's write-up: the smallest delta / half-width over the rows of at least ``--rule-min-faces`` faces
(the most-behind task in units of its interval; the larger, the better the variant).

    python -m benchmarks.compare_runs --single-task runs/real_mtl/teachers --multi-task runs/real_mtl runs/other \\
        [--protocol val] [--config configs/real_mtl.yaml] [--bn-stats-from fer2013-Training utkface-train]

``--bn-stats-from`` is a diagnostic: each multi-task model is scored again with its BatchNorm statistics recomputed on
the named training source's faces alone (AdaBN, Li et al. 2016), to see whether a gap lies in the statistics the
domains share (a single-task model's are its own domain's).

``--protocol val`` (the default) scores the validation parts of the config's training sources; ``test`` its
``eval_sources``. A benchmark measures and prints; it asserts nothing.
"""

import argparse
import os
import sys
import warnings
from pathlib import Path

import keras

from benchmarks.common import ROOT, missing_real_data, with_data_root
from benchmarks.real_mtl_vs_stl import (compare_models, format_rows, in_half_widths, protocol_eval_specs,
                                         stl_predictions)
from kfacemtl.data import make_dataset
from kfacemtl.models import load_model, model_tasks
from kfacemtl.training import build_sources
from kfacemtl.training.config import load_config


def rule_value(rows: list[dict], min_faces: int) -> tuple[float, str]:
    """The smallest delta / half-width over the rows of at least ``min_faces`` faces, and that row's task and set.

    Example:
        >>> rows = [{"task": "age", "test_set": "a", "n": 1500, "delta": 0.1, "ci95": 0.2},
        ...         {"task": "expression", "test_set": "b", "n": 2900, "delta": -0.01, "ci95": 0.014},
        ...         {"task": "expression", "test_set": "c", "n": 49, "delta": -0.2, "ci95": 0.05}]
        >>> value, where = rule_value(rows, 1000)
        >>> round(value, 2), where
        (-0.71, 'expression b')
    """
    scored = [(ratio, f"{r['task']} {r['test_set']}") for r in rows
              if r["n"] >= min_faces and (ratio := in_half_widths(r)) is not None]
    if not scored:
        raise SystemExit(f"--rule-min-faces {min_faces}: no row has that many faces")
    return min(scored)


def batchnorm_layers(layer):
    """Every BatchNormalization layer in ``layer``, nested models included."""
    if isinstance(layer, keras.layers.BatchNormalization):
        yield layer
    for inner in getattr(layer, "layers", ()):
        yield from batchnorm_layers(inner)


def recompute_batchnorm(model, batches) -> int:
    """Set ``model``'s BatchNorm moving statistics to the mean of their batch statistics over ``batches`` (images);
    the weights are untouched. Returns how many batches were seen.

    Example:
        >>> import numpy as np
        >>> model = keras.Sequential([keras.Input((2,)), keras.layers.BatchNormalization()])
        >>> recompute_batchnorm(model, [np.array([[1., 10.], [3., 10.]]), np.array([[5., 20.], [7., 20.]])])
        2
        >>> model.layers[0].moving_mean.numpy().tolist()
        [4.0, 15.0]
    """
    layers = list(batchnorm_layers(model))
    if not layers:
        raise SystemExit(f"{model.name}: no BatchNormalization layer to recompute")
    momenta = [layer.momentum for layer in layers]
    seen = 0
    try:
        for seen, images in enumerate(batches, 1):
            for layer in layers:
                layer.momentum = 1.0 - 1.0 / seen  # the n-th batch weighs 1/n: a running mean
            model(images, training=True)
    finally:
        for layer, momentum in zip(layers, momenta):
            layer.momentum = momentum
    return seen


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--single-task", required=True, type=Path,
                    help="a folder holding one single-task run per task, <task>/model.keras (e.g. RUN/teachers)")
    ap.add_argument("--multi-task", required=True, nargs="+", type=Path, help="multi-task run folders (model.keras)")
    ap.add_argument("--config", default=str(ROOT / "configs" / "real_mtl.yaml"),
                    help="the config whose sources (val) or eval_sources (test) are scored, and its input size")
    ap.add_argument("--protocol", choices=("val", "test"), default="val")
    ap.add_argument("--data", default=os.environ.get("KFACEMTL_DATA", str(ROOT.parent / "shared" / "data")),
                    help="the folder holding the real sets (default ../shared/data)")
    ap.add_argument("--rule-min-faces", type=int, default=1000,
                    help="rows with fewer faces are shown but do not count for the rule (default 1000)")
    ap.add_argument("--bn-stats-from", nargs="+", default=[], metavar="SOURCE",
                    help="also score each multi-task model with its BatchNorm statistics recomputed on this training "
                         "source's faces (e.g. fer2013-Training)")
    args = ap.parse_args(argv)

    if message := missing_real_data(Path(args.data), needs_ckplus=True):
        print(message)
        return 0
    cfg = with_data_root(load_config(args.config), args.data)
    for folder in args.multi_task:
        if not (folder / "model.keras").is_file():
            raise SystemExit(f"--multi-task: {folder} holds no model.keras (a finished run was expected)")
    mtl_models = {folder: load_model(folder / "model.keras") for folder in args.multi_task}
    needed = {t.name for m in mtl_models.values() for t in model_tasks(m)}
    missing = sorted(t for t in needed if not (args.single_task / t / "model.keras").is_file())
    if missing:
        raise SystemExit(f"--single-task: {args.single_task} has no {missing[0]}/model.keras (one run per task of "
                         f"the multi-task models was expected: {sorted(needed)})")
    stl_models = {t: load_model(args.single_task / t / "model.keras") for t in sorted(needed)}
    image_size = tuple(cfg["model"]["input_shape"][:2])
    for name, model in [*mtl_models.items(), *stl_models.items()]:  # before the sources are read
        if tuple(model.input_shape[1:3]) != image_size:
            raise SystemExit(f"{name}: the model takes {model.input_shape[1:3]} images, the config "
                             f"({args.config}) model.input_shape {image_size}; score runs of that config")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # UTKFace's one malformed file name
        eval_sources = build_sources(protocol_eval_specs(cfg, args.protocol), "eval_sources")
        train_sources = build_sources(cfg["sources"], "sources") if args.bn_stats_from else []
    by_name = {s.name: s for s in train_sources}
    unknown = [n for n in args.bn_stats_from if n not in by_name]
    if unknown:
        raise SystemExit(f"--bn-stats-from: no training source {unknown[0]!r}; the config's are {sorted(by_name)}")
    stl_preds = stl_predictions(stl_models, eval_sources, image_size)
    for folder, model in mtl_models.items():
        score(model, stl_preds, eval_sources, image_size, args, str(folder))
        for name in args.bn_stats_from:  # the first batch replaces the statistics: no model reloaded between sources
            images = make_dataset([by_name[name]], model_tasks(model), batch_size=256, image_size=image_size,
                                  training=False).map(lambda x, y, w: x)
            n = recompute_batchnorm(model, images)
            score(model, stl_preds, eval_sources, image_size, args,
                  f"{folder}, BatchNorm statistics from {name} ({n} batches)")
    return 0


def score(model, stl_preds, eval_sources, image_size, args, title: str):
    """Print one multi-task model's rows against the single-task models' predictions, and the rule's value."""
    rows = compare_models(stl_preds, model, eval_sources, image_size)
    value, where = rule_value(rows, args.rule_min_faces)
    print(f"-- {title} against the single-task runs of {args.single_task} ({args.protocol})")
    print(format_rows(rows, ratio=True))
    print(f"rule (smallest delta / half-width over rows of >= {args.rule_min_faces} faces): {value:+.2f} ({where})\n")


if __name__ == "__main__":
    sys.exit(main())
