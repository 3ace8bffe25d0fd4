"""Run configuration: YAML (loaded safely), strict keys, defaults, errors that name the key path.

A config has these sections (``unlabelled_sources``, ``distillation`` and ``coupling`` are optional):

.. code-block:: yaml

    tasks: [age, gender, race, expression, action_units, valence_arousal]
    sources:                       # training data: FORMAT:PATH plus options
      - synthetic:portraits?n=6000
      - {spec: "csv:data/faces.csv", domain: studio, tasks: [gender]}
    eval_sources:                  # evaluated after training (report.json, plots)
      - synthetic:street?split=test&n=1000
    model: {widths: [32, 64, 128, 256], depths: [1, 2, 2, 1], embedding_dim: 256}
    training: {epochs: 8, batch_size: 64, optimizer: adam, learning_rate: 0.001,
               mixing: proportional, loss_normalization: mean_with_sample_weight,
               loss_weights: {expression: 2.0},   # static task weights (default 1 each)
               strategy: default,                 # or mirrored, multi_worker (kfacemtl.training.distribute)
               jit_compile: auto, cache: auto,    # XLA on a GPU; model: {mixed_precision: true}: float16
               augment: true,                     # or false, or {zoom: 0.1, rotate: 10}: zoom and turn each face too
               augment_on: auto,                  # pipeline (CPU threads) or step (in the train step, on a GPU)
               mixup: 0.0,                        # or e.g. 0.2: each image blended with another, Beta(a, a) shares
               steps_per_execution: auto,         # train steps per call: 8 on a GPU, 1 on a CPU
               bad_images: error,                 # or skip: undecodable image files left out, counted
               on_nan: rollback,                  # or stop: a NaN loss stops the run (TrainingDiverged)
               deterministic: false}              # true: op determinism, the same seed gives the same run
    unlabelled_sources: [synthetic:street?n=6000]  # pseudo-labelled by distillation
    distillation: {rounds: 3, epochs_per_round: 2, soft: false, thresholds: {expression: 0.8},
                   pseudo_weight: 0.5, reinit: false}   # rounds: 0 (the default) turns it off
    # or teacher annealing (BAM): {anneal: true, teachers: single-task, anneal_start: 0.0, anneal_unlabelled: 0.0}
    #   (teachers: single-task trains a matched single-task teacher per task first, for teacher_epochs epochs
    #    when given, else the run's, with teacher_training's training keys and teacher_model's model keys (e.g.
    #    {input_shape: [64, 64, 3]}) over the run's; or {task: run directory or a list of them, averaged};
    #    teacher_views: flip or six: the teachers answer each face as the mean over those views; born_again:
    #    {generations: 1, views: flip} trains that many students first, each teaching the next, the last this run's)
    coupling: {coannotation: true, distribution_matching: true,   # all three off by default
               fuse_outputs: true,                # AU output fused with the AUs the expression head implies
               relations: [{source: expression, target: action_units, table: du2014}],  # or estimate, or a mapping
               coannotation_weight: 0.5, matching_weight: 1.0, inverse: true, stop_gradient: false,
               level: sample}                     # or class: match class means, not each row

Example:
    >>> from kfacemtl.training.config import resolve_config
    >>> cfg = resolve_config({"sources": ["synthetic:lab?n=10"], "training": {"epochs": 1}})
    >>> cfg["training"]["batch_size"], cfg["model"]["stem_stride"]
    (64, 2)
"""
from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any, Mapping

import yaml

from kfacemtl.data.augment import augment_options
from kfacemtl.data.mixup import mixup_alpha
from kfacemtl.data.cache import BAD_IMAGES, CACHE_MODES
from kfacemtl.data.registry import validation_spec
from kfacemtl.errors import ConfigError, check_choice, under_key
from kfacemtl.models import BACKBONES, check_neck
from kfacemtl.models.backbones import check_branching, check_trunk
from kfacemtl.models.multitask import check_groups
from kfacemtl.models.views import TTA_VIEWS, VIEW_NAMES
from kfacemtl.models.losses import NORMALIZATIONS
from kfacemtl.training.callbacks import NAN_MODES
from kfacemtl.training.compile import AUGMENT_ON, OPTIMIZERS
from kfacemtl.training.coupling import LEVELS
from kfacemtl.training.distribute import STRATEGIES
from kfacemtl.training.lr import LR_SCHEDULES, make_dynamic_lr
from kfacemtl.training.weighting import WEIGHTINGS


