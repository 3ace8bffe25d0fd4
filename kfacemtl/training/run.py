"""Training runs that live in a run directory.

From a notebook: build sources, the dataset and the model, call :func:`compile_model`,
then plain ``model.fit``. From the CLI: :func:`train_run` reads a config and writes a run
directory::

    RUN_DIR/config.yaml    the resolved config
    RUN_DIR/model.keras    the trained model (written atomically at the end)
    RUN_DIR/history.csv    one row per epoch
    RUN_DIR/logs/          TensorBoard
    RUN_DIR/report.json    sources, timing, evaluation table
    RUN_DIR/plots/*.png    loss curves; task weights; a confusion matrix per classification task per eval source
    RUN_DIR/weighting.npz  the task-weighting strategy's state (when one is used), for --resume
    RUN_DIR/backup/        the last finished epoch while training runs (for --resume)

:func:`train_run` is a few named steps: :func:`prepare_run` (config, devices, sources, the run directory),
:func:`model_for_run` (built and compiled, or the finished model a longer run continues), :func:`training_data`
(cached sources, distillation's rounds, the dataset), :func:`run_callbacks`, ``model.fit``, and :func:`write_report`
(model.keras, evaluation, plots, report.json).

Example:
    >>> import keras
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> from kfacemtl.training import compile_model
    >>> model = compile_model(build_model(resolve_tasks(["gender"]), widths=(8,), depths=1))
    >>> model.loss[0].normalization
    'mean_with_sample_weight'
"""
from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import keras
import tensorflow as tf
import yaml

from kfacemtl.analysis.calibration import calibrate, save_calibrated
from kfacemtl.analysis.evaluation import evaluate_sources, format_table
from kfacemtl.analysis.plots import plot_confusion, plot_history, plot_relatedness, plot_task_weights
from kfacemtl.data import (Source, WithoutLabels, cached_sources, make_dataset, make_source, mixing_weights,
                           prefetch_to_gpu, steps_per_epoch)
from kfacemtl.data.augment import augment_options
from kfacemtl.data.registry import validation_spec
from kfacemtl.errors import ConfigError, TrainingDiverged, under_key
from kfacemtl.files import atomic_write, atomic_write_text
from kfacemtl.models import build_model, count_flops, load_model, model_file
from kfacemtl.tasks import Task, resolve_tasks
from kfacemtl.training.callbacks import EpochCheckpoint, NaNGuard, TaskWeightingCallback
from kfacemtl.training.compile import (attach_weighting, augment_on, compile_model, learning_rate_schedule,
                                       steps_per_execution)
from kfacemtl.training.config import dump_config, resolve_config
from kfacemtl.training.coupling import make_coupling
from kfacemtl.training.distillation import SINGLE_TASK, DataDistillation, TeacherAnnealing
from kfacemtl.training.distribute import distribute_options, is_chief, make_strategy, synchronize_batch_norm, worker_dir
from kfacemtl.training.lr import make_dynamic_lr
from kfacemtl.training.teachers import train_generations, train_teachers


def build_sources(specs: Sequence, key: str = "sources") -> list[Source]:
    """Sources from config entries (``FORMAT:PATH`` strings or mappings).

    Example:
        >>> [s.name for s in build_sources(["synthetic:lab?n=4", {"spec": "synthetic:webcam", "n": 4}])]
        ['lab-train', 'webcam-train']
    """
    return [make_source(spec, key_path=f"{key}[{i}]") for i, spec in enumerate(specs)]


