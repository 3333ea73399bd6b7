"""A whole configuration file, of any problem kind: one problem and the settings of every stage.

::

    problem:     # the problem; its ``kind`` key picks the problem kind (trc.kinds; absent:
                 # continuous, trc.problem.Problem; maze | sudoku: discrete; libero)
    generator:   # the kind's generator configuration (python -m trc.generate)
    model:       # the TRC network                   (parsed by its stage)
    training:    # the training run                  (parsed by its stage)
    evaluation:  # the evaluation run                (parsed by its stage)

Any other top-level section is an error, as is any unknown key inside a section, so a typo
never silently falls back to a default. ``problem`` and ``generator`` are parsed and
validated on loading by the problem kind (:mod:`trc.kinds`); the other stages get their section with :meth:`Experiment.section` or
parse it into their own dataclass with :meth:`Experiment.parse`::

    >>> exp = load_experiment("configs/double_integrator.yaml")      # doctest: +SKIP
    >>> exp.problem.horizon                                          # doctest: +SKIP
    15
    >>> train_cfg = exp.parse("training", TrainConfig)               # doctest: +SKIP
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping


import dynamics
from dynamics.errors import ConfigError

from . import kinds
from .config import from_dict, load_yaml, to_dict

__all__ = [
    "SECTIONS",
    "CONFIG_DIR",
    "Experiment",
    "load_experiment",
    "experiment_from_dict",
    "standard_config",
    "default_experiment",
]

#: Allowed top-level sections of a configuration file.
SECTIONS = ("problem", "generator", "model", "training", "evaluation")

#: The repository's folder of standard configurations (absent in an installed package).
CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


@dataclass
class Experiment:
    """A parsed configuration file.

    Attributes
    ----------
    problem : dataclass
        The kind's problem (:class:`trc.problem.Problem` for continuous problems).
    generator : dataclass or None
        The kind's generator configuration; None when a continuous file has no
        ``generator`` section.
    sections : dict of str to dict
        The raw mapping of every section present (a deep copy of the file's content).
    source : str
        Where the configuration came from (a file path, or ``"<dict>"``).
    """

    problem: Any
    generator: Any = None
    sections: dict = field(default_factory=dict)
    source: str = "<dict>"
    kind: str = "continuous"

    def section(self, name: str) -> dict:
        """The raw mapping of section ``name`` (an empty dict if the file lacks it).

        Raises
        ------
        ConfigError
            If ``name`` is not one of :data:`SECTIONS`.
        """
        if name not in SECTIONS:
            raise ConfigError(f"unknown section {name!r}; a configuration has the sections {list(SECTIONS)}")
        return copy.deepcopy(self.sections.get(name) or {})

    def parse(self, name: str, cls):
        """Section ``name`` as dataclass ``cls`` (strict: unknown keys raise ConfigError).

        Raises
        ------
        ConfigError
            If ``name`` is not a section name, or the section does not fit ``cls``.
        """
        return from_dict(cls, self.section(name), name)

    @property
    def problem_kind(self) -> "kinds.ProblemKind":
        """The registered kind of this configuration (:mod:`trc.kinds`)."""
        return kinds.get(self.kind)

    def dataset_path(self) -> Path:
        """The configuration's data set: a file (``generator.out`` or ``datasets/<name>.h5``) or a folder."""
        return Path(self.problem_kind.dataset_path(self))

    def to_dict(self) -> dict:
        """The configuration as plain data, with ``problem`` and ``generator`` as parsed."""
        out = copy.deepcopy(self.sections)
        out["problem"] = self.problem_kind.problem_dict(self.problem)
        if self.generator is not None:
            out["generator"] = to_dict(self.generator)
        return out


def experiment_from_dict(data: Mapping, source: str = "<dict>") -> Experiment:
    """Parse a configuration mapping (the content of a YAML file).

    The ``kind`` key of the ``problem`` section picks the problem kind
    (:func:`trc.kinds.for_problem_kind`), which parses ``problem`` and ``generator``.

    Raises
    ------
    ConfigError
        On an unknown top-level section, a missing ``problem`` section, an unknown
        ``problem.kind``, an unknown key or an invalid value in ``problem`` or ``generator``
        (including an unknown plant or solver, whose :class:`~dynamics.errors.UnknownNameError`
        is the ``__cause__``).
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{source}: a configuration is a mapping of sections, got {type(data).__name__}")
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {unknown}; allowed sections: {list(SECTIONS)}")
    for name, value in data.items():
        if value is not None and not isinstance(value, Mapping):
            raise ConfigError(f"{source}: section {name!r} must be a mapping, got {type(value).__name__}: {value!r}")
    if not data.get("problem"):
        raise ConfigError(f"{source}: the section 'problem' is required")
    sections = {k: copy.deepcopy(dict(v)) for k, v in data.items() if v is not None}
    try:
        kind = kinds.for_problem_kind(sections["problem"].get("kind"))
        problem = kind.parse_problem(sections["problem"])
        generator = kind.parse_generator(sections.get("generator"), problem)
    except dynamics.UnknownNameError as exc:
        raise ConfigError(f"{source}: {exc}") from exc
    except ConfigError as exc:  # name the file; keep the root cause (e.g. UnknownNameError)
        raise ConfigError(f"{source}: {exc}") from (exc.__cause__ or exc)
    return Experiment(problem=problem, generator=generator, sections=sections, source=source, kind=kind.name)


def load_experiment(path: str | os.PathLike) -> Experiment:
    """Read and validate a configuration file.

    Parameters
    ----------
    path : str or PathLike
        A YAML file with the sections of :data:`SECTIONS`.

    Raises
    ------
    ConfigError
        If the file is missing, is not valid YAML, or fails :func:`experiment_from_dict`.
    """
    return experiment_from_dict(load_yaml(path), source=str(path))


def standard_config(name: str) -> Path | None:
    """The repository's standard configuration ``configs/<name>.yaml``, or None if absent."""
    path = CONFIG_DIR / f"{name}.yaml"
    return path if path.is_file() else None


def default_experiment(plant: str, solver: str | None = None) -> Experiment:
    """A ready-to-generate configuration for a plant, for quick command-line use.

    * The repository's standard configuration ``configs/<plant>.yaml`` when it exists and
      ``solver`` is None or the solver of that file.
    * Otherwise a generic problem for ``solver``: the plant with its default parameters and
      ``dt`` (no bounds unless the plant has default ones), horizon 50, ``Q = I``, ``R = I``,
      ``Qf = Q``, initial states uniform in ``[-1, 1]^n`` and the origin as target, so that
      e.g. ``--plant double_integrator --solver lqr`` is an unconstrained LQR problem.

    Raises
    ------
    ConfigError
        If ``plant`` is not registered (cause: :class:`~dynamics.errors.UnknownNameError`), or
        no ``solver`` is given for a plant without a standard configuration.
    """
    try:
        cls = dynamics.get(plant)
    except dynamics.UnknownNameError as exc:
        raise ConfigError(str(exc)) from exc
    path = standard_config(plant)
    if path is not None:
        data = load_yaml(path)
        standard_solver = (data.get("generator") or {}).get("solver")
        experiment = experiment_from_dict(data, source=str(path))
        # A continuous problem names its plant; a discrete one is its plant (maze, sudoku).
        named = experiment.problem.plant.get("name") if experiment.kind == "continuous" else experiment.problem.kind
        if named == plant and solver in (None, standard_solver):
            return experiment
    if solver is None:
        raise ConfigError(f"plant {plant!r} has no standard configuration in {CONFIG_DIR}; give a solver (--solver)")
    instance = cls()
    n = instance.state_dim
    problem = {
        "name": f"{plant}_{solver}",
        "plant": {"name": plant},
        "dt": instance.dt,
        "horizon": 50,
        "Q": 1.0,
        "R": 1.0,
        "initial_state": {"low": [-1.0] * n, "high": [1.0] * n},
        "target_state": {"low": [0.0] * n, "high": [0.0] * n},
    }
    return experiment_from_dict(
        {"problem": problem, "generator": {"solver": solver}}, source=f"<generic {plant} problem for {solver}>"
    )
