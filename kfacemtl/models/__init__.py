"""Models: backbones, the task heads, the multi-task Keras model and its masked losses.

Example:
    >>> from kfacemtl.models import build_model
    >>> from kfacemtl.tasks import resolve_tasks
    >>> build_model(resolve_tasks(["age", "gender"]), widths=(8, 16), depths=1).output_names
    ['age', 'gender']
"""
from kfacemtl.models.backbones import (BACKBONES, Backbone, ResidualBackbone, VGGBackbone, make_backbone,
                                       register_backbone)
from kfacemtl.models.fusion import OutputFusion
from kfacemtl.models.heads import TaskOutput
from kfacemtl.models.losses import MaskedTaskLoss, class_accuracy, label_accuracy, task_loss, task_metrics_for
from kfacemtl.models.multitask import POOLINGS, SHARED_LAYER, MultiTaskModel, check_neck
from kfacemtl.models.build import (build_model, count_flops, flat_graph, flat_model, load_model, model_file,
                                   model_tasks)

__all__ = ["BACKBONES", "Backbone", "ResidualBackbone", "VGGBackbone", "make_backbone", "register_backbone",
           "OutputFusion", "TaskOutput", "MaskedTaskLoss", "class_accuracy", "label_accuracy", "task_loss",
           "task_metrics_for", "POOLINGS", "SHARED_LAYER", "MultiTaskModel", "check_neck", "build_model", "count_flops",
           "flat_graph", "flat_model",
           "load_model", "model_file", "model_tasks"]
