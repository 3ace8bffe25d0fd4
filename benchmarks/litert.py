"""On devices: what LiteRT's float32, float16 and int8 models of a run keep of its accuracy, how large they are and
how fast they answer on this CPU (the LiteRT interpreter with its default XNNPACK delegate), beside the Keras model.

The variants are written by ``export_litert`` (int8 calibrated on 200 faces of the run's training sources) into a
temporary folder, then each is scored on the run's evaluation sources (``eval_sources`` of its config, or
``--sources``) with the same code as the Keras model (``evaluate_sources``), each task by its headline metric.

A benchmark measures and prints; it asserts nothing.

    python -m benchmarks.litert RUN [--sources SPEC ...] [--seconds 2]
"""

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

from kfacemtl.analysis.evaluation import evaluate_sources, headline_metric
from kfacemtl.data import make_source
from kfacemtl.models import load_model, model_file, model_tasks
from kfacemtl.serving.litert import VARIANTS, LiteRTPredictor, export_litert
from kfacemtl.tables import text_table


def per_image_ms(predict, x, seconds: float) -> float:
    """Milliseconds per image of ``predict(x)``, over about ``seconds`` of calls (after one warm-up call)."""
    predict(x)
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < seconds:
        predict(x)
        calls += 1
    return 1000 * (time.perf_counter() - start) / (calls * len(x))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory")
    parser.add_argument("--sources", nargs="*", help="evaluation sources (default: the run's eval_sources)")
    parser.add_argument("--seconds", type=float, default=2.0, help="timing per variant and batch size")
    args = parser.parse_args(argv)
    run = Path(args.run)
    model = load_model(model_file(run), compile=False)
    tasks, size = model_tasks(model), tuple(model.input_shape[1:3])
    specs = args.sources or yaml.safe_load((run / "config.yaml").read_text()).get("eval_sources") or []
    sources = [make_source(s) for s in specs]

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        folder = export_litert(run, tmp, "model")
        print(f"exported {', '.join(VARIANTS)} in {time.perf_counter() - start:.0f} s\n")
        predictors = {"keras": model, **{v: LiteRTPredictor(folder / f"model_{v}.tflite") for v in VARIANTS}}
        sizes = {"keras": sum(np.prod(w.shape) * 4 for w in model.weights)}
        sizes.update({v: (folder / f"model_{v}.tflite").stat().st_size for v in VARIANTS})
        scores, timing = {}, {}
        x = np.random.default_rng(0).random((64, *size, 3), dtype=np.float32)
        for name, predictor in predictors.items():
            scores[name] = evaluate_sources(predictor, sources, tasks=tasks, image_size=size)
            call = (lambda b: predictor.predict(b, verbose=0)) if name == "keras" else predictor.run
            timing[name] = [per_image_ms(call, x[:n], args.seconds) for n in (1, 64)]

    print(text_table(["variant", "size (KiB)", "ms/image at 1", "ms/image at 64"],
                     [[name, f"{sizes[name] / 1024:.0f}", f"{timing[name][0]:.2f}", f"{timing[name][1]:.3f}"]
                      for name in predictors]))
    rows = []
    for src in scores["keras"]:
        for task in tasks:
            if task.name in scores["keras"][src]:
                metric = headline_metric(task)
                values = [scores[name][src][task.name][metric] for name in predictors]
                rows.append([src, task.name, metric, *[f"{v:.4f}" for v in values], f"{values[-1] - values[0]:+.4f}"])
    print()
    print(text_table(["source", "task", "metric", *predictors, "int8 - keras"], rows))
    print("\nkeras size: its float32 weights; keras timing: model.predict (Keras's own loop, not comparable at 1)")


if __name__ == "__main__":
    main()
