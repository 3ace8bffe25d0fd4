"""What the benchmarks share: where the real data is, training runs that resume and are reused, the real-face
single-task baselines, paired comparisons and the cells of their tables.

Every benchmark is a module of this package, run from the repository's root as ``python -m benchmarks.NAME``; each
prints its tables and writes them to its ``--out`` folder, and asserts nothing.

Example:
    >>> cell([0.5, 0.7], 2), cell([0.25], 3, signed=True)
    ('0.60 ± 0.14', '+0.250')
"""

import copy
import json
import math
import warnings
from pathlib import Path

import numpy as np

from kfacemtl.analysis.evaluation import evaluate_sources, headline_metric, to_json
from kfacemtl.data import make_dataset
from kfacemtl.files import atomic_write_text
from kfacemtl.models import load_model, model_tasks
from kfacemtl.tasks import resolve_tasks
from kfacemtl.training import RESUME_MAY_CHANGE, load_config, resolve_config, train_run

ROOT = Path(__file__).resolve().parents[1]

DATA_PREFIX = "../shared/data"  # how configs/real_utk_fer.yaml names the data folder


def with_data_root(cfg: dict, data: str) -> dict:
    """The config with ``../shared/data`` in every source spec replaced by ``data``."""
    cfg = copy.deepcopy(cfg)
    for key in ("sources", "eval_sources"):
        cfg[key] = [s.replace(f":{DATA_PREFIX}", f":{data}", 1) if isinstance(s, str) else s for s in cfg[key]]
    return cfg


def missing_real_data(data: Path, then: str = "Nothing to do.", needs_ckplus: bool = False) -> str | None:
    """What to tell a user when ``data`` lacks the real sets the real-face benchmarks read (ending with ``then``);
    None when all are there."""
    needed = [data / "utkface" / "UTKFace", data / "fer2013" / "train", data / "lfw_expressions" / "labels.csv"]
    needed += [data / "ckplus_au" / "labels.csv"] if needs_ckplus else []
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


def cell(values, digits, signed: bool = False):
    """``mean ± std`` of ``values`` over seeds (the value alone when there is one); ``signed``: the mean with its
    sign."""
    values = np.asarray(values, "float64")
    mean = f"{values.mean():{'+' if signed else ''}.{digits}f}"
    return mean if len(values) == 1 else f"{mean} ± {values.std(ddof=1):.{digits}f}"


SYNTHETIC_MODEL = {"input_shape": [32, 32, 3], "widths": [16, 32, 64, 128], "embedding_dim": 128}


def real_config(data: str, config: str, seed: int) -> dict:
    cfg = with_data_root(load_config(config), data)
    cfg["training"]["seed"] = seed
    return cfg


def comparable(cfg: dict) -> dict:
    """What makes two runs the same experiment: the resolved config, less where and how fast it runs (the settings
    a resumed run may change, such as ``jit_compile``, whose default changed; ``epochs`` is checked apart)."""
    c = resolve_config(cfg)
    c.pop("eval_sources", None)  # evaluated again here when a finished run's report lacks a test set
    for key in RESUME_MAY_CHANGE:
        if key != "epochs":
            c["training"].pop(key, None)
    return json.loads(json.dumps(c))


def run(cfg: dict, folder: Path, extra_callbacks=()) -> dict:
    """A finished run's report (reused when its config matches), else train (resuming a partial run)."""
    import yaml
    report_path, config_path = folder / "report.json", folder / "config.yaml"
    if report_path.exists() and config_path.exists():
        if comparable(yaml.safe_load(config_path.read_text())) != comparable(cfg):
            raise SystemExit(f"{folder} holds a finished run of another config; remove it or choose another --out")
        report = json.loads(report_path.read_text())
        if report.get("epochs_done", 0) >= cfg["training"]["epochs"]:
            return report
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return train_run(cfg, folder, resume=config_path.exists(), verbose=0, extra_callbacks=extra_callbacks)


def scores(cfg: dict, report: dict, folder: Path, eval_sources) -> dict:
    """``{(task, test set): headline metric}`` on every one of ``eval_sources`` (the sources of
    ``cfg["eval_sources"]``) that labels a task of ``cfg``."""
    tasks = resolve_tasks(cfg["tasks"])
    cache = folder / "ablation_scores.json"
    evaluation = report.get("evaluation", {})
    if not all(s.name in evaluation for s in eval_sources):
        if cache.exists():
            evaluation = json.loads(cache.read_text())
        else:
            model = load_model(folder / "model.keras")
            text = to_json(evaluate_sources(model, eval_sources, tasks, image_size=tuple(cfg["model"]["input_shape"][:2])))
            atomic_write_text(cache, text)
            evaluation = json.loads(text)
    return {(t.name, s.name): float(evaluation[s.name][t.name][headline_metric(t)])
            for s in eval_sources for t in tasks if t.name in evaluation.get(s.name, {})}


def parse_variants(specs) -> dict:
    """``NAME=JSON`` command-line specs as ``{name: model overrides}``.

    Example:
        >>> parse_variants(['narrow={"widths": [16, 32]}'])
        {'narrow': {'widths': [16, 32]}}
    """
    return {name: json.loads(overrides) for name, _, overrides in (v.partition("=") for v in specs)}
