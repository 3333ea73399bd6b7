"""The ``generator:`` section of a configuration file: which solver, how many samples, where.

::

    generator:
      solver: qp                 # a registered solver, see trc.generators.solver_names()
      num_samples: 10000         # successful trajectories in the data set
      splits: [0.8, 0.1, 0.1]    # train / val / test fractions
      seed: 0                    # instances and splits are drawn from this seed
      chunk_size: 1000           # instances per work unit (resume granularity)
      out: datasets/double_integrator.h5   # default datasets/<problem name>.h5
      max_failure_rate: 0.5      # abort when more solves than this fraction fail
      options: {}                # keyword arguments of the solver
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from dynamics.errors import ConfigError, TRCError, UnknownNameError

from ..config import MAX_SEED, check_int, check_real, check_seed
from ..io import check_output_name
from .base import make_solver, solver_names

__all__ = ["GeneratorConfig", "SPLIT_NAMES", "DEFAULT_DATASET_DIR", "MAX_SEED", "check_seed"]

#: Names of the data set splits, in the order of :attr:`GeneratorConfig.splits`.
SPLIT_NAMES = ("train", "val", "test")

#: Folder of generated data sets when ``out`` is not given (relative to the working directory).
DEFAULT_DATASET_DIR = "datasets"




@dataclass
class GeneratorConfig:
    """How to generate a data set of optimal trajectories for a :class:`~trc.problem.Problem`.

    Attributes
    ----------
    solver : str
        Name of a registered solver (:func:`trc.generators.solver_names`).
    num_samples : int
        Number of *successful* trajectories ``M`` in the data set. Failed solves are counted,
        reported and stored apart (``failures/`` group), never as training data; more
        instances are drawn from the same seeded stream until ``M`` solves succeed.
    splits : list of 3 float
        Fractions of the ``train``, ``val`` and ``test`` splits; non-negative, sum 1.
    seed : int
        Seed of the instance stream and of the split permutation, in ``[0, 2**63 - 1]``.
        The same seed (and problem, solver and options) gives the same arrays.
    chunk_size : int
        Instances per work unit. Every finished chunk is saved at once, so an interrupted
        run loses at most one chunk per worker; a different chunk size is a different
        batching of the solver and therefore starts afresh.
    out : str, optional
        Output HDF5 file; default ``datasets/<problem name>.h5``.
    max_failure_rate : float
        Give up with :class:`~dynamics.errors.SolverError` when the fraction of failed
        solves exceeds this (after the first round of chunks), or when
        ``num_samples / (1 - max_failure_rate)`` instances did not give enough successes.
    options : dict
        Keyword arguments passed to the solver's constructor.

    Raises
    ------
    ConfigError
        On an unknown solver (the cause is the registry's
        :class:`~dynamics.errors.UnknownNameError`) or an invalid value.
    """

    solver: str
    num_samples: int = 1000
    splits: list = field(default_factory=lambda: [0.8, 0.1, 0.1])
    seed: int = 0
    chunk_size: int = 256
    out: str | None = None
    max_failure_rate: float = 0.5
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.solver, str) or self.solver not in solver_names():
            cause = UnknownNameError(f"unknown solver {self.solver!r}; choose one of {solver_names()}")
            raise ConfigError(f"generator.solver: {cause}") from cause
        check_int(self.num_samples, "generator.num_samples", 1)
        self.seed = check_seed(self.seed)
        check_int(self.chunk_size, "generator.chunk_size", 1)
        splits = self.splits
        if (
            not isinstance(splits, (list, tuple))
            or len(splits) != len(SPLIT_NAMES)
            or not all(isinstance(s, numbers.Real) and not isinstance(s, bool) for s in splits)
        ):
            raise ConfigError(
                f"generator.splits must be {len(SPLIT_NAMES)} fractions {list(SPLIT_NAMES)}, got {splits!r}"
            )
        if any(not (0 <= s <= 1) for s in splits) or not math.isclose(sum(splits), 1.0, abs_tol=1e-9):
            raise ConfigError(f"generator.splits must be non-negative and sum to 1, got {list(splits)} (sum {sum(splits)})")
        self.splits = [float(s) for s in splits]
        if self.out is not None:
            # The name only; the file system is checked when a run starts (generate()).
            self.out = check_output_name(self.out, what="generator.out")
        self.max_failure_rate = check_real(self.max_failure_rate, "generator.max_failure_rate", 0.0, 1.0,
                                           high_open=True)
        if self.options is None:
            self.options = {}
        if not isinstance(self.options, dict) or not all(isinstance(k, str) for k in self.options):
            raise ConfigError(f"generator.options must be a mapping of solver keyword arguments, got {self.options!r}")

    def output_path(self, problem) -> Path:
        """The output file: ``out`` or ``datasets/<problem.name>.h5``."""
        return Path(self.out) if self.out is not None else Path(DEFAULT_DATASET_DIR) / f"{problem.name}.h5"

    def make_solver(self, problem):
        """Build the configured solver for ``problem``.

        Raises
        ------
        ConfigError
            If the solver rejects ``options`` with a ``TypeError`` or ``ValueError`` (unknown
            keyword or invalid value). Errors of the TRC hierarchy (e.g. an uncontrollable
            problem) propagate unchanged.
        """
        try:
            return make_solver(self.solver, problem, **self.options)
        except TRCError:
            raise
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"generator.options {self.options!r} rejected by solver {self.solver!r}: {exc}") from exc
