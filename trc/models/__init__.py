"""The Tiny Recursive Control network: config, shared recursion core, feedback, presets, halting,
and the inference-time stages through the plant (TVLQR tracking, terminal correction).

>>> from trc.models import TinyRecursiveControl, TRCConfig, create_two_level_small
>>> model = create_two_level_small(state_dim=2, control_dim=1, horizon=15, u_min=-4, u_max=4)
>>> model(torch.zeros(8, 2), torch.ones(8, 2)).shape  # doctest: +SKIP
torch.Size([8, 15, 1])
"""

from .config import TRCConfig
from .correction import terminal_correction
from .feedback import FeedbackGain, TrajectoryErrorEncoder, trajectory_error
from .halting import HaltingHead, halting_loss, halting_targets
from .presets import (
    PRESETS,
    create,
    create_fast,
    create_fast_tiny,
    create_large,
    create_medium,
    create_small,
    create_two_level_large,
    create_two_level_medium,
    create_two_level_small,
    preset_config,
    preset_names,
    preset_table,
)
from .recursion import LatentState, MLPBlock, RecursionCore, SharedNet
from .tracking import linearize_along, tvlqr_gains, tvlqr_tracking
from .trc import TinyRecursiveControl, TRCOutput, state_normalization

__all__ = [
    "TRCConfig",
    "TinyRecursiveControl",
    "TRCOutput",
    "state_normalization",
    "RecursionCore",
    "SharedNet",
    "MLPBlock",
    "LatentState",
    "TrajectoryErrorEncoder",
    "FeedbackGain",
    "trajectory_error",
    "HaltingHead",
    "halting_loss",
    "halting_targets",
    "terminal_correction",
    "tvlqr_tracking",
    "tvlqr_gains",
    "linearize_along",
    "PRESETS",
    "preset_names",
    "preset_config",
    "preset_table",
    "create",
    "create_small",
    "create_medium",
    "create_large",
    "create_two_level_small",
    "create_two_level_medium",
    "create_two_level_large",
    "create_fast",
    "create_fast_tiny",
]