DEFAULTS: dict[str, Any] = {
    "tasks": ["age", "gender", "race", "expression", "action_units", "valence_arousal"],
    "sources": [],
    "eval_sources": [],
    "unlabelled_sources": [],
    "model": {
        "backbone": "vgg",
        "input_shape": [64, 64, 3],
        "widths": [32, 64, 128, 256],
        "depths": [1, 2, 2, 1],
        "stem_stride": 2,
        "pooling": "flatten",
        "embedding_dim": 256,
        "head_units": 64,
        "dropout": 0.3,
        "mixed_precision": False,
        "branch_at": None,
        "branches": None,
    },
    "training": {
        "epochs": 8,
        "batch_size": 64,
        "steps_per_epoch": None,
        "optimizer": "adam",
        "learning_rate": 1e-3,
        "lr_schedule": "constant",
        "dynamic_lr_options": None,
        "weight_decay": 0.0,
        "loss_normalization": "mean_with_sample_weight",
        "loss_weights": None,
        "weighting": "equal",
        "weighting_options": None,
        "label_smoothing": 0.0,
        "mixing": "proportional",
        "augment": True,
        "augment_on": "auto",
        "mixup": 0.0,
        "cache": "auto",
        "cache_limit_mb": 4096.0,
        "cache_dir": None,
        "bad_images": "error",
        "on_nan": "rollback",
        "deterministic": False,
        "strategy": "default",
        "strategy_devices": None,
        "jit_compile": "auto",
        "steps_per_execution": "auto",
        "seed": 0,
        "calibrate": False,
    },
    "distillation": {
        "rounds": 0,
        "epochs_per_round": 1,
        "soft": False,
        "thresholds": None,
        "balance": False,
        "pseudo_weight": 0.5,
        "reinit": False,
        "teachers": None,
        "batch_size": 128,
        "anneal": False,
        "anneal_start": 0.0,
        "anneal_unlabelled": 0.0,
        "teacher_epochs": None,
        "teacher_training": None,
        "teacher_model": None,
        "teacher_views": "none",
        "born_again": None,
    },
    "coupling": {
        "coannotation": False,
        "distribution_matching": False,
        "fuse_outputs": False,
        "relations": None,
        "coannotation_weight": 0.5,
        "matching_weight": 1.0,
        "inverse": True,
        "stop_gradient": False,
        "level": "sample",
    },
}

#: The distillation keys about the teachers a run trains itself (``teachers: single-task``, ``born_again``) with their
#: defaults: a run trained as someone's teacher or earlier generation does not inherit them (it would train its own).
OWN_TEACHERS = {"teacher_epochs": None, "teacher_training": None, "teacher_model": None, "born_again": None}


_FREE_FORM = {"tasks", "sources", "eval_sources", "unlabelled_sources", "training.augment", "training.mixing",
              "training.steps_per_epoch", "training.calibrate",
              "training.loss_weights", "training.weighting_options", "training.dynamic_lr_options",
              "training.cache_dir", "training.strategy_devices", "training.jit_compile", "training.steps_per_execution",
              "distillation.thresholds",
              "distillation.teachers", "distillation.anneal_unlabelled", "distillation.teacher_training",
              "distillation.teacher_model", "distillation.born_again",
              "coupling.relations"}


def _check(value, default, path):
    """Type-check one value against its default's type."""
    if path in _FREE_FORM or default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise ConfigError(path, f"expected true or false, got {value!r}")
    elif isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(path, f"expected an integer, got {value!r}")
    elif isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(path, f"expected a number, got {value!r}")
        value = float(value)
    elif isinstance(default, str):
        if not isinstance(value, str):
            raise ConfigError(path, f"expected a string, got {value!r}")
    elif isinstance(default, list):
        if not isinstance(value, list) or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            raise ConfigError(path, f"expected a list of integers, got {value!r}")
    return value


