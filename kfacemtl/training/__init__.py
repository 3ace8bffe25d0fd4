"""Training: configs, compiling, task weighting, callbacks, distillation, coupling, distribution, and runs.

Example:
    >>> from kfacemtl.training import resolve_config
    >>> resolve_config({"sources": ["synthetic:lab?n=10"]})["training"]["batch_size"]
    64
"""
from kfacemtl.training.callbacks import EpochCheckpoint, NaNGuard, TaskWeightingCallback
from kfacemtl.training.compile import (attach_weighting, augment_on, compile_model, learning_rate_schedule,
                                       make_optimizer, steps_per_execution)
from kfacemtl.training.config import DEFAULTS, dump_config, load_config, resolve_config
from kfacemtl.training.coupling import (CoAnnotation, DistributionMatching, OutputFusion, Relatedness, make_coupling,
                                        make_relations)
from kfacemtl.training.demo import DEMO_EPOCHS, DEMO_STEPS, demo_config
from kfacemtl.training.distillation import DataDistillation, PseudoLabels, distill
from kfacemtl.training.distribute import make_strategy
from kfacemtl.training.lr import DynamicLearningRate, lr_range_test, make_dynamic_lr
from kfacemtl.training.run import RESUME_MAY_CHANGE, build_sources, make_distillation, prepare_run_dir, train_run
from kfacemtl.training.weighting import TaskWeighting, make_weighting

__all__ = ["EpochCheckpoint", "NaNGuard", "TaskWeightingCallback", "attach_weighting", "augment_on",
           "compile_model", "learning_rate_schedule", "make_optimizer", "steps_per_execution", "DEFAULTS",
           "dump_config", "load_config", "resolve_config", "CoAnnotation", "DistributionMatching", "OutputFusion",
           "Relatedness", "make_coupling", "make_relations", "DEMO_EPOCHS", "DEMO_STEPS", "demo_config",
           "DataDistillation", "PseudoLabels", "distill", "make_strategy", "DynamicLearningRate", "lr_range_test",
           "make_dynamic_lr", "RESUME_MAY_CHANGE", "build_sources", "make_distillation", "prepare_run_dir",
           "train_run", "TaskWeighting", "make_weighting"]
