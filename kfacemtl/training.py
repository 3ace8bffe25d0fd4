"""Compiling the multi-task model, and training runs that live in a run directory.

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

Example:
    >>> import keras
    >>> from kfacemtl.model import build_model
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
from pathlib import Path
from typing import Mapping, Sequence

import keras

from kfacemtl.callbacks import AtomicBackupAndRestore, NaNGuard, TaskWeightingCallback, make_dynamic_lr
from kfacemtl.config import AUGMENT_ON, DEMO_EPOCHS, DEMO_STEPS, dump_config, resolve_config
from kfacemtl.coupling import make_coupling
from kfacemtl.distribute import distribute_options, is_chief, make_strategy, synchronize_batch_norm, worker_dir
from kfacemtl.errors import ConfigError, TrainingDiverged, check_choice
from kfacemtl.files import atomic_write, atomic_write_text
from kfacemtl.losses import class_accuracy, label_accuracy, task_loss
from kfacemtl.model import build_model, count_flops, load_model, model_file, model_tasks
from kfacemtl.pipeline import cached_sources, make_dataset, prefetch_to_gpu, steps_per_epoch
from kfacemtl.sources import Source, WithoutLabels, make_source
from kfacemtl.tasks import Task, resolve_tasks
from kfacemtl.weighting import make_weighting


def task_metrics_for(task: Task) -> list:
    """Keras metrics of a task, used as ``weighted_metrics`` so masked rows don't count.

    Example:
        >>> from kfacemtl.tasks import get_task
        >>> [m.name for m in task_metrics_for(get_task("expression"))], [m.name for m in task_metrics_for(get_task("age"))]
        (['acc'], ['mae'])
    """
    if task.kind == "classification":
        return [keras.metrics.MeanMetricWrapper(class_accuracy, name="acc")]  # class ids or distributions
    if task.kind == "multilabel":
        return [keras.metrics.MeanMetricWrapper(label_accuracy, name="acc")]  # 0/1 or soft labels
    return [keras.metrics.MeanAbsoluteError(name="mae")]


def make_optimizer(name: str = "adam", learning_rate: float = 1e-3, weight_decay: float = 0.0):
    """``adam``, ``adamw`` or ``sgd`` (momentum 0.9).

    Example:
        >>> opt = make_optimizer("sgd", learning_rate=0.01)
        >>> type(opt).__name__, opt.momentum, opt.nesterov
        ('SGD', 0.9, True)
    """
    if name == "adam":
        return keras.optimizers.Adam(learning_rate)
    if name == "adamw":
        return keras.optimizers.AdamW(learning_rate, weight_decay=weight_decay or 1e-4)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=0.9, nesterov=True)
    raise ConfigError("training.optimizer", f"expected adam, adamw or sgd, got {name!r}")


def learning_rate_schedule(learning_rate: float, schedule: str = "constant", total_steps: int | None = None):
    """The optimizer's learning rate: a number (``constant``) or a Keras schedule.

    ``cosine`` decays from ``learning_rate`` to 1 % of it over ``total_steps`` (then stays there),
    so the weights a run ends with are not those of one noisy step at full learning rate.
    ``dynamic`` starts at ``learning_rate``; :class:`~kfacemtl.callbacks.DynamicLearningRate`
    then adapts it during training (``train_run`` adds the callback).

    Example:
        >>> sched = learning_rate_schedule(1e-3, "cosine", total_steps=100)
        >>> round(float(sched(0)), 6), round(float(sched(100)), 6)
        (0.001, 1e-05)
    """
    if schedule in ("constant", "dynamic"):
        return float(learning_rate)
    if schedule == "cosine":
        if not total_steps or total_steps < 1:
            raise ConfigError("training.lr_schedule", "cosine needs the run's total number of steps")
        return keras.optimizers.schedules.CosineDecay(float(learning_rate), int(total_steps), alpha=0.01)
    raise ConfigError("training.lr_schedule", f"expected constant, cosine or dynamic, got {schedule!r}")


def compile_model(model, optimizer="adam", learning_rate: float = 1e-3, weight_decay: float = 0.0,
                  loss_normalization: str = "mean_with_sample_weight", label_smoothing: float = 0.0,
                  loss_weights: Mapping[str, float] | None = None, weighting=None,
                  weighting_options: Mapping | None = None, jit_compile="auto", steps_per_execution: int = 1):
    """Wire masked per-task losses, loss weights and weighted metrics into ``model.compile``.

    Args:
        model: a model from :func:`~kfacemtl.model.build_model`.
        optimizer: a name (``adam``, ``adamw``, ``sgd``) or a Keras optimizer.
        loss_normalization: ``mean_with_sample_weight`` (mean over labelled rows, default)
            or ``sum_over_batch_size`` (Keras's default; a sparsely labelled task learns slower).
        loss_weights: ``{task: weight}`` (default 1 for every task): static weights.
        weighting: a task-weighting strategy, by name (``equal``, ``static``, ``uncertainty``,
            ``dwa``, ``dynamic``, ``gradnorm``; see :mod:`kfacemtl.weighting`) or an instance; ``weighting_options``
            are its arguments. ``equal`` (and ``static`` with ``loss_weights``) use Keras's own sum.
        jit_compile: XLA: ``True``, ``False`` or ``"auto"`` (the default, Keras's rule: on where a GPU is and no
            ``tf.distribute`` strategy is active, off on a CPU). Measured: 4.6× faster steps on an H100 at batch 64;
            0.57-1.11× on 2-core CPUs, after about 10 s of compiling.
        steps_per_execution: train steps per call of the compiled train function (Keras's option; callbacks then
            see every ``steps_per_execution``-th batch).

    A model built with ``mixed_precision=True`` gets its optimizer wrapped in
    ``keras.optimizers.LossScaleOptimizer``. Under a ``tf.distribute`` strategy, build and compile
    inside ``strategy.scope()``.

    Returns:
        The model, compiled.

    Example:
        >>> from kfacemtl.model import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                     embedding_dim=4, head_units=4)
        >>> model = compile_model(model, learning_rate=1e-3, weighting="dynamic")
        >>> model.weighting.name, type(model.optimizer).__name__
        ('dynamic', 'Adam')
    """
    tasks = model_tasks(model)
    if isinstance(optimizer, str):
        optimizer = make_optimizer(optimizer, learning_rate, weight_decay)
    optimizer = _with_loss_scaling(model, optimizer)
    weights = None
    if loss_weights:
        unknown = set(loss_weights) - {t.name for t in tasks}
        if unknown:
            raise ConfigError(f"training.loss_weights.{sorted(unknown)[0]}", f"not a task of the model {[t.name for t in tasks]}")
        weights = [float(loss_weights.get(t.name, 1.0)) for t in tasks]
    model.compile(optimizer=optimizer,
                  loss=[task_loss(t, loss_normalization, label_smoothing) for t in tasks],
                  loss_weights=weights,
                  weighted_metrics=[task_metrics_for(t) for t in tasks],
                  jit_compile=jit_compile, steps_per_execution=int(steps_per_execution))
    attach_weighting(model, weighting, weighting_options, loss_weights)
    return model


def augment_on(where: str = "auto") -> str:
    """Where training augments its images (``training.augment_on``): ``pipeline`` (a map of the input pipeline, in
    its CPU threads) or ``step`` (inside the train step, :meth:`~kfacemtl.model.MultiTaskModel.set_augmentation`: on
    the GPU, fused into the step under XLA). ``auto``: ``step`` where a GPU is, ``pipeline`` on a CPU, where moving
    the work into the step did not make training faster (measured: README, "Training throughput").

    Example:
        >>> augment_on("pipeline"), augment_on("auto") in ("pipeline", "step")
        ('pipeline', True)
    """
    check_choice("training.augment_on", where, AUGMENT_ON)
    if where != "auto":
        return where
    import tensorflow as tf
    return "step" if tf.config.list_physical_devices("GPU") else "pipeline"


def steps_per_execution(value="auto", lr_schedule: str = "constant", strategy: str = "default") -> int:
    """Train steps per call of the compiled train function (``training.steps_per_execution``). ``auto``: 8 where a
    GPU is (a step there is short enough for the call's own overhead to count: 1.55× faster training with the full
    pipeline, measured on an H200 at batch 64, README "On a GPU"); 1 on a CPU, with ``lr_schedule: dynamic`` (whose
    windows count calls) and under a ``tf.distribute`` strategy (where Keras's several-step train function fails).
    Callbacks' batch hooks then run once per call.

    Example:
        >>> steps_per_execution(4), steps_per_execution("auto", "dynamic")
        (4, 1)
        >>> steps_per_execution("auto", strategy="mirrored")
        1
    """
    if value != "auto":
        return int(value)
    import tensorflow as tf
    gpu = bool(tf.config.list_physical_devices("GPU"))
    return 8 if gpu and lr_schedule != "dynamic" and strategy == "default" else 1


def _with_loss_scaling(model, optimizer):
    """Mixed precision: the optimizer wrapped in Keras's dynamic loss scaling (float16 gradients underflow)."""
    mixed = any(layer.dtype_policy.name == "mixed_float16" for layer in model.layers)
    if mixed and not isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def attach_weighting(model, weighting=None, weighting_options: Mapping | None = None,
                     loss_weights: Mapping[str, float] | None = None):
    """Give a compiled model its task-weighting strategy (none for ``equal``, or ``static`` with
    ``loss_weights``: Keras's own weighted sum does those). Also used when a saved model resumes,
    since the strategy is training state that ``model.keras`` does not hold.

    Example:
        >>> from kfacemtl.model import build_model
        >>> from kfacemtl.tasks import resolve_tasks
        >>> model = build_model(resolve_tasks(["gender", "age"]), input_shape=(16, 16, 3), widths=(4,), depths=1,
        ...                     embedding_dim=4, head_units=4)
        >>> model = compile_model(model)
        >>> attach_weighting(model, "uncertainty")       # e.g. after load_model, when a run resumes
        >>> model.weighting.name
        'uncertainty'
    """
    if weighting in (None, "equal") or (weighting == "static" and loss_weights):
        return
    if loss_weights:
        raise ConfigError("training.loss_weights", f"static weights cannot be combined with weighting: {weighting}")
    model.set_weighting(make_weighting(weighting, [t.name for t in model_tasks(model)], **dict(weighting_options or {})))


def build_sources(specs: Sequence, key: str = "sources") -> list[Source]:
    """Sources from config entries (``FORMAT:PATH`` strings or mappings).

    Example:
        >>> [s.name for s in build_sources(["synthetic:lab?n=4", {"spec": "synthetic:webcam", "n": 4}])]
        ['lab-train', 'webcam-train']
    """
    return [make_source(spec, key_path=f"{key}[{i}]") for i, spec in enumerate(specs)]


def make_distillation(cfg: dict, sources: Sequence[Source], tasks: Sequence[Task], out_dir, verbose: int = 1):
    """The :class:`~kfacemtl.distillation.DataDistillation` of a config's ``distillation`` section (None when off).

    ``teachers`` is a ``.keras`` file or run directory (one fixed teacher) or ``{task: path}``
    (e.g. single-task teachers); by default the model being trained teaches itself.

    Example:
        >>> from kfacemtl.config import resolve_config
        >>> from kfacemtl.tasks import resolve_tasks
        >>> cfg = resolve_config({"sources": ["synthetic:lab?n=8"], "training": {"epochs": 9},
        ...                       "distillation": {"rounds": 2, "epochs_per_round": 3}})
        >>> rounds = make_distillation(cfg, build_sources(cfg["sources"]), resolve_tasks(["expression"]), "run")
        >>> rounds.total_epochs, rounds.rounds
        (9, 2)
    """
    from kfacemtl.distillation import DataDistillation
    d = cfg["distillation"]
    if not d["rounds"]:
        return None
    teachers = d["teachers"]
    if isinstance(teachers, str):
        teachers = load_model(model_file(teachers), compile=False)
    elif teachers is not None:
        teachers = {task: load_model(model_file(path), compile=False) for task, path in teachers.items()}
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
        >>> from kfacemtl.config import resolve_config
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
        import yaml
        saved = yaml.safe_load(config_path.read_text())
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


def train_run(config: Mapping, out_dir, resume: bool = False, verbose="auto", extra_callbacks: Sequence = ()) -> dict:
    """Train from a config into ``out_dir``; returns the report (also written as report.json).

    ``resume=True`` continues an interrupted run from its last finished epoch (Keras
    ``BackupAndRestore``); the config must match the original except ``training.epochs`` and the
    settings of where it runs (:data:`RESUME_MAY_CHANGE`: a run started on one GPU may go on over two).
    ``extra_callbacks`` are more Keras callbacks, run after the package's own.

    ``training.strategy`` picks the devices (:mod:`kfacemtl.distribute`): under ``multi_worker``
    every host runs this same call; the chief writes ``out_dir``, the others a scratch folder of
    their own (:func:`~kfacemtl.distribute.worker_dir`), and each returns its report.

    Example:
        >>> # report = train_run(load_config("configs/real_mtl.yaml"), "runs/real_mtl")
        >>> # report = train_run(load_config("configs/real_mtl.yaml"), "runs/real_mtl", resume=True)  # after a crash
        >>> # print(report["table"])             # the evaluation of eval_sources; also in runs/real_mtl/report.json
    """
    from kfacemtl.evaluation import evaluate_sources, format_table
    from kfacemtl.plots import plot_confusion, plot_history, plot_relatedness, plot_task_weights

    cfg = resolve_config(config)
    tr, mc = cfg["training"], cfg["model"]
    strategy = make_strategy(tr["strategy"], tr["strategy_devices"])  # first: multi_worker sets up the runtime
    out_dir = worker_dir(out_dir, strategy)
    if not is_chief(strategy):
        resume = _worker_resumes(out_dir, resume)
    tasks = resolve_tasks(cfg["tasks"])
    sources = build_sources(cfg["sources"])
    check_sources_match_tasks(sources, tasks)
    labelled = list(sources)
    sources += [WithoutLabels(s) for s in build_sources(cfg["unlabelled_sources"], "unlabelled_sources")]
    eval_sources = build_sources(cfg["eval_sources"], "eval_sources")
    prepare_run_dir(out_dir, cfg, resume)
    if tr["deterministic"]:  # for this whole process: TensorFlow cannot turn it off again
        import tensorflow as tf
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(tr["seed"])
    initial_epoch = 0
    finished = out_dir / "model.keras"
    steps = tr["steps_per_epoch"] or steps_per_epoch(sources, tr["batch_size"])
    if resume and finished.exists() and (out_dir / "report.json").exists():
        # A finished run asked for more epochs: continue from its model (optimizer state included;
        # a cosine schedule stays at its floor past the original run's steps).
        report = json.loads((out_dir / "report.json").read_text())
        initial_epoch = int(report.get("epochs_done", 0))
        if initial_epoch >= tr["epochs"]:
            return report  # already finished: nothing to redo
        with strategy.scope():
            model = load_model(finished)
            attach_weighting(model, tr["weighting"], tr["weighting_options"], tr["loss_weights"])
    else:
        with strategy.scope():  # variables (the model's, the optimizer's, the weighting's) mirrored across replicas
            model = build_model(tasks, **mc)  # every model key is an argument of build_model
            lr = learning_rate_schedule(tr["learning_rate"], tr["lr_schedule"], tr["epochs"] * steps)
            compile_model(model, tr["optimizer"], lr, tr["weight_decay"], tr["loss_normalization"],
                          tr["label_smoothing"], loss_weights=tr["loss_weights"], weighting=tr["weighting"],
                          weighting_options=tr["weighting_options"], jit_compile=tr["jit_compile"],
                          steps_per_execution=steps_per_execution(tr["steps_per_execution"], tr["lr_schedule"],
                                                                  tr["strategy"]))
    image_size = tuple(mc["input_shape"][:2])
    coannotation, matching, fusions, relations = make_coupling(cfg["coupling"], tasks, labelled)
    with strategy.scope():
        model.set_matching(matching)  # training state like the weighting: set again on a resumed model
        model.set_coannotation(coannotation)  # class level: its class-mean terms join the loss
    model.set_fusions(fusions)  # part of the network (saved with it); the same on a resumed run
    in_step = tr["augment"] and augment_on(tr["augment_on"]) == "step"
    model.set_augmentation(tr["seed"] if in_step else None)
    skipped: dict = {}  # bad_images: skip → {source: rows left out}
    # every image decoded once, checked and cached here, so distillation's predictions read the cache too
    sources = cached_sources(sources, image_size, tr["cache_limit_mb"], tr["cache"], tr["cache_dir"],
                             tr["bad_images"], skipped)
    distillation = make_distillation(cfg, sources, tasks, out_dir, verbose=int(verbose != 0))
    ds = make_dataset(sources, tasks, batch_size=tr["batch_size"], image_size=image_size, training=True,
                      mixing=tr["mixing"], augment=tr["augment"] and not in_step, seed=tr["seed"],
                      pseudo_labels=distillation.pseudo_labels if distillation else None, coannotation=coannotation,
                      cache=tr["cache"], cache_limit_mb=tr["cache_limit_mb"], cache_dir=tr["cache_dir"])
    if strategy.num_replicas_in_sync > 1:
        ds = ds.with_options(distribute_options())  # each replica (and worker) keeps its share of every batch
        synchronize_batch_norm(model)  # statistics of the global batch: every replica's model stays the same
    elif tr["strategy"] == "default":
        ds = prefetch_to_gpu(ds)  # (a strategy places its batches itself)
    callbacks = [
        AtomicBackupAndRestore(str(out_dir / "backup")),  # the last finished epoch, never half written
        keras.callbacks.CSVLogger(str(out_dir / "history.csv"), append=resume),
        keras.callbacks.TensorBoard(str(out_dir / "logs"), write_graph=False, profile_batch=0),
    ]
    guard = None
    if tr["lr_schedule"] == "dynamic":
        # first, before the loggers, so they see the epoch's learning rate
        callbacks.insert(0, make_dynamic_lr(tr["dynamic_lr_options"]))
    else:  # (the dynamic learning rate rolls back by itself)
        guard = NaNGuard(tr["on_nan"], verbose=int(verbose != 0))
        callbacks.insert(0, guard)
    if model.weighting is not None:
        callbacks.insert(0, TaskWeightingCallback(out_dir / "weighting.npz"))
    if distillation is not None:
        callbacks.insert(0, distillation)  # first: it records the initial weights and adds pseudo_<task> to the logs
    start = time.time()
    history = model.fit(ds, epochs=tr["epochs"], initial_epoch=initial_epoch, steps_per_epoch=steps,
                        callbacks=callbacks + list(extra_callbacks), verbose=verbose)
    train_seconds = time.time() - start
    if guard is not None and guard.diverged:
        epoch, batch = guard.diverged
        raise TrainingDiverged(f"the training loss became NaN or infinite at epoch {epoch + 1}, batch {batch + 1} "
                               f"(training.on_nan: {tr['on_nan']}); no model was written. The last finished epoch "
                               f"is in {str(out_dir / 'backup')!r} for --resume; lower training.learning_rate, or "
                               "check the data")
    atomic_write(out_dir / "model.keras", model.save)

    results = evaluate_sources(model, eval_sources, tasks, image_size=image_size) if eval_sources else {}
    plots = [str(plot_history(out_dir / "history.csv", out_dir / "plots" / "loss.png").relative_to(out_dir))]
    weights_png = plot_task_weights(out_dir / "history.csv", out_dir / "plots" / "task_weights.png")
    if weights_png is not None:
        plots.append(str(weights_png.relative_to(out_dir)))
    for rel in relations:
        p = plot_relatedness(rel, out_dir / "plots" / f"relatedness_{rel.source.name}_{rel.target.name}.png")
        plots.append(str(p.relative_to(out_dir)))
    for src_name, entry in results.items():
        for task in tasks:
            if task.kind == "classification" and task.name in entry:
                p = plot_confusion(entry[task.name]["confusion"], task.classes, f"{task.name} on {src_name}",
                                   out_dir / "plots" / f"confusion_{src_name}_{task.name}.png")
                plots.append(str(p.relative_to(out_dir)))
    report = {
        "tasks": [t.to_config() for t in tasks],
        "sources": [s.describe() for s in sources],
        "eval_sources": [s.describe() for s in eval_sources],
        "epochs_done": tr["epochs"],
        "steps_per_epoch": steps,
        "augmented_in": ("step" if in_step else "pipeline") if tr["augment"] else None,
        "train_seconds_this_session": round(train_seconds, 1),
        "parameters": int(model.count_params()),
        "forward_flops_per_image": count_flops(model),
        "final_epoch_metrics": {k: float(v[-1]) for k, v in history.history.items()} if history.history else {},
        "evaluation": {s: {t: {k: v for k, v in m.items() if k != "confusion"} for t, m in e.items()}
                       for s, e in results.items()},
        "table": format_table(results, tasks) if results else "",
        "distillation": distillation.log if distillation else None,
        "coupling": {"coannotation": coannotation is not None, "distribution_matching": matching is not None,
                     "level": cfg["coupling"]["level"],
                     "fused_outputs": [f"{f.source}->{f.target}" for f in fusions],
                     "relations": [r.describe() for r in relations]} if relations else None,
        "plots": plots,
        "nan_events": [{"epoch": e + 1, "batch": b + 1, "action": a} for e, b, a in guard.events] if guard else [],
        "skipped_images": {name: {"count": len(rows), "rows": rows[:20]} for name, rows in skipped.items()},
    }
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=2))
    return report


