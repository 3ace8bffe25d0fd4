"""The ``kfacemtl`` command line: ``train``, ``evaluate`` and ``demo``.

Example:
    $ kfacemtl demo --out runs/demo
    $ kfacemtl train configs/demo.yaml --out runs/exp1 [--resume]
    $ kfacemtl evaluate runs/exp1/model.keras --source "synthetic:street?split=test&n=1000" --json street.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from kfacemtl.config import DEMO_EPOCHS, DEMO_STEPS
from kfacemtl.errors import KfacemtlError


def _cmd_train(args):
    from kfacemtl.config import load_config
    from kfacemtl.training import train_run
    report = train_run(load_config(args.config), args.out, resume=args.resume)
    if report.get("table"):
        print(report["table"])
    print(f"run directory: {args.out}")


def _cmd_evaluate(args):
    from kfacemtl.evaluation import evaluate_sources, format_table, to_json
    from kfacemtl.model import load_model, model_tasks
    from kfacemtl.training import build_sources
    if not Path(args.model).is_file():
        raise KfacemtlError(f"model file {args.model!r} does not exist")
    model = load_model(args.model, compile=False)
    tasks = model_tasks(model)
    results = evaluate_sources(model, build_sources(args.source, "--source"), tasks, batch_size=args.batch_size)
    print(format_table(results, tasks))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
        tmp.write_text(to_json(results))
        os.replace(tmp, out)
        print(f"wrote {out}")


def _cmd_demo(args):
    from kfacemtl.training import demo_config, train_run
    cfg = demo_config(train_faces=args.faces, test_faces=args.test_faces, epochs=args.epochs,
                      steps_per_epoch=args.steps)
    print(f"kfacemtl demo: rendering the synthetic benchmark ({len(cfg['sources'])} labelled domains, "
          f"{len(cfg['eval_sources'])} test splits; cached after the first run) ...", flush=True)
    start = time.time()
    report = train_run(cfg, args.out, resume=args.resume, verbose=1)
    print(f"\nTest splits (every ground truth; street was never labelled). "
          f"acc = accuracy, MAE in years, (n) = samples:\n")
    print(report["table"])
    print(f"\n{time.time() - start:.0f} s in all. The run lives in {args.out}: model.keras, history.csv, "
          f"report.json, plots/, logs/ (TensorBoard).")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kfacemtl", description="Multi-task face analysis with Keras 3: "
                                     "one network, many partially labelled datasets.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train from a YAML config into a run directory")
    p.add_argument("config", help="YAML config file (see README: Configs)")
    p.add_argument("--out", required=True, help="run directory (must be new or empty unless --resume)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("evaluate", help="per-source, per-task metrics of a saved model")
    p.add_argument("model", help="a .keras file written by kfacemtl")
    p.add_argument("--source", action="append", required=True,
                   help="FORMAT:PATH[?key=value&...], e.g. 'synthetic:street?split=test&n=1000', "
                        "'csv:faces.csv', 'folder:fer/test?task=expression'; repeat for several")
    p.add_argument("--json", help="also write {source: {task: {metric: value, n: count}}} here")
    p.add_argument("--batch-size", type=int, default=128)
    p.set_defaults(func=_cmd_evaluate)

    p = sub.add_parser("demo", help="train and evaluate on the synthetic benchmark (about 10 min on 2 CPU cores)")
    p.add_argument("--out", default="runs/demo", help="run directory (default runs/demo)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted demo run")
    p.add_argument("--faces", type=int, default=6000, help="training faces of the largest domains")
    p.add_argument("--test-faces", type=int, default=1000, help="faces per test split")
    p.add_argument("--epochs", type=int, default=DEMO_EPOCHS)
    p.add_argument("--steps", type=int, default=DEMO_STEPS, help="steps per epoch")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except KfacemtlError as e:
        print(f"kfacemtl {args.command}: error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
