"""Models: the backbone, the task heads, the multi-task Keras model and its masked losses.

Example:
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> build_model(resolve_tasks(["age", "gender"]), widths=(8, 16), depths=1).output_names
    ['age', 'gender']
"""
from kfacemtl.models.backbones import VGGBackbone
from kfacemtl.models.fusion import OutputFusion
from kfacemtl.models.heads import TaskOutput
from kfacemtl.models.losses import MaskedTaskLoss, class_accuracy, label_accuracy, task_loss, task_metrics_for
from kfacemtl.models.multitask import MultiTaskModel, build_model, count_flops, load_model, model_file, model_tasks

__all__ = ["VGGBackbone", "OutputFusion", "TaskOutput", "MaskedTaskLoss", "class_accuracy", "label_accuracy",
           "task_loss", "task_metrics_for", "MultiTaskModel", "build_model", "count_flops", "load_model", "model_file",
           "model_tasks"]