def demo_config(train_faces: int = 6000, test_faces: int = 1000, epochs: int = DEMO_EPOCHS,
                steps_per_epoch: int | None = DEMO_STEPS, seed: int = 0) -> dict:
    """The config of ``kfacemtl demo``: four labelled synthetic domains, all five test splits.

    portraits (age, gender, race), lab (expression, AUs; a small CK+-like set), webcam
    (expression, grayscale, low resolution) and affect (expression, valence/arousal) train one
    network; street (no labels) is only evaluated.

    Example:
        >>> cfg = demo_config(train_faces=600, test_faces=100, epochs=2, steps_per_epoch=50)
        >>> cfg["sources"][0], cfg["training"]["mixing"]
        ('synthetic:portraits?n=600&seed=0', 'balanced')
    """
    sizes = {"portraits": train_faces, "lab": max(64, train_faces // 3), "webcam": train_faces,
             "affect": max(64, (2 * train_faces) // 3)}
    return {
        "tasks": ["age", "gender", "race", "expression", "action_units", "valence_arousal"],
        "sources": [f"synthetic:{d}?n={n}&seed={seed}" for d, n in sizes.items()],
        "eval_sources": [f"synthetic:{d}?split=test&n={test_faces}&seed={seed}"
                         for d in ("portraits", "lab", "webcam", "affect", "street")],
        # balanced: each domain a quarter of every batch, so the small lab set (the only AU labels) is not drowned
        "training": {"epochs": epochs, "steps_per_epoch": steps_per_epoch, "batch_size": 64, "seed": seed,
                     "mixing": "balanced"},
    }