def _merge(defaults: Mapping, given: Mapping, prefix: str) -> dict:
    if not isinstance(given, Mapping):
        raise ConfigError(prefix or "<top>", f"expected a mapping, got {given!r}")
    out = copy.deepcopy(dict(defaults))
    for key, value in given.items():
        path = f"{prefix}.{key}" if prefix else str(key)
        if key not in defaults:
            close = difflib.get_close_matches(str(key), list(defaults), n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            raise ConfigError(path, f"unknown key{hint} (known keys: {sorted(defaults)})")
        if isinstance(defaults[key], Mapping):
            out[key] = _merge(defaults[key], value if value is not None else {}, path)
        else:
            out[key] = _check(value, defaults[key], path)
    return out


def resolve_config(config: Mapping | None) -> dict:
    """Merge a config onto :data:`DEFAULTS` and validate every key and value.

    Raises:
        ConfigError: naming the key path of an unknown key or a value of the wrong kind.

    Example:
        >>> cfg = resolve_config({"tasks": ["gender"], "sources": ["synthetic:portraits"], "training": {"epochs": 2}})
        >>> cfg["training"]["epochs"], cfg["training"]["batch_size"], cfg["model"]["pooling"]
        (2, 64, 'flatten')
    """
    cfg = _merge(DEFAULTS, config or {}, "")
    tr = cfg["training"]
    for key in ("epochs", "batch_size"):
        if tr[key] < 1:
            raise ConfigError(f"training.{key}", f"expected a positive integer, got {tr[key]}")
    if tr["steps_per_epoch"] is not None and (not isinstance(tr["steps_per_epoch"], int) or tr["steps_per_epoch"] < 1):
        raise ConfigError("training.steps_per_epoch", f"expected a positive integer or null, got {tr['steps_per_epoch']!r}")
    if not tr["learning_rate"] > 0:
        raise ConfigError("training.learning_rate", f"expected a positive number, got {tr['learning_rate']}")
    for key, choices in (("lr_schedule", LR_SCHEDULES), ("cache", CACHE_MODES), ("on_nan", NAN_MODES),
                         ("bad_images", BAD_IMAGES), ("strategy", STRATEGIES), ("optimizer", OPTIMIZERS),
                         ("augment_on", AUGMENT_ON),
                         ("loss_normalization", NORMALIZATIONS), ("weighting", sorted(WEIGHTINGS))):
        check_choice(f"training.{key}", tr[key], choices)
    with under_key("training.augment"):
        augment_options(tr["augment"])  # true, false or {zoom: Z, rotate: R}
    with under_key("training"):
        mixup_alpha(tr["mixup"])  # Beta(alpha, alpha)'s alpha >= 0
    if tr["mixup"] and cfg["coupling"]["coannotation"]:
        raise ConfigError("training.mixup", "not combined with coupling.coannotation (its masks say which labels "
                                            "are real, per row); set one of them off")
    cal = tr["calibrate"]
    if not (isinstance(cal, bool) or (isinstance(cal, str) and cal in TTA_VIEWS)):  # a list is not hashable
        raise ConfigError("training.calibrate", f"expected true, false or the views the model will answer with "
                                                f"({', '.join(TTA_VIEWS)}), got {cal!r}")
    if tr["calibrate"] and not any(validation_spec(s) for s in cfg["sources"] or ()):
        raise ConfigError("training.calibrate", "needs a training source that holds a validation part out "
                                                "(val_fraction=F in its spec): the temperatures are fitted there")
    if not (isinstance(tr["jit_compile"], bool) or tr["jit_compile"] == "auto"):
        raise ConfigError("training.jit_compile", f"expected true, false or auto (XLA where a GPU is, under the "
                                                  f"default strategy), got {tr['jit_compile']!r}")
    spe = tr["steps_per_execution"]
    if spe != "auto" and (isinstance(spe, bool) or not isinstance(spe, int) or spe < 1):
        raise ConfigError("training.steps_per_execution", f"expected a positive integer or auto (8 where a GPU is, "
                                                          f"else 1), got {spe!r}")
    if spe not in ("auto", 1) and tr["strategy"] != "default":
        raise ConfigError("training.steps_per_execution", f"{spe} steps per call need strategy: default (Keras's "
                                                          f"several-step train function fails under tf.distribute "
                                                          f"strategies: 'You must feed a value for placeholder'); "
                                                          f"use 1 or auto with strategy: {tr['strategy']}")
    devices = tr["strategy_devices"]
    if devices is not None and (tr["strategy"] != "mirrored" or not isinstance(devices, list) or not devices
                                or not all(isinstance(d, str) for d in devices)):
        raise ConfigError("training.strategy_devices", f"expected a list of device names (e.g. ['/gpu:0', '/gpu:1']) "
                                                       f"with strategy: mirrored, got {devices!r}")
    if tr["cache_dir"] is not None and not isinstance(tr["cache_dir"], str):
        raise ConfigError("training.cache_dir", f"expected a folder path, got {tr['cache_dir']!r}")
    weights = tr["loss_weights"]
    if weights is not None:
        if not isinstance(weights, Mapping):
            raise ConfigError("training.loss_weights", f"expected a mapping {{task: weight}}, got {weights!r}")
        for task, w in weights.items():
            if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w < float("inf"):
                raise ConfigError(f"training.loss_weights.{task}", f"expected a number >= 0, got {w!r}")
    if tr["weighting_options"] is not None and not isinstance(tr["weighting_options"], Mapping):
        raise ConfigError("training.weighting_options", f"expected a mapping of options, got {tr['weighting_options']!r}")
    options = tr["dynamic_lr_options"]
    if options is not None:
        if not isinstance(options, Mapping) or tr["lr_schedule"] != "dynamic":
            raise ConfigError("training.dynamic_lr_options", f"expected a mapping of DynamicLearningRate options "
                                                             f"with lr_schedule: dynamic, got {options!r}")
        make_dynamic_lr(options)  # unknown or out-of-range options fail here, before anything is trained
    if weights and tr["weighting"] not in ("equal", "static"):
        raise ConfigError("training.loss_weights", f"static weights cannot be combined with weighting: "
                                                   f"{tr['weighting']} (it sets the weights itself)")
    _check_model(cfg["model"], _task_names(cfg["tasks"]))
    _check_distillation(cfg)
    c = cfg["coupling"]
    if not 0 < c["coannotation_weight"] <= 1:
        raise ConfigError("coupling.coannotation_weight", f"expected a weight in (0, 1], got {c['coannotation_weight']}")
    check_choice("coupling.level", c["level"], LEVELS)
    if not c["matching_weight"] > 0:
        raise ConfigError("coupling.matching_weight", f"expected a number > 0, got {c['matching_weight']}")
    if c["relations"] is not None and not isinstance(c["relations"], list):
        raise ConfigError("coupling.relations", f"expected a list of {{source, target, table}}, got {c['relations']!r}")
    for key in ("sources", "eval_sources", "unlabelled_sources"):
        if not isinstance(cfg[key], list):
            raise ConfigError(key, f"expected a list of FORMAT:PATH specs, got {cfg[key]!r}")
    if not cfg["sources"]:
        raise ConfigError("sources", "at least one training source is needed (FORMAT:PATH)")
    if not isinstance(cfg["tasks"], (list, Mapping)):
        raise ConfigError("tasks", f"expected a list of task names or a mapping, got {cfg['tasks']!r}")
    return cfg


def _task_names(tasks) -> list[str]:
    return list(tasks) if isinstance(tasks, (list, tuple, Mapping)) else []


def _check_model(m: dict, task_names: list[str]):
    """The model section, checked by the modules that own its values (errors name the key)."""
    with under_key("model"):
        if m["backbone"] not in BACKBONES:
            raise ValueError(f"backbone: expected one of {sorted(BACKBONES)}, got {m['backbone']!r}")
        if len(m["input_shape"]) != 3 or m["input_shape"][-1] != 3 or min(m["input_shape"]) < 1:
            raise ValueError(f"input_shape: expected [height, width, 3], got {m['input_shape']}")
        check_trunk(m["widths"], m["depths"], m["stem_stride"])
        check_neck(m["pooling"], m["embedding_dim"], m["head_units"], m["dropout"])
        if m["branch_at"] is not None or m["branches"]:
            branches = m["branches"] or {t: [t] for t in task_names}
            groups = check_groups(branches, task_names)
            check_branching(m["branch_at"], tuple(groups), len(m["widths"]))


def _check_distillation(cfg: dict):
    d, epochs = cfg["distillation"], cfg["training"]["epochs"]
    if d["anneal"]:
        if d["rounds"]:
            raise ConfigError("distillation.anneal", "teacher annealing and distillation rounds are two ways to "
                                                     "distil; set rounds: 0 or anneal: false")
        if not d["teachers"]:
            raise ConfigError("distillation.teachers", "teacher annealing needs teachers: a model path or "
                                                       "{task: model path} (e.g. single-task runs)")
        if not 0 <= d["anneal_start"] < 1:
            raise ConfigError("distillation.anneal_start", f"expected the real label's first share in [0, 1), got "
                                                           f"{d['anneal_start']!r}")
    unlabelled = d["anneal_unlabelled"]
    given = unlabelled.items() if isinstance(unlabelled, Mapping) else [(None, unlabelled)]
    for task, w in given:
        key = "distillation.anneal_unlabelled" + (f".{task}" if task is not None else "")
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0 <= w <= 1:
            raise ConfigError(key, f"expected a weight in [0, 1] (or {{task: weight}}), got {w!r}")
        if w and not d["anneal"]:
            raise ConfigError(key, "the teachers' answers on unlabelled rows are part of teacher annealing; "
                                   "set anneal: true")
    if d["rounds"] < 0 or d["epochs_per_round"] < 1 or d["batch_size"] < 1:
        raise ConfigError("distillation", "expected rounds >= 0 (0: off), epochs_per_round >= 1 and batch_size >= 1")
    if not 0 < d["pseudo_weight"] <= 1:
        raise ConfigError("distillation.pseudo_weight", f"expected a weight in (0, 1], got {d['pseudo_weight']}")
    if d["rounds"] and epochs != d["epochs_per_round"] * (d["rounds"] + 1):
        raise ConfigError("training.epochs", f"with distillation, training runs epochs_per_round × (rounds + 1) = "
                                             f"{d['epochs_per_round'] * (d['rounds'] + 1)} epochs (one round on real "
                                             f"labels, then {d['rounds']} with pseudo-labels), got {epochs}")
    if cfg["unlabelled_sources"] and not d["rounds"]:
        raise ConfigError("unlabelled_sources", "unlabelled sources are only used by distillation; "
                                                "set distillation.rounds >= 1")
    if d["thresholds"] is not None and not isinstance(d["thresholds"], Mapping):
        raise ConfigError("distillation.thresholds", f"expected a mapping {{task: value}}, got {d['thresholds']!r}")
    for task, value in (d["thresholds"] or {}).items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise ConfigError(f"distillation.thresholds.{task}", f"expected a number >= 0, got {value!r}")
    teachers = d["teachers"]
    if teachers is not None and not isinstance(teachers, (str, Mapping)):
        raise ConfigError("distillation.teachers", f"expected a model path, {{task: model path}} or single-task, "
                                                   f"got {teachers!r}")
    for task, paths in (teachers.items() if isinstance(teachers, Mapping) else ()):
        paths = paths if isinstance(paths, list) else [paths]
        if not paths or not all(isinstance(p, str) and p for p in paths):
            raise ConfigError(f"distillation.teachers.{task}", f"expected a model path or a list of them (their "
                                                               f"answers averaged), got {teachers[task]!r}")
    if teachers == "single-task" and not d["anneal"]:
        raise ConfigError("distillation.teachers", "single-task teachers are trained for teacher annealing; "
                                                   "set anneal: true (or name trained teachers)")
    te = d["teacher_epochs"]
    if te is not None and (isinstance(te, bool) or not isinstance(te, int) or te < 1):
        raise ConfigError("distillation.teacher_epochs", f"expected an integer >= 1 (or null: the run's epochs), "
                                                         f"got {te!r}")
    if te is not None and teachers != "single-task":
        raise ConfigError("distillation.teacher_epochs", "the budget of the teachers the run trains itself; "
                                                         "set teachers: single-task (or leave it out)")
    _check_teacher_section(cfg, "training", "{optimizer: adam}")  # a mapping from here on, if given
    if te is not None and "epochs" in (d["teacher_training"] or {}):  # one budget, said once
        raise ConfigError("distillation.teacher_training.epochs", "the teachers' epochs are already given by "
                                                                  "distillation.teacher_epochs; give them once")
    _check_teacher_section(cfg, "model", "{input_shape: [64, 64, 3]}")
    _check_born_again(d)
    if d["teacher_views"] != "none":
        check_choice("distillation.teacher_views", d["teacher_views"], VIEW_NAMES)
        if not d["anneal"]:
            raise ConfigError("distillation.teacher_views", "the views the annealed teachers answer with; set anneal: "
                                                            "true (distillation rounds' teachers have their own six)")


def _check_born_again(d: dict):
    """``distillation.born_again``: ``{generations: N, views: none|flip|six}`` (or null: off), completed in place."""
    ba, key = d["born_again"], "distillation.born_again"
    if ba is None:
        return
    if not isinstance(ba, Mapping):
        raise ConfigError(key, f"expected {{generations: N, views: none|flip|six}} (or null: off), got {ba!r}")
    for k in ba:
        if k not in ("generations", "views"):
            raise ConfigError(f"{key}.{k}", "unknown key (expected generations and views)")
    ba = d["born_again"] = {"generations": 1, "views": "none", **ba}
    n = ba["generations"]
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"{key}.generations", f"expected the number of earlier generations, >= 1, got {n!r}")
    check_choice(f"{key}.views", ba["views"], VIEW_NAMES)
    if not d["anneal"]:
        raise ConfigError(key, "each generation teaches the next by teacher annealing; set anneal: true")


