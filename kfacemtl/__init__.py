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

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# the layers, lowest first: each imports only from those above it
from kfacemtl.version import __version__  # noqa: E402
from kfacemtl.errors import ConfigError, KfacemtlError, LabelError, SourceError  # noqa: E402
from kfacemtl.tasks import Task, get_task, resolve_tasks  # noqa: E402
from kfacemtl.data import (CsvSource, FolderSource, ImagesSource, Source, SyntheticSource, WithoutLabels,  # noqa: E402
                           make_dataset, make_source, register_source, steps_per_epoch)
from kfacemtl.models import (MaskedTaskLoss, MultiTaskModel, TaskOutput, VGGBackbone, build_model,  # noqa: E402
                             load_model, model_tasks, task_loss)
from kfacemtl.analysis import evaluate_sources, format_table  # noqa: E402
from kfacemtl.training import (CoAnnotation, DataDistillation, DistributionMatching, DynamicLearningRate,  # noqa: E402
                               PseudoLabels, Relatedness, TaskWeighting, compile_model, distill,
                               learning_rate_schedule, lr_range_test, make_strategy, make_weighting, train_run)
from kfacemtl.serving import export_model  # noqa: E402

__all__ = [
    "__version__", "ConfigError", "KfacemtlError", "LabelError", "SourceError", "Task", "get_task", "resolve_tasks",
    "CsvSource", "FolderSource", "ImagesSource", "Source", "SyntheticSource", "WithoutLabels", "make_dataset",
    "make_source", "register_source", "steps_per_epoch", "MaskedTaskLoss", "MultiTaskModel", "TaskOutput",
    "VGGBackbone", "build_model", "load_model", "model_tasks", "task_loss", "evaluate_sources", "format_table",
    "CoAnnotation", "DataDistillation", "DistributionMatching", "DynamicLearningRate", "PseudoLabels", "Relatedness",
    "TaskWeighting", "compile_model", "distill", "learning_rate_schedule", "lr_range_test", "make_strategy",
    "make_weighting", "train_run", "export_model",
]