def make_distillation(cfg: dict, sources: Sequence[Source], tasks: Sequence[Task], out_dir, verbose: int = 1):
    """The :class:`~kfacemtl.training.DataDistillation` of a config's ``distillation`` section, or its
    :class:`~kfacemtl.training.distillation.TeacherAnnealing` with ``anneal: true`` (None when off).

    ``teachers`` is a ``.keras`` file or run directory (one fixed teacher) or ``{task: path}``
    (e.g. single-task teachers); by default the model being trained teaches itself. Teachers the run trains first
    (``teachers: single-task``, ``born_again``'s earlier generations) are trained here, in folders of ``out_dir``.

    Example:
        >>> from kfacemtl.training.config import resolve_config
        >>> from kfacemtl.tasks import resolve_tasks
        >>> cfg = resolve_config({"sources": ["synthetic:lab?n=8"], "training": {"epochs": 9},
        ...                       "distillation": {"rounds": 2, "epochs_per_round": 3}})
        >>> rounds = make_distillation(cfg, build_sources(cfg["sources"]), resolve_tasks(["expression"]), "run")
        >>> rounds.total_epochs, rounds.rounds
        (9, 2)
    """
    d = cfg["distillation"]
    if not d["rounds"] and not d["anneal"]:
        return None
    teachers, teacher_runs, views = d["teachers"], None, d["teacher_views"]
    if teachers == SINGLE_TASK:
        teacher_runs = train_teachers(cfg, sources, out_dir, train_run, verbose)
        teachers = {task: run["run"] for task, run in teacher_runs.items()}
    if d["born_again"]:  # the student's earlier generations first; the last one teaches this one
        teachers, generations = train_generations(cfg, teachers, out_dir, train_run, verbose)
        teacher_runs, views = {**(teacher_runs or {}), **generations}, d["born_again"]["views"]
    if isinstance(teachers, str):
        teachers = load_model(model_file(teachers), compile=False)
    elif teachers is not None:
        def load(path):
            return load_model(model_file(path), compile=False)
        teachers = {task: [load(p) for p in path] if isinstance(path, list) else load(path)
                    for task, path in teachers.items()}
    if d["anneal"]:
        with under_key("distillation", start="anneal_start", unlabelled="anneal_unlabelled"):
            return TeacherAnnealing(sources, tasks, teachers, start=d["anneal_start"], batch_size=d["batch_size"],
                                    state_dir=out_dir, verbose=verbose, teacher_runs=teacher_runs,
                                    unlabelled=d["anneal_unlabelled"], views=views)
    with under_key("distillation", teacher="teachers"):
        return DataDistillation(sources, tasks, rounds=d["rounds"], epochs_per_round=d["epochs_per_round"],
                                teacher=teachers, soft=d["soft"], thresholds=d["thresholds"], balance=d["balance"],
                                pseudo_weight=d["pseudo_weight"], reinit=d["reinit"], batch_size=d["batch_size"],
                                state_dir=out_dir, verbose=verbose)


def check_sources_match_tasks(sources: Sequence[Source], tasks: Sequence[Task]):
    """Every source must label at least one task of the model (else it only costs time).

    Example:
        >>> from kfacemtl.tasks import resolve_tasks
        >>> try:
        ...     check_sources_match_tasks(build_sources(["synthetic:lab?n=4"]), resolve_tasks(["age"]))
        ... except ConfigError as e:
        ...     print(e)
        config key 'sources': source 'lab-train' labels ['expression', 'action_units'], none of which is a task of the model ['age']
    """
    names = {t.name for t in tasks}
    for s in sources:
        if not set(s.tasks) & names:
            raise ConfigError("sources", f"source {s.name!r} labels {list(s.tasks)}, none of which is a task "
                                         f"of the model {sorted(names)}")


# may change when a run resumes: its length, and where and how fast it runs (not what it computes)
RESUME_MAY_CHANGE = ("epochs", "strategy", "strategy_devices", "jit_compile", "cache", "cache_limit_mb", "cache_dir",
                     "augment_on", "steps_per_execution")


def _config_without_epochs(cfg):
    c = json.loads(json.dumps(cfg))
    for key in RESUME_MAY_CHANGE:
        c["training"].pop(key, None)
    return c


