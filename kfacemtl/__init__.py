"""kfacemtl: multi-task face analysis with Keras 3.

One VGG-style network with a head per task (age, gender, race, expression, action units,
valence/arousal, identity), trained with ``model.fit`` from several partially labelled
sources: a missing label is a sample weight of 0.

Example:
    >>> import kfacemtl
    >>> tasks = kfacemtl.resolve_tasks(["gender", "expression"])
    >>> sources = [kfacemtl.make_source("synthetic:lab?n=64"), kfacemtl.make_source("synthetic:portraits?n=64")]
    >>> ds = kfacemtl.make_dataset(sources, tasks, batch_size=32)
    >>> model = kfacemtl.compile_model(kfacemtl.build_model(tasks))
    >>> model.fit(ds, steps_per_epoch=2, epochs=1, verbose=0).history["loss"][0] > 0
    True
"""

import importlib as _importlib
import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's C++ info and warning lines (0 shows them)

from kfacemtl.version import __version__  # noqa: E402

# The public API, by the module that defines each name. Importing kfacemtl loads none of them (nor TensorFlow): a
# name is imported the first time it is used, so the command line can start quietly and fast.
_API = {
    "kfacemtl.errors": ["ConfigError", "KfacemtlError", "LabelError", "SourceError"],
    "kfacemtl.tasks": ["Task", "get_task", "resolve_tasks"],
    "kfacemtl.data": ["CsvSource", "FolderSource", "ImagesSource", "Source", "SyntheticSource", "WithoutLabels",
                      "make_dataset", "make_source", "register_source", "steps_per_epoch"],
    "kfacemtl.models": ["MaskedTaskLoss", "MultiTaskModel", "TaskOutput", "VGGBackbone", "ResidualBackbone",
                        "build_model", "load_model", "model_tasks", "task_loss"],
    "kfacemtl.analysis": ["evaluate_sources", "format_table"],
    "kfacemtl.analysis.photos": ["analyze"],
    "kfacemtl.training": ["CoAnnotation", "DataDistillation", "DistributionMatching", "DynamicLearningRate",
                          "PseudoLabels", "Relatedness", "TaskWeighting", "compile_model", "distill",
                          "learning_rate_schedule", "lr_range_test", "make_strategy", "make_weighting", "train_run"],
    "kfacemtl.serving": ["export_model"],
}
_HOME = {name: module for module, names in _API.items() for name in names}
_SUBPACKAGES = ("analysis", "cli", "data", "errors", "files", "models", "serving", "tables", "tasks", "training")
__all__ = ["__version__", *_HOME]


def __getattr__(name):
    if name in _HOME:
        value = getattr(_importlib.import_module(_HOME[name]), name)
    elif name in _SUBPACKAGES:
        value = _importlib.import_module(f"kfacemtl.{name}")
    else:
        raise AttributeError(f"module 'kfacemtl' has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(__all__) | set(_SUBPACKAGES))
