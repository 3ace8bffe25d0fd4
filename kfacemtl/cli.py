"""The ``kfacemtl`` command line: ``train``, ``evaluate``, ``calibrate``, ``demo``, ``export``, ``predict``,
``explain``, ``analyze`` (each one's ``--help`` shows more examples; the user guide is docs/guide/).

Example:
    $ kfacemtl analyze photos/ --model runs/real_mtl --tta flip --out analysis/
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import os
import sys
import time
from pathlib import Path

from kfacemtl.errors import KfacemtlError

# Subcommands import kfacemtl (and so TensorFlow) when they run: main() first decides whether its start-up lines show.


def _cmd_train(args):
    from kfacemtl.training.config import load_config, resolve_config
    from kfacemtl.training import train_run
    cfg = load_config(args.config)
    if args.strategy:  # this host's setting (e.g. multi_worker on each host of a cluster), over the config's
        cfg["training"]["strategy"] = args.strategy
        if args.strategy != "mirrored":
            cfg["training"]["strategy_devices"] = None
        cfg = resolve_config(cfg)
    report = train_run(cfg, args.out, resume=args.resume)
    if report.get("table"):
        print(report["table"])
    print(f"run directory: {args.out}")


def _sources_of(args, what: str, pick) -> tuple[list, str]:
    """``(source specs, where they came from)``: ``--source``, or ``pick(config)`` of a run directory's
    config.yaml (empty when ``args.model`` is not a run directory)."""
    from kfacemtl.training.config import load_config
    if args.source:
        return args.source, "--source"
    config = os.path.join(args.model, "config.yaml")
    return (pick(load_config(config)) if os.path.isfile(config) else []), f"{what} of {config}"


def _cmd_evaluate(args):
    from kfacemtl.analysis.evaluation import evaluate_sources, format_table, labelled_predictions, to_json
    from kfacemtl.models import load_model, model_file, model_tasks
    from kfacemtl.training import build_sources
    model = load_model(model_file(args.model), compile=False)
    tasks = model_tasks(model)
    specs, where = _sources_of(args, "eval_sources", lambda cfg: cfg["eval_sources"])  # default: its test sets
    if not specs:
        raise KfacemtlError(f"{args.model}: no --source given and no eval_sources in a run directory's "
                            "config.yaml; name the sets to evaluate with --source")
    sources = build_sources(specs, where)
    # one pass over each set's images; the table, the reliability diagrams and the groups all read it
    predicted = {s.name: labelled_predictions(model, s, tasks, args.batch_size, tta=args.tta) for s in sources}
    results = evaluate_sources(model, sources, tasks, batch_size=args.batch_size, predicted=predicted)
    print(format_table(results, tasks))
    from kfacemtl.analysis.calibration import ece_table, plot_source_reliability
    if any(t.kind == "classification" for t in tasks):
        print("\n" + ece_table(results, model.temperatures))
    if args.plots:
        written = plot_source_reliability(model, sources, args.plots, args.batch_size, predicted=predicted)
        print(f"{len(written)} reliability diagrams in {args.plots}")
    if args.by:
        from kfacemtl.analysis.fairness import evaluate_groups, format_groups
        from kfacemtl.files import atomic_write_text
        with _options(by="--by"):
            groups = evaluate_groups(model, sources, [b for b in args.by.split(",") if b], tasks,
                                     batch_size=args.batch_size, predicted=predicted)
        print("\n" + format_groups(groups))
        if os.path.isdir(args.model):  # the run's model card (kfacemtl export) carries it
            atomic_write_text(os.path.join(args.model, "fairness.json"), json.dumps(groups, indent=2))
    if args.json:
        _write_json(args.json, to_json(results))


def _cmd_calibrate(args):
    from kfacemtl.analysis.calibration import calibrate, calibration_table, save_calibrated
    from kfacemtl.data.registry import validation_spec
    from kfacemtl.models import load_model, model_file
    from kfacemtl.training import build_sources
    path = model_file(args.model)
    specs, where = _sources_of(args, "validation parts",  # default: the validation parts of its training sources
                               lambda cfg: [v for v in map(validation_spec, cfg["sources"]) if v is not None])
    if not specs:
        raise KfacemtlError(f"{args.model}: no --source given and no training source of a run directory's "
                            "config.yaml holds a validation part out (val_fraction); name validation data with "
                            "--source (never the test set)")
    model = load_model(path, compile=False)
    with _options(model="--model", sources="--source", coverage="--coverage"):
        report = calibrate(model, build_sources(specs, where), batch_size=args.batch_size, coverage=args.coverage,
                           tta=args.tta)
    out = Path(args.out) if args.out else path
    kept = path.with_name(f"{path.stem}_uncalibrated.keras")
    if out == path and not kept.exists():  # the model as trained stays, once, beside its calibrated self
        import shutil
        shutil.copy2(path, kept)
    written = save_calibrated(model, report, out, specs)
    print(calibration_table(report))
    print(f"calibrated model: {out}; {written['json']}; reliability diagrams in {out.parent / 'plots'}")


def _cmd_demo(args):
    from kfacemtl.training import demo_config, train_run
    cfg = demo_config(train_faces=args.faces, test_faces=args.test_faces, epochs=args.epochs,
                      steps_per_epoch=args.steps)
    print(f"kfacemtl demo: rendering the synthetic benchmark ({len(cfg['sources'])} labelled domains, "
          f"{len(cfg['eval_sources'])} test splits; cached after the first run) ...", flush=True)
    start = time.time()
    report = train_run(cfg, args.out, resume=args.resume, verbose=1)
    print("\nTest splits (every ground truth; street was never labelled). "
          "acc = accuracy, MAE in years, (n) = samples:\n")
    print(report["table"])
    print(f"\n{time.time() - start:.0f} s in all. The run lives in {args.out}: model.keras, history.csv, "
          f"report.json, plots/, logs/ (TensorBoard).")


def _write_json(path, text: str):
    from kfacemtl.files import atomic_write_text
    print(f"wrote {atomic_write_text(path, text)}")


def _cmd_export(args):
    from kfacemtl.serving.export import ExportError, export_model
    if args.format == "litert":
        if args.tta != "none":
            raise KfacemtlError("--tta: LiteRT files hold the plain float signature; --tta is for --format savedmodel")
        from kfacemtl.serving.litert import export_litert
        path = export_litert(args.model, args.base or "litert_models", args.name, version=args.version,
                             variants=[v.strip() for v in args.variants.split(",") if v.strip()])
        sizes = json.loads((path / "model_card.json").read_text())["variants"]
        print(f"exported {path}\n" + "".join(f"  {v}: {path / s['file']} ({s['bytes'] / 1024:.0f} KiB)\n"
                                             for v, s in sizes.items()) + f"  model card: {path / 'model_card.json'}")
        return
    labels = {}
    for item in args.label or []:
        key, sep, value = item.partition("=")
        if not sep or not value.isdigit():
            raise ExportError(f"--label {item!r}: expected NAME=VERSION, e.g. stable=3")
        labels[key] = int(value)
    path = export_model(args.model, args.base or "saved_models", args.name, version=args.version, labels=labels or None,
                        serving_base=args.serving_base, jit_compile=args.jit_compile, tta=args.tta)
    print(f"exported {path}\n  signatures: serving_default (encoded images), serving_float (float tensors)\n"
          f"  model card: {path / 'model_card.md'}\n  server config: {path.parent / 'models.config'}, "
          f"{path.parent / 'batching_parameters.txt'}")


def _cmd_predict(args):
    from kfacemtl.serving.client import Client, LocalPredictor, ServingError, format_results
    if bool(args.server) == bool(args.saved_model):
        raise ServingError("give either --server HOST:PORT (with --model) or --saved-model DIR")
    if args.server:
        if not args.model:
            raise ServingError("--server needs --model NAME")
        predictor = Client(args.server, args.model, version=args.version, label=args.label,
                           protocol="rest" if args.rest else "grpc", timeout=args.timeout)
    else:
        predictor = LocalPredictor(args.saved_model)
    names = [str(p) for p in args.images]  # the names read_images gives files; each file is read once, by predict
    results = predictor.predict(args.images)
    if args.json:
        _write_json(args.json, json.dumps([dict(r, image=n) for n, r in zip(names, results)], indent=2))
    else:
        print(format_results(results, names))


@contextlib.contextmanager
def _options(**flags):
    """A library function's plain error about one of its arguments (``"head: unknown head 'smile'; ..."``) as a
    kfacemtl error naming the command-line option that gave it (``--head``): one line, not a traceback."""
    try:
        yield
    except KfacemtlError:
        raise
    except (ValueError, FileNotFoundError) as e:
        name, sep, message = str(e).partition(": ")
        if not sep or name not in flags:
            raise
        raise KfacemtlError(f"{flags[name]}: {message}") from None


def _cmd_explain(args):
    from kfacemtl.analysis.explain import METHODS, explain_files
    from kfacemtl.models import load_model, model_file
    path = model_file(args.model)
    methods = list(METHODS) if args.method == "all" else [args.method]
    with _options(head="--head", target="--class", method="--method", layer="--layer"):
        written = explain_files(load_model(path, compile=False), args.images, args.out, heads=args.head,
                                target=args.target, methods=methods, layer=args.layer)
    grids = [p for p in written if p.name.startswith("grid_")]
    print(f"wrote {len(written)} PNGs to {args.out}; grids: {', '.join(str(g) for g in grids)}")


def _cmd_analyze(args):
    from kfacemtl.analysis.photos import analyze, write_records
    from kfacemtl.analysis.annotate import write_annotated
    from kfacemtl.serving.client import Client
    if bool(args.server) == bool(args.model):
        raise KfacemtlError("give either --model RUN|FILE.keras|SAVEDMODEL or --server HOST:PORT (with --name)")
    model = args.model
    if args.server:
        if not args.name or not args.image_size:
            raise KfacemtlError("--server needs --name (the served model) and --image-size (its input size)")
        model = Client(args.server, args.name, protocol="rest" if args.rest else "grpc")
    from kfacemtl.data.detection import make_detector
    with _options(photos="PHOTOS", model="--model", image_size="--image-size", detector="--detector",
                  min_face_size="--min-face-size", explain_heads="--explain", head="--explain", tta="--tta"):
        detector = make_detector(args.detector, **({"min_face_size": args.min_face_size}
                                                   if args.detector == "mtcnn" else {}))
        records = analyze(args.photos, model, detector=detector, image_size=args.image_size,
                          batch_size=args.batch_size, explain_heads=args.explain or (),
                          explain_dir=Path(args.out) / "explained", tta=args.tta)
    paths = write_records(records, args.out)
    annotated = [] if args.no_annotate else write_annotated(records, Path(args.out) / "annotated")
    faces = sum(len(r["faces"]) for r in records)
    statuses = collections.Counter(r["status"].split(":")[0] for r in records)
    print(f"{len(records)} photos ({', '.join(f'{n} {k}' for k, n in sorted(statuses.items()))}), {faces} faces; "
          f"wrote {paths['jsonl']}, {paths['csv']}" + (f" and {len(annotated)} annotated photos in "
                                                      f"{Path(args.out) / 'annotated'}" if annotated else ""))


def _subcommand(sub, name: str, summary: str, description: str, examples: str, func):
    """A subcommand whose ``--help`` gives its summary, a description, its examples and every default."""
    p = sub.add_parser(name, help=summary, description=f"{summary}.\n\n{description}",
                       epilog="examples:\n" + "\n".join(f"  {line}" for line in examples.strip().splitlines()),
                       formatter_class=_HelpFormatter)
    p.set_defaults(func=func)
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="show TensorFlow's start-up and C++ log lines")
    return p


class _HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Descriptions and examples as written, and each option's default (where it has one) after its help."""

    def _get_help_string(self, action):
        text = action.help or ""
        if action.default not in (None, False, argparse.SUPPRESS) and "default" not in text and action.option_strings:
            text += " (default: %(default)s)"
        return text