def prepare_run_dir(out_dir: Path, cfg: dict, resume: bool):
    """Create or reopen a run directory; never clobber a finished or foreign run.

    Example:
        >>> from kfacemtl.training.config import resolve_config
        >>> cfg = resolve_config({"sources": ["synthetic:lab"]})
        >>> prepare_run_dir(Path("runs/exp1"), cfg, resume=False)      # new: writes config.yaml
        >>> try:
        ...     prepare_run_dir(Path("runs/exp1"), cfg, resume=False)  # never clobbered
        ... except ConfigError as e:
        ...     print(str(e)[:60])
        config key '--out': 'runs/exp1' is not empty; pass --resume
    """
    config_path = out_dir / "config.yaml"
    if resume:
        if not config_path.exists():
            raise ConfigError("--resume", f"{str(out_dir)!r} holds no run to resume (no config.yaml)")
        # resolved again: a key added to the config since the run started is compared at its default
        saved = resolve_config(yaml.safe_load(config_path.read_text()))
        if _config_without_epochs(saved) != _config_without_epochs(cfg):
            raise ConfigError("--resume", f"the config differs from the one {str(out_dir)!r} was started with "
                                          f"(on resume only training.{', '.join(RESUME_MAY_CHANGE)} may change)")
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise ConfigError("--out", f"{str(out_dir)!r} is not empty; pass --resume to continue that run, "
                                   "or choose a new folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(config_path, dump_config(cfg))


def _worker_resumes(scratch: Path, resume: bool) -> bool:
    """A non-chief worker of a multi-worker run: resume from its own scratch folder, or start it afresh."""
    if not resume:
        shutil.rmtree(scratch, ignore_errors=True)  # a stale folder of an earlier run with this run directory
        return False
    if not (scratch / "config.yaml").exists():
        raise ConfigError("--resume", f"this worker has no state to resume in {str(scratch)!r} (its scratch folder); "
                                      "every worker must resume from the same epoch: start all of them again "
                                      "without --resume into a new run directory")
    return True


@dataclass
class Run:
    """What :func:`prepare_run` gathers for the other steps of :func:`train_run`.

    Example:
        >>> Run.__dataclass_fields__["resume"].default
        False
    """

    cfg: dict
    out_dir: Path
    strategy: object
    tasks: list
    sources: list  # labelled, then the unlabelled ones (labels hidden)
    labelled: list
    eval_sources: list
    steps: int
    resume: bool = False
    coupling: tuple = ((None, None, [], []))  # make_coupling's (co-annotation, matching, fusions, relations)
    skipped: dict = field(default_factory=dict)  # bad_images: skip → {source: rows left out}

    @property
    def image_size(self) -> tuple:
        return tuple(self.cfg["model"]["input_shape"][:2])


def prepare_run(config: Mapping, out_dir, resume: bool = False) -> Run:
    """Step 1 of :func:`train_run`: the resolved config, the devices, the tasks and sources, the coupling's relations,
    and the run directory (created, or reopened with ``resume``); seeds and determinism set.

    Example:
        >>> run = prepare_run({"tasks": ["expression"], "sources": ["synthetic:lab?n=64"],
        ...                    "training": {"batch_size": 16}}, "runs/prepared")
        >>> run.steps, [s.name for s in run.sources], run.out_dir.joinpath("config.yaml").exists()
        (4, ['lab-train'], True)
    """
    cfg = resolve_config(config)
    tr = cfg["training"]
    with under_key("training", name="strategy", devices="strategy_devices"):
        strategy = make_strategy(tr["strategy"], tr["strategy_devices"])  # first: multi_worker sets up the runtime
    out_dir = worker_dir(out_dir, strategy)
    if not is_chief(strategy):
        resume = _worker_resumes(out_dir, resume)
    tasks = resolve_tasks(cfg["tasks"])
    labelled = build_sources(cfg["sources"])
    check_sources_match_tasks(labelled, tasks)
    sources = labelled + [WithoutLabels(s) for s in build_sources(cfg["unlabelled_sources"], "unlabelled_sources")]
    with under_key("training"):  # an explicit mixing names the sources: checked once they are built
        mixing_weights(sources, tr["mixing"])
    eval_sources = build_sources(cfg["eval_sources"], "eval_sources")
    prepare_run_dir(out_dir, cfg, resume)
    if tr["deterministic"]:  # for this whole process: TensorFlow cannot turn it off again
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(tr["seed"])
    steps = tr["steps_per_epoch"] or steps_per_epoch(sources, tr["batch_size"])
    return Run(cfg, out_dir, strategy, tasks, sources, labelled, eval_sources, steps, resume,
               make_coupling(cfg["coupling"], tasks, labelled))


def model_for_run(run: Run) -> tuple:
    """Step 2: ``(model, initial epoch, report or None)``. A new run builds and compiles the model (with its fused
    outputs); an interrupted one starts from its last finished epoch (``backup/``); a finished run asked for more
    epochs continues from its ``model.keras`` (optimizer state included; a cosine schedule stays at its floor past
    the original run's steps), and one with nothing left to do returns its report. The training state (weighting,
    matching, co-annotation, augmentation in the step) is set on the model either way.

    Example:
        >>> run = prepare_run({"tasks": ["expression"], "sources": ["synthetic:lab?n=64"],
        ...                    "model": {"widths": [8], "depths": [1], "embedding_dim": 8}}, "runs/model-for")
        >>> model, epoch, report = model_for_run(run)
        >>> type(model).__name__, epoch, report
        ('MultiTaskModel', 0, None)
    """
    tr, mc, out_dir = run.cfg["training"], run.cfg["model"], run.out_dir
    coannotation, matching, fusions, _ = run.coupling
    initial_epoch, finished = 0, out_dir / "model.keras"
    if run.resume and finished.exists() and (out_dir / "report.json").exists():
        report = json.loads((out_dir / "report.json").read_text())
        initial_epoch = int(report.get("epochs_done", 0))
        if initial_epoch >= tr["epochs"]:
            return None, initial_epoch, report  # already finished: nothing to redo
        with run.strategy.scope(), under_key("training"):
            model = load_model(finished)
            attach_weighting(model, tr["weighting"], tr["weighting_options"], tr["loss_weights"])
    else:
        with run.strategy.scope():  # variables (the model's, the optimizer's, the weighting's) mirrored across replicas
            with under_key("model"):
                model = build_model(run.tasks, fusions=fusions, **mc)  # every model key is an argument of build_model
            with under_key("training"):  # compile_model's arguments are the training section's keys
                lr = learning_rate_schedule(tr["learning_rate"], tr["lr_schedule"], tr["epochs"] * run.steps)
                compile_model(model, tr["optimizer"], lr, tr["weight_decay"], tr["loss_normalization"],
                              tr["label_smoothing"], loss_weights=tr["loss_weights"], weighting=tr["weighting"],
                              weighting_options=tr["weighting_options"], jit_compile=tr["jit_compile"],
                              steps_per_execution=steps_per_execution(tr["steps_per_execution"], tr["lr_schedule"],
                                                                      tr["strategy"]))
        if run.resume:
            initial_epoch = EpochCheckpoint(out_dir / "backup").epochs_done()
    with run.strategy.scope():
        model.set_matching(matching)  # training state, like the weighting: set again on a resumed model
        model.set_coannotation(coannotation)  # class level: its class-mean terms join the loss
    augment = augment_options(tr["augment"])
    in_step = augment is not None and augment_on(tr["augment_on"]) == "step"
    model.set_augmentation(tr["seed"] if in_step else None, **(augment or {}))
    return model, initial_epoch, None


def training_data(run: Run, model, verbose: int = 1) -> tuple:
    """Step 3: ``(dataset, distillation or None)``. Every image is decoded once, checked and cached here (so
    distillation's predictions read the cache too); the dataset mixes the sources, fills co-annotated and pseudo
    labels, augments in the pipeline unless the step does, and is placed for the strategy.

    Example:
        >>> run = prepare_run({"tasks": ["expression"], "sources": ["synthetic:lab?n=64"],
        ...                    "model": {"widths": [8], "depths": [1], "embedding_dim": 8}}, "runs/data-for")
        >>> ds, distillation = training_data(run, model_for_run(run)[0])
        >>> tuple(next(iter(ds))[0].shape), distillation
        ((64, 64, 64, 3), None)
    """
    tr = run.cfg["training"]
    run.sources = cached_sources(run.sources, run.image_size, tr["cache_limit_mb"], tr["cache"], tr["cache_dir"],
                                 tr["bad_images"], run.skipped)
    distillation = make_distillation(run.cfg, run.sources, run.tasks, run.out_dir, verbose=verbose)
    ds = make_dataset(run.sources, run.tasks, batch_size=tr["batch_size"], image_size=run.image_size, training=True,
                      mixing=tr["mixing"], augment=tr["augment"] if model.augment_seed is None else False,
                      seed=tr["seed"], mixup=tr["mixup"],
                      pseudo_labels=distillation.pseudo_labels if distillation else None, coannotation=run.coupling[0],
                      cache=tr["cache"], cache_limit_mb=tr["cache_limit_mb"], cache_dir=tr["cache_dir"])
    if run.strategy.num_replicas_in_sync > 1:
        ds = ds.with_options(distribute_options())  # each replica (and worker) keeps its share of every batch
        synchronize_batch_norm(model)  # statistics of the global batch: every replica's model stays the same
    elif tr["strategy"] == "default":
        ds = prefetch_to_gpu(ds)  # (a strategy places its batches itself)
    return ds, distillation


def run_callbacks(run: Run, model, distillation=None, verbose: int = 1) -> tuple[list, NaNGuard | None]:
    """Step 4: the package's callbacks in their order, and the NaN guard (None with the dynamic learning rate, which
    rolls back by itself).

    Example:
        >>> run = prepare_run({"tasks": ["expression"], "sources": ["synthetic:lab?n=64"],
        ...                    "model": {"widths": [8], "depths": [1], "embedding_dim": 8}}, "runs/callbacks-for")
        >>> callbacks, guard = run_callbacks(run, model_for_run(run)[0])
        >>> [type(c).__name__ for c in callbacks]
        ['NaNGuard', 'EpochCheckpoint', 'CSVLogger', 'TensorBoard']
    """
    tr, out_dir = run.cfg["training"], run.out_dir
    callbacks = [EpochCheckpoint(out_dir / "backup"),  # the last finished epoch, never half written
                 keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=run.resume),
                 keras.callbacks.TensorBoard(str(out_dir / "logs"), write_graph=False, profile_batch=0)]
    guard = None
    if tr["lr_schedule"] == "dynamic":  # first, before the loggers, so they see the epoch's learning rate
        callbacks.insert(0, make_dynamic_lr(tr["dynamic_lr_options"]))
    else:
        guard = NaNGuard(tr["on_nan"], verbose=verbose)
        callbacks.insert(0, guard)
    if model.weighting is not None:
        callbacks.insert(0, TaskWeightingCallback(out_dir / "weighting.npz"))
    if distillation is not None:
        callbacks.insert(0, distillation)  # first: it records the initial weights and adds pseudo_<task> to the logs
    return callbacks, guard


