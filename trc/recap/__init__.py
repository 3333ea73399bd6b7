"""RECAP: RL with Experience and Corrections via Advantage-conditioned Policies, on the cheap plants.

Physical Intelligence, "pi*0.6: a VLA that learns from experience", arXiv 2511.14759; the
guidance of CFGRL (Frans et al., arXiv 2505.23458).

=================  ==========================================================================
module             what
=================  ==========================================================================
``value``          RECAP rewards, returns normalised per task into ``[-1, 0]``, two-hot targets
                   over 201 bins, the distributional value head and its cross-entropy loss
``advantage``      n-step and GAE(lambda) advantages, per-task thresholds for a 30 % positive
                   fraction, indicators (interventions positive)
``guidance``       indicator tokens (negative / positive / null), 30 % dropout, classifier-free
                   guidance ``a_null + beta (a_pos - a_null)`` of actions or logits
``policies``       advantage-conditioned wrappers of the recursive maze policy and of
                   TinyRecursiveControl; the value networks of the cheap plants
``envs``           maze and continuous episodes, scripted experts and demonstrators, the
                   intervention monitor, batched rollouts
``stages``         the three stages (demos, corrections, autonomous) as one resumable pipeline
=================  ==========================================================================

``python -m trc.train --config configs/recap_maze.yaml --stage demos|corrections|autonomous``
runs a stage (:mod:`trc.kinds.recap`).
"""

from .advantage import (
           gae_advantages,
           label_advantages,
           lambda_returns,
           n_step_advantages,
           task_thresholds,
)
from .guidance import NEGATIVE, NULL, POSITIVE, drop_indicators, guide
from .value import (NUM_BINS, ValueCalibration, ValueHead, auroc, bin_centers, calibration, expected_value,
                    steps_to_go, two_hot, value_loss)

__all__ = ["NUM_BINS", "ValueHead", "bin_centers", "two_hot", "expected_value", "value_loss", "n_step_advantages",
           "gae_advantages", "lambda_returns", "task_thresholds", "label_advantages", "NEGATIVE", "POSITIVE", "NULL",
           "drop_indicators", "guide", "auroc", "steps_to_go", "calibration", "ValueCalibration"]