def _check_teacher_section(cfg: dict, section: str, example: str):
    """``distillation.teacher_training`` (``teacher_model``): training (model) keys the single-task teachers take
    instead of the run's (the student's), checked as the run's own section would be."""
    key = f"distillation.teacher_{section}"
    overrides = cfg["distillation"][f"teacher_{section}"]
    if overrides is None:
        return
    if not isinstance(overrides, Mapping):
        raise ConfigError(key, f"expected a mapping of {section} keys (e.g. {example}), got {overrides!r}")
    if cfg["distillation"]["teachers"] != "single-task":
        raise ConfigError(key, "the settings of the teachers the run trains itself; set teachers: single-task "
                               "(or leave it out)")
    try:
        resolve_config({**cfg, section: {**cfg[section], **overrides},
                        "distillation": {**cfg["distillation"], f"teacher_{section}": None}})
    except ConfigError as e:
        inner = e.key_path.partition(f"{section}.")[2] if e.key_path.startswith(f"{section}.") else None
        if inner is None:
            raise
        raise ConfigError(f"{key}.{inner}", str(e).partition("': ")[2]) from None


def load_config(path) -> dict:
    """Read a YAML config file (safe loading) and resolve it.

    Raises:
        ConfigError: the file is missing or not valid YAML (with its line), or a key is wrong.

    Example:
        >>> _ = open("exp.yaml", "w").write("tasks: [age]\\nsources: ['synthetic:portraits?n=64']\\n")
        >>> load_config("exp.yaml")["sources"]
        ['synthetic:portraits?n=64']
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError("<file>", f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ConfigError("<file>", f"{str(path)!r} is not valid YAML: {e}") from None
    return resolve_config(data or {})


def dump_config(config: Mapping) -> str:
    """YAML text of a resolved config.

    Example:
        >>> text = dump_config(resolve_config({"tasks": ["age"], "sources": ["synthetic:portraits"]}))
        >>> text.splitlines()[:2]
        ['tasks: [age]', "sources: ['synthetic:portraits']"]
    """
    return yaml.safe_dump(dict(config), sort_keys=False, default_flow_style=None)