def train_run(config: Mapping, out_dir, resume: bool = False, verbose="auto", extra_callbacks: Sequence = ()) -> dict:
    """Train from a config into ``out_dir``; returns the report (also written as report.json).

    ``resume=True`` continues an interrupted run from its last finished epoch; the config must match the original
    except ``training.epochs`` and the settings of where it runs (:data:`RESUME_MAY_CHANGE`: a run started on one GPU
    may go on over two). ``extra_callbacks`` are more Keras callbacks, run after the package's own.

    ``training.strategy`` picks the devices (:mod:`kfacemtl.training.distribute`): under ``multi_worker``
    every host runs this same call; the chief writes ``out_dir``, the others a scratch folder of
    their own (:func:`~kfacemtl.training.distribute.worker_dir`), and each returns its report.

    Example:
        >>> report = train_run({"tasks": ["expression"], "sources": ["synthetic:lab?n=64"],
        ...                     "eval_sources": ["synthetic:lab?split=test&n=16"],
        ...                     "model": {"widths": [8], "depths": [1], "embedding_dim": 8},
        ...                     "training": {"epochs": 1, "steps_per_epoch": 2}}, "runs/tiny", verbose=0)
        >>> report["epochs_done"], sorted(report["evaluation"]["lab-test"])
        (1, ['expression'])
    """
    run = prepare_run(config, out_dir, resume)
    model, initial_epoch, finished = model_for_run(run)
    if finished is not None:
        return finished
    tr = run.cfg["training"]
    ds, distillation = training_data(run, model, verbose=int(verbose != 0))
    callbacks, guard = run_callbacks(run, model, distillation, verbose=int(verbose != 0))
    start = time.time()
    history = model.fit(ds, epochs=tr["epochs"], initial_epoch=initial_epoch, steps_per_epoch=run.steps,
                        callbacks=callbacks + list(extra_callbacks), verbose=verbose)
    seconds = time.time() - start
    if guard is not None and guard.diverged:
        epoch, batch = guard.diverged
        raise TrainingDiverged(f"the training loss became NaN or infinite at epoch {epoch + 1}, batch {batch + 1} "
                               f"(training.on_nan: {tr['on_nan']}); no model was written. The last finished epoch "
                               f"is in {str(run.out_dir / 'backup')!r} for --resume; lower training.learning_rate, "
                               "or check the data")
    return write_report(run, model, history, seconds, distillation, guard)


