"""Plants as batched, differentiable simulators, and their registry.

>>> import dynamics
>>> dynamics.names()  # doctest: +SKIP
['cartpole', 'double_integrator', 'linear', 'pendulum', 'rocket', 'van_der_pol']
>>> plant = dynamics.make("double_integrator", dt=0.33, u_min=-4, u_max=4)
"""

from .errors import *  # noqa: F401,F403
from .errors import __all__ as _errors_all
from .plant import Plant
from .interval import IntervalRollout
from .registry import get, make, names, register

# Each module registers its plant(s) on import.
from . import double_integrator, van_der_pol  # noqa: E402,F401
from . import cartpole, linear, pendulum  # noqa: E402,F401
from . import rocket  # noqa: E402,F401
from . import learned_arm, libero, libero_env  # noqa: E402,F401  (LIBERO arm: learned and MuJoCo plants, gym id trc/LIBERO-v0)
from . import discrete_env, maze, sudoku  # noqa: E402,F401  (discrete plants, gym ids trc/Maze-v0, trc/Sudoku-v0)
from .env import PlantEnv, make_env  # noqa: E402  (keep last: registers gym ids of the plants above)

__all__ = ["Plant", "IntervalRollout", "make", "names", "register", "get", "make_env", "PlantEnv", *_errors_all]