def build_parser() -> argparse.ArgumentParser:
    """The ``kfacemtl`` argument parser: one subcommand per job, each with its own ``--help``.

    Example:
        >>> args = build_parser().parse_args(["export", "runs/demo", "--name", "faces"])
        >>> args.command, args.format, args.version
        ('export', 'savedmodel', None)
    """
    from kfacemtl.training.demo import DEMO_EPOCHS, DEMO_STEPS
    from kfacemtl.models.views import VIEW_NAMES
    from kfacemtl.training.distribute import STRATEGIES
    parser = argparse.ArgumentParser(
        prog="kfacemtl", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Multi-task face analysis with Keras 3: one network for age, gender, race, expression, action "
                    "units and valence/arousal,\ntrained from several partially labelled datasets, exported for TF "
                    "Serving, explained with saliency maps.",
        epilog="examples:\n"
               "  kfacemtl demo                                              # the synthetic benchmark, ~10 min on 2 cores\n"
               "  kfacemtl train configs/real_mtl.yaml --out runs/real_mtl\n"
               "  kfacemtl evaluate runs/real_mtl --source 'fer2013:../shared/data/fer2013?usage=PublicTest'\n"
               "  kfacemtl calibrate runs/real_mtl\n"
               "  kfacemtl export runs/real_mtl --name faces\n"
               "  kfacemtl predict --saved-model saved_models/faces/1 face.jpg\n"
               "  kfacemtl explain runs/real_mtl face.jpg --head expression --out saliency/\n"
               "  kfacemtl analyze photos/ --model runs/real_mtl --out analysis/\n\n"
               "Each subcommand's --help has its options. The user guide: docs/guide/; "
               "how the parts fit: docs/ARCHITECTURE.md.")
    parser.add_argument("--verbose", action="store_true",
                        help="show TensorFlow's start-up and C++ log lines (also shown when TF_CPP_MIN_LOG_LEVEL is 0 "
                             "or 1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = _subcommand(sub, "train", "train from a YAML config into a run directory",
                    "The run directory gets config.yaml, model.keras, history.csv, report.json (with the evaluation\n"
                    "of eval_sources), plots/, logs/ (TensorBoard) and backup/ (the last finished epoch, for\n"
                    "--resume). Every config key is in docs/guide/configuration.md.",
                    """
kfacemtl train configs/real_mtl.yaml --out runs/real_mtl
kfacemtl train configs/real_mtl.yaml --out runs/real_mtl --resume          # after an interruption
kfacemtl train exp.yaml --out runs/exp --strategy mirrored                 # every GPU of this host
TF_CONFIG='{...}' kfacemtl train exp.yaml --out runs/exp --strategy multi_worker   # on each host
""", _cmd_train)
    p.add_argument("config", help="YAML config file (keys: tasks, sources, eval_sources, unlabelled_sources, model, "
                                  "training, distillation, coupling)")
    p.add_argument("--out", required=True, help="run directory (must be new or empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out from its last finished "
                                                         "epoch (or a finished one with more epochs)")
    p.add_argument("--strategy", choices=STRATEGIES, help="where to train, over the config's training.strategy "
                                                          "(multi_worker: the cluster comes from TF_CONFIG)")

    p = _subcommand(sub, "evaluate", "per-source, per-task metrics of a saved model",
                    "Prints one row per source and the headline metric of each task the source labels\n"
                    "(accuracy, AU mean F1, MAE, valence/arousal mean CCC); --json keeps every metric.",
                    """
kfacemtl evaluate runs/real_mtl                  # a run directory: the test sets of its config (eval_sources)
kfacemtl evaluate runs/real_mtl --by gender,race # every metric per gender and per race, and the worst-group gaps
kfacemtl evaluate runs/real_mtl --tta flip       # each answer averaged over the face and its mirror
kfacemtl evaluate runs/demo --source 'synthetic:street?split=test&n=1000'
kfacemtl evaluate runs/real_mtl/model.keras --source 'utkface:../shared/data/utkface/UTKFace?split=test' \\
    --source 'csv:../shared/data/lfw_expressions/labels.csv?domain=lfw' --json results.json
""", _cmd_evaluate)
    p.add_argument("model", help="a .keras file written by kfacemtl, or a run directory")
    p.add_argument("--source", action="append",
                   help="FORMAT:PATH[?key=value&...], e.g. 'synthetic:street?split=test&n=1000', "
                        "'csv:faces.csv', 'folder:fer/test?task=expression'; repeat for several "
                        "(default: a run directory's eval_sources)")
    p.add_argument("--json", help="also write {source: {task: {metric: value, n: count}}} here")
    p.add_argument("--batch-size", type=int, default=128, help="images per prediction batch")
    p.add_argument("--tta", choices=VIEW_NAMES, default="none", help="test-time augmentation: each answer "
                   "averaged over views of a face (flip: it and its mirror, twice the time; six: flips, zooms, shifts)")
    p.add_argument("--plots", help="folder for a reliability diagram per source and classification head")
    p.add_argument("--by", help="comma-separated classification labels to break every metric down by, e.g. "
                                "gender,race: per group and the worst-group gap (a run directory keeps it in "
                                "fairness.json for its model card)")

    p = _subcommand(sub, "calibrate", "class probabilities you can trust and an age interval, fitted on validation data",
                    "Fits one temperature per classification head (gender, race, expression ...) to minimise the\n"
                    "negative log-likelihood on validation faces, and an interval around each single-value\n"
                    "regression head (age) that holds --coverage of the true values; saves both in the model (so\n"
                    "evaluate, predict, analyze and export use them; the predicted classes never change) and prints\n"
                    "the expected calibration error before and after. Writes calibration.json beside the model and\n"
                    "plots/reliability_<task>.png. Never calibrate on the test set that reports the result.",
                    """
kfacemtl calibrate runs/real_mtl                 # a run directory: its sources' validation parts (val_fraction)
kfacemtl calibrate runs/real_mtl --source 'fer2013:../shared/data/fer2013?usage=Training&val_fraction=0.1&part=val'
kfacemtl calibrate runs/exp/model.keras --source 'csv:val.csv' --out runs/exp/model_calibrated.keras
""", _cmd_calibrate)
    p.add_argument("model", help="a run directory or a .keras file")
    p.add_argument("--source", action="append", help="validation data, FORMAT:PATH[?key=value&...]; repeat for several "
                                                     "(default: a run directory's validation parts)")
    p.add_argument("--out", help="where to save the calibrated model (default: over the model file, atomically, the "
                                 "first time keeping it as <name>_uncalibrated.keras)")
    p.add_argument("--coverage", type=float, default=0.9, help="share of true values the age interval should hold")
    p.add_argument("--tta", choices=VIEW_NAMES, default="none", help="fit to answers averaged over views")
    p.add_argument("--batch-size", type=int, default=128, help="images per prediction batch")

    p = _subcommand(sub, "demo", "train and evaluate on the synthetic benchmark (about 10 min on 2 CPU cores)",
                    "Renders four labelled synthetic face domains (cached after the first run), trains one network\n"
                    "for every task and prints the test table of all five domains, street (never labelled) included.",
                    """
kfacemtl demo
kfacemtl demo --out runs/quick --faces 1000 --epochs 2 --steps 50
""", _cmd_demo)
    p.add_argument("--out", default="runs/demo", help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    p.add_argument("--faces", type=int, default=6000, help="training faces of the largest domains")
    p.add_argument("--test-faces", type=int, default=1000, help="faces per test split")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS, help="training epochs")
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help="steps per epoch")

    p = _subcommand(sub, "export", "write a versioned SavedModel for TF Serving, or LiteRT models for devices",
                    "Writes BASE/NAME/VERSION/ (atomically: a temporary folder renamed; never over a version) with the\n"
                    "signatures serving_default (encoded JPEG/PNG bytes) and serving_float (float images), warmup\n"
                    "requests and a model card; beside the versions, models.config (version labels) and\n"
                    "batching_parameters.txt. --format litert writes LiteRT (TensorFlow Lite) files of the float\n"
                    "signature instead: float32, float16 and int8 (calibrated on faces of the run's training sources).",
                    """
kfacemtl export runs/real_mtl --name faces                        # saved_models/faces/1, then 2, ...
kfacemtl export runs/real_mtl --name faces --label stable=1 --label canary=2
kfacemtl export runs/real_mtl --name faces --tta flip             # every answer: the face and its mirror averaged
kfacemtl export runs/real_mtl --name faces --format litert        # litert_models/faces/1/model_int8.tflite, ...
""", _cmd_export)
    p.add_argument("model", help="a run directory or a .keras file")
    p.add_argument("--format", choices=["savedmodel", "litert"], default="savedmodel",
                   help="savedmodel (TF Serving) or litert (TensorFlow Lite, for phones and embedded devices)")
    p.add_argument("--variants", default="float32,float16,int8",
                   help="litert: which of float32, float16, int8 (int8 needs a run directory to calibrate on)")
    p.add_argument("--base", help="folder of exported models (default saved_models, or litert_models)")
    p.add_argument("--name", required=True, help="the served model's name (letters, digits, '-', '_', '.')")
    p.add_argument("--version", type=int, help="version number (default: the next free one)")
    p.add_argument("--label", action="append", metavar="NAME=VERSION",
                   help="version label for models.config, e.g. stable=1 (default: stable = previous, canary = new)")
    p.add_argument("--serving-base", default="/models", help="where --base is mounted in the serving container")
    p.add_argument("--jit-compile", action="store_true",
                   help="compile the forward pass with XLA: for serving on a GPU (TF Serving's CPU build then needs "
                        "--xla_cpu_compilation_enabled)")
    p.add_argument("--tta", choices=VIEW_NAMES, default="none", help="savedmodel: test-time augmentation "
                   "in the signatures, as evaluate --tta (flip: twice the forward passes)")

    p = _subcommand(sub, "predict", "predict every task for image files, via TF Serving or a local SavedModel",
                    "Prints a table (age in years, each class task's class and probability, AUs present,\n"
                    "valence/arousal), or writes every output per image with --json.",
                    """
kfacemtl predict --saved-model saved_models/faces/1 face1.jpg face2.png
kfacemtl predict --server localhost:8500 --model faces --label stable face1.jpg --json out.json
kfacemtl predict --server localhost:8501 --rest --model faces face1.jpg
""", _cmd_predict)
    p.add_argument("images", nargs="+", help="JPEG or PNG files")
    p.add_argument("--server", help="HOST:PORT of TF Serving (gRPC 8500, or REST 8501 with --rest)")
    p.add_argument("--model", help="the served model's name (with --server)")
    p.add_argument("--version", type=int, help="a specific served version")
    p.add_argument("--label", help="a version label, e.g. stable or canary")
    p.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    p.add_argument("--timeout", type=float, default=10.0, help="seconds per request")
    p.add_argument("--saved-model", help="BASE/NAME/VERSION: run the export locally, no server")
    p.add_argument("--json", help="write the per-image results here instead of printing a table")

    p = _subcommand(sub, "explain", "saliency maps per head (tf-keras-vis): image, map and overlay PNGs, grids",
                    "For each head and method writes <image>_<head>_<method>_{image,map,overlay}.png and one\n"
                    "grid per head. Methods: saliency (SmoothGrad), gradcam++, scorecam, or all.",
                    """
kfacemtl explain runs/demo face1.jpg face2.jpg --out saliency/
kfacemtl explain runs/demo face1.jpg --head expression --class happy --method all --out saliency/
""", _cmd_explain)
    p.add_argument("model", help="a .keras file or a run directory")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--head", action="append", help="the head to explain (repeat; default every head)")
    p.add_argument("--class", dest="target", help="class name or index, AU name, or value name (valence); "
                                                  "default each image's predicted class (regression: the value)")
    p.add_argument("--method", default="saliency", choices=["saliency", "gradcam++", "scorecam", "all"],
                   help="saliency method (saliency: SmoothGrad, whose maps fall on the face on real faces)")
    p.add_argument("--layer", help="feature-map layer of the CAM methods (default: gradcam++ the last map of at least "
                                   "6x6, scorecam the last)")
    p.add_argument("--out", required=True, help="folder for the PNGs")

    p = _subcommand(sub, "analyze", "every answer for every face in photos: detection, alignment, all heads",
                    "Finds the faces (MTCNN, offline), cuts each as the training crops were cut, answers every task\n"
                    "for all faces of many photos in batches, and writes results.jsonl (a photo per line: status,\n"
                    "faces with box, landmarks, score and answers), results.csv (a face per row) and annotated/ (each\n"
                    "photo with its faces drawn). A photo without a face, unreadable or too large is reported, never\n"
                    "fatal. Through TF Serving the detector runs here and the aligned faces go to the server.",
                    """
kfacemtl analyze photos/ --model runs/real_mtl --out analysis/            # a folder, searched recursively
kfacemtl analyze group.jpg list.txt --model saved_models/faces/1 --out analysis/
kfacemtl analyze photos/ --server localhost:8500 --name faces --image-size 48 --out analysis/
kfacemtl analyze crops/ --model runs/real_mtl --detector whole --out analysis/   # photos already cropped
kfacemtl analyze photos/ --model runs/real_mtl --tta flip --out analysis/  # each face and its mirror averaged
""", _cmd_analyze)
    p.add_argument("photos", nargs="+", help="photo files, folders, or .txt lists of paths")
    p.add_argument("--model", help="a run directory, a .keras file or an exported SavedModel version folder")
    p.add_argument("--server", help="HOST:PORT of TF Serving (gRPC 8500, or REST 8501 with --rest)")
    p.add_argument("--name", help="the served model's name (with --server)")
    p.add_argument("--rest", action="store_true", help="use the REST API instead of gRPC")
    p.add_argument("--image-size", type=int, help="the model's input size (needed with --server)")
    p.add_argument("--detector", default="mtcnn", choices=["mtcnn", "whole"],
                   help="face detector (whole: each photo is already one face crop)")
    p.add_argument("--min-face-size", type=int, default=20,
                   help="smallest face to find, in pixels (larger is faster: 80 detects 3-4 times faster than 20)")
    p.add_argument("--batch-size", type=int, default=64, help="faces per network batch")
    p.add_argument("--tta", choices=VIEW_NAMES, default="none", help="as evaluate --tta (--model RUN|.keras)")
    p.add_argument("--no-annotate", action="store_true", help="skip the annotated copies of the photos")
    p.add_argument("--explain", action="append", metavar="HEAD",
                   help="also a saliency map of each face for this head (repeat), in explained/ (needs --model)")
    p.add_argument("--out", required=True, help="folder for results.jsonl, results.csv and annotated/")
    return parser


def import_tensorflow_quietly():
    """Import TensorFlow with this process's standard error (file descriptor 2) pointed at ``/dev/null``, and keep
    its later C++ log lines to errors (``TF_CPP_MIN_LOG_LEVEL=3``): TensorFlow writes its start-up lines (CUDA
    probing, oneDNN notices) from C++ before any Python setting applies, so only the file descriptor can hold them.

    Example:
        >>> import_tensorflow_quietly().__name__
        'tensorflow'
    """
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "3"
    sys.stderr.flush()
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


def main(argv=None) -> int:
    """Run one subcommand; a kfacemtl error is printed as one line (on stderr) and gives exit status 2.

    TensorFlow's start-up lines are silenced unless ``--verbose`` is given or ``TF_CPP_MIN_LOG_LEVEL`` is 0 or 1.

    Example:
        >>> main(["export", "no-such-run", "--name", "faces"])   # "kfacemtl export: error: model file ..."
        2
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--verbose" not in argv and os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2") not in ("0", "1"):
        import_tensorflow_quietly()
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KfacemtlError as e:
        print(f"kfacemtl {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