def write_report(run: Run, model, history, seconds: float, distillation=None, guard=None) -> dict:
    """Last step: ``model.keras`` (atomically), the evaluation of ``eval_sources``, the plots and ``report.json``.

    Example:
        >>> run = prepare_run({"tasks": ["gender"], "sources": ["synthetic:portraits?n=32"],
        ...                    "eval_sources": ["synthetic:lab?split=test&n=8"],
        ...                    "model": {"widths": [8], "depths": [1], "embedding_dim": 8}}, "runs/report-for")
        >>> model = model_for_run(run)[0]
        >>> history = model.fit(training_data(run, model)[0], epochs=1, steps_per_epoch=1, verbose=0,
        ...                     callbacks=run_callbacks(run, model)[0])       # history.csv, the checkpoint, ...
        >>> report = write_report(run, model, history, seconds=1.0)          # as train_run calls it after fit
        >>> report["plots"], sorted(report["evaluation"]["lab-test"]), (run.out_dir / "model.keras").exists()
        (['plots/loss.png', 'plots/confusion_lab-test_gender.png'], ['gender'], True)
    """
    out_dir, tasks, tr = run.out_dir, run.tasks, run.cfg["training"]
    coannotation, matching, fusions, relations = run.coupling
    calibration = None
    if tr["calibrate"]:  # temperature scaling on the validation parts, saved with the model (and its plots)
        specs = [v for v in map(validation_spec, run.cfg["sources"]) if v is not None]
        calibration = calibrate(model, build_sources(specs, "sources (validation parts)"), image_size=run.image_size,
                                tta=None if tr["calibrate"] is True else tr["calibrate"])  # or fitted to the views
        save_calibrated(model, calibration, out_dir / "model.keras", specs)
    else:
        atomic_write(out_dir / "model.keras", model.save)
    results = evaluate_sources(model, run.eval_sources, tasks, image_size=run.image_size) if run.eval_sources else {}
    plots = [plot_history(out_dir / "history.csv", out_dir / "plots" / "loss.png"),
             plot_task_weights(out_dir / "history.csv", out_dir / "plots" / "task_weights.png")]
    plots += [plot_relatedness(rel, out_dir / "plots" / f"relatedness_{rel.source.name}_{rel.target.name}.png")
              for rel in relations]
    plots += [plot_confusion(entry[task.name]["confusion"], task.classes, f"{task.name} on {src_name}",
                             out_dir / "plots" / f"confusion_{src_name}_{task.name}.png")
              for src_name, entry in results.items() for task in tasks
              if task.kind == "classification" and task.name in entry]
    report = {
        "tasks": [t.to_config() for t in tasks],
        "sources": [s.describe() for s in run.sources],
        "eval_sources": [s.describe() for s in run.eval_sources],
        "epochs_done": tr["epochs"],
        "steps_per_epoch": run.steps,
        "augmented_in": (("step" if model.augment_seed is not None else "pipeline")
                         if augment_options(tr["augment"]) is not None else None),
        "train_seconds_this_session": round(seconds, 1),
        "parameters": int(model.count_params()),
        "forward_flops_per_image": count_flops(model),
        "final_epoch_metrics": {k: float(v[-1]) for k, v in history.history.items()} if history.history else {},
        "evaluation": {s: {t: {k: v for k, v in m.items() if k != "confusion"} for t, m in e.items()}
                       for s, e in results.items()},
        "table": format_table(results, tasks) if results else "",
        "distillation": distillation.log if distillation else None,
        "coupling": {"coannotation": coannotation is not None, "distribution_matching": matching is not None,
                     "level": run.cfg["coupling"]["level"],
                     "fused_outputs": [f"{f.source}->{f.target}" for f in fusions],
                     "relations": [r.describe() for r in relations]} if relations else None,
        "plots": [str(p.relative_to(out_dir)) for p in plots if p is not None],
        "calibration": {t: {k: v for k, v in c.items() if not k.startswith("reliability")}
                        for t, c in calibration.items()} if calibration else None,
        "nan_events": [{"epoch": e + 1, "batch": b + 1, "action": a} for e, b, a in guard.events] if guard else [],
        "skipped_images": {name: {"count": len(rows), "rows": rows[:20]} for name, rows in run.skipped.items()},
    }
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2))
    return report
