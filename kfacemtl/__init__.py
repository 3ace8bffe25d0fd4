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
    >>> # model.fit(ds, steps_per_epoch=4, epochs=1)
"""

import os as _os

_os.environ.setdefault("KERAS_BACKEND", "tensorflow")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from kfacemtl.callbacks import DynamicLearningRate, lr_range_test  # noqa: E402
from kfacemtl.coupling import CoAnnotation, DistributionMatching, Relatedness  # noqa: E402
from kfacemtl.distillation import DataDistillation, PseudoLabels, distill  # noqa: E402
from kfacemtl.distribute import make_strategy  # noqa: E402
from kfacemtl.errors import ConfigError, KfacemtlError, LabelError, SourceError  # noqa: E402
from kfacemtl.evaluation import evaluate_sources, format_table  # noqa: E402
from kfacemtl.export import export_model  # noqa: E402
from kfacemtl.losses import MaskedTaskLoss, task_loss  # noqa: E402
from kfacemtl.model import MultiTaskModel, TaskOutput, VGGBackbone, build_model, load_model, model_tasks  # noqa: E402
from kfacemtl.pipeline import make_dataset, steps_per_epoch  # noqa: E402
from kfacemtl.sources import (CsvSource, FolderSource, ImagesSource, Source, SyntheticSource,  # noqa: E402
                              WithoutLabels, make_source)
from kfacemtl.tasks import Task, get_task, resolve_tasks  # noqa: E402
from kfacemtl.training import compile_model, learning_rate_schedule, train_run  # noqa: E402
from kfacemtl.weighting import TaskWeighting, make_weighting  # noqa: E402

__version__ = "0.1.0"
__all__ = [
    "ConfigError", "KfacemtlError", "LabelError", "SourceError", "evaluate_sources", "format_table",
    "MaskedTaskLoss", "task_loss", "MultiTaskModel", "TaskOutput", "VGGBackbone", "build_model", "load_model",
    "model_tasks", "make_dataset", "steps_per_epoch", "CsvSource", "FolderSource", "Source", "SyntheticSource",
    "make_source", "Task", "get_task", "resolve_tasks", "compile_model", "train_run",
    "export_model", "DynamicLearningRate", "lr_range_test", "learning_rate_schedule", "TaskWeighting",
    "make_weighting", "DataDistillation", "PseudoLabels", "distill", "ImagesSource", "WithoutLabels",
    "CoAnnotation", "DistributionMatching", "Relatedness", "make_strategy",
]
