"""Training of TRC models: configuration, losses, the training loop, checkpoints, DDP.

>>> from trc.training import Trainer, TrainConfig                       # doctest: +SKIP
>>> result = Trainer(model, load_dataset(path), TrainConfig(epochs=50), out_dir="runs/x").fit()  # doctest: +SKIP

The command line is ``python -m trc.train`` (:mod:`trc.train`); model files are
:mod:`trc.model_file`.
"""

from .checkpoint import TRAINING_STATE_FORMAT, read_training_state, save_training_state
from .config import EvaluationConfig, LossConfig, TrainConfig, cycle_weights
from .distributed import DistributedContext, init_distributed, shutdown_distributed
from .losses import TRCLoss, control_scale, cost_ratio_loss, imitation_loss, state_scale, terminal_loss
from .trainer import CHECKPOINT_NAME, Trainer, TrainResult

__all__ = [
    "TrainConfig",
    "LossConfig",
    "EvaluationConfig",
    "cycle_weights",
    "Trainer",
    "TrainResult",
    "CHECKPOINT_NAME",
    "TRCLoss",
    "imitation_loss",
    "cost_ratio_loss",
    "terminal_loss",
    "control_scale",
    "state_scale",
    "DistributedContext",
    "init_distributed",
    "shutdown_distributed",
    "TRAINING_STATE_FORMAT",
    "save_training_state",
    "read_training_state",
]
