"""Teacher-student distillation: data distillation rounds (Distill-2MD-MTL), where the teacher's confident answers
fill in the labels the datasets lack, and teacher annealing (BAM), where single-task teachers' answers are mixed into
the real labels, less and less over training.

Example:
    >>> from kfacemtl.training.distillation import DEFAULT_TRANSFORMS
    >>> len(DEFAULT_TRANSFORMS)
    6
"""
from kfacemtl.training.distillation.annealing import SINGLE_TASK, AnnealedTargets, TeacherAnnealing
from kfacemtl.training.distillation.pseudo_labels import PseudoLabels
from kfacemtl.training.distillation.rounds import DataDistillation, distill, format_round
from kfacemtl.models.views import DEFAULT_TRANSFORMS, transform_batch, transform_boxes
from kfacemtl.training.distillation.teacher import DEFAULT_THRESHOLDS, EnsembleTeacher, pseudo_label_quality, select

__all__ = ["SINGLE_TASK", "AnnealedTargets", "TeacherAnnealing", "PseudoLabels", "DataDistillation", "distill", "format_round", "DEFAULT_THRESHOLDS", "DEFAULT_TRANSFORMS",
           "EnsembleTeacher", "pseudo_label_quality", "select", "transform_batch", "transform_boxes"]
