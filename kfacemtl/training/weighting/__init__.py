"""Task weighting: how the per-task losses become the one loss the network trains on.

Every strategy is one small class behind :class:`TaskWeighting`, chosen by name
(``training.weighting`` in a config, ``compile_model(weighting=...)`` in Python):

- ``equal``: every task weight 1 (the default; Keras's own loss sum).
- ``static``: the weights you give (``{"expression": 2.0}``; 1 for the others).
- ``uncertainty`` (Kendall, Gal & Cipolla 2018): a learned log-variance ``s_t`` per task;
  the loss is ``Σ exp(-s_t)·L_t + s_t``, so noisy tasks are down-weighted.
- ``dwa`` (Liu, Johns & Davison 2019, dynamic weight average): ``w_t = T·softmax(r_t / τ)``
  with ``r_t`` the ratio of the task's last two epoch losses: a task whose loss falls
  slowly gets more weight (1 each for the first two epochs).
- ``dynamic`` (Ming et al. 2019, arXiv 1911.03281, as in their public code): a weight unit
  ``w = softmax(l2_normalize(Dense_T(l2_normalize(shared features))))``, averaged over the
  batch. The network trains on ``Σ w_t·L_t`` with ``w`` held constant; the weight unit alone
  trains on ``Σ w_t / (L_t + 0.01)`` with its own optimizer (10× the network's default learning
  rate, as theirs), so harder tasks (larger loss) get more weight. Normalising the unit's
  logits bounds the weights: ``Σ w_t / L_t`` is minimised by giving everything to the largest
  loss, and without the bound that is what happens (on real faces, expression took 3.95 of 4
  within two epochs). Weights are scaled to sum to the number of tasks present, so ``equal`` is
  1 each; with 4 tasks they stay within about [0.38, 2.06].
- ``gradnorm`` (Chen et al. 2018): learned weights ``w_t`` (summing to the number of tasks)
  trained so that each task's gradient norm on the last shared layer (``embedding_dense``),
  ``G_t = ||∇ w_t·L_t||``, approaches ``mean(G)·r_t^α``, where ``r_t`` is the task's loss
  relative to its first batch, over the mean of those ratios: tasks that train slower get
  larger gradients.

Masked losses: a task with no labelled row in the batch has loss exactly 0 (see
:mod:`kfacemtl.models`); it gets weight 0 and its parameters get no gradient.

Example:
    >>> from kfacemtl.training.weighting import make_weighting
    >>> w = make_weighting("static", ["age", "expression"], weights={"expression": 2.0})
    >>> import numpy as np
    >>> total, weights, aux = w.combine(np.array([1.0, 0.5], "float32"), np.array([1.0, 1.0], "float32"), None)
    >>> float(total), [float(v) for v in weights]
    (2.0, [1.0, 2.0])
"""

from kfacemtl.training.weighting.base import WEIGHTINGS, TaskWeighting, make_weighting, register_weighting
from kfacemtl.training.weighting.dwa import DWAWeighting
from kfacemtl.training.weighting.dynamic import DynamicWeighting
from kfacemtl.training.weighting.equal import EqualWeighting, StaticWeighting
from kfacemtl.training.weighting.gradnorm import GradNormWeighting
from kfacemtl.training.weighting.uncertainty import UncertaintyWeighting

__all__ = ["WEIGHTINGS", "TaskWeighting", "make_weighting", "register_weighting", "DWAWeighting", "DynamicWeighting",
           "EqualWeighting", "StaticWeighting", "GradNormWeighting", "UncertaintyWeighting"]
