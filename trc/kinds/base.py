"""The interface of a problem kind and the registry of kinds.

A *problem kind* is a family of problems with its own configuration, generator, policy,
trainer and evaluator: continuous optimal control, discrete puzzles, the LIBERO arm. The
commands ``trc-generate``, ``trc-train``, ``trc-evaluate`` and :func:`trc.load` are written once
and look the kind up here: by the ``kind`` key of a configuration's ``problem`` section, or by
the ``kind`` recorded in a model file. As in gymnasium's ``register``/``make`` and LeRobot's
policy registry, a new kind is one subclass of :class:`ProblemKind` and one :func:`register`.
"""

from __future__ import annotations

import abc
import argparse
import os
from typing import Any, ClassVar, Mapping

import torch
from torch import nn

from dynamics.errors import CheckpointError, ConfigError
from dynamics.registry import Registry, unknown_name

from ..model_file import read_model_file, save_model_file

__all__ = ["ProblemKind", "register", "get", "names", "for_problem_kind", "for_model", "load", "save",
           "load_policy_weights"]


class ProblemKind(abc.ABC):
    """One family of problems, with everything the commands need to run it.

    Subclasses set the class attributes and implement the methods. Every method gets the
    parsed :class:`~trc.experiment.Experiment` or the model, and the command's parsed
    arguments (an :class:`argparse.Namespace`); options a kind does not support are refused
    by :meth:`check_options` before any work.

    Attributes
    ----------
    name : str
        Registry name (``continuous``, ``discrete``, ``libero``).
    problem_kinds : tuple of str
        Values of ``problem.kind`` in a configuration that belong to this kind (``None``:
        the key is absent).
    model_classes : tuple of str
        Class names of this kind's policies, as recorded in model files.
    options : dict of str to frozenset
        Per command (``generate``, ``train``, ``evaluate``), the optional command-line options
        (argparse destinations) this kind uses.
    """

    name: ClassVar[str]
    problem_kinds: ClassVar[tuple] = ()
    model_classes: ClassVar[tuple] = ()
    options: ClassVar[dict] = {}

    # ------------------------------------------------------------------ configuration
    @abc.abstractmethod
    def parse_problem(self, section: Mapping[str, Any]):
        """The problem dataclass of a ``problem`` section.

        Raises
        ------
        ConfigError
            On unknown keys or invalid values.
        """

    def problem_dict(self, problem) -> dict:
        """The problem as plain data (stored in data sets, run folders and model files)."""
        return problem.to_dict()

    @abc.abstractmethod
    def parse_generator(self, section: Mapping[str, Any] | None, problem):
        """The generator configuration of a ``generator`` section (None: the kind's default or none)."""

    @abc.abstractmethod
    def dataset_path(self, experiment):
        """Where the configuration's data set lives (a file or a folder)."""

    # ------------------------------------------------------------------ commands
    def check_options(self, command: str, args: argparse.Namespace, defaults: Mapping[str, Any]) -> None:
        """Refuse command-line options this kind does not use.

        Parameters
        ----------
        command : {"generate", "train", "evaluate"}
        args : argparse.Namespace
        defaults : mapping
            The parser's default of every optional option; an option left at its default was
            not given.

        Raises
        ------
        ConfigError
            Naming the options given that this kind does not use.
        """
        allowed = self.options.get(command, frozenset())
        given = [k for k, default in defaults.items() if getattr(args, k, default) != default and k not in allowed]
        if given:
            flags = ", ".join("--" + k.replace("_", "-") for k in sorted(given))
            usable = ", ".join("--" + k.replace("_", "-") for k in sorted(allowed)) or "none"
            raise ConfigError(f"{flags}: not used for {self.name} problems (the options of `{command}` for them: "
                              f"{usable})")

    @abc.abstractmethod
    def generate(self, experiment, args: argparse.Namespace) -> str:
        """Generate the configuration's data set; returns the summary to print."""

    @abc.abstractmethod
    def train(self, experiment, args: argparse.Namespace) -> str:
        """Train (and evaluate) the configuration's policy; returns the summary to print."""

    @abc.abstractmethod
    def evaluate(self, model: nn.Module, checkpoint: str, args: argparse.Namespace) -> str:
        """Evaluate a loaded policy and write its report; returns the summary to print."""

    # ------------------------------------------------------------------ model files
    @abc.abstractmethod
    def model_fields(self, model: nn.Module) -> dict:
        """``model_class``, ``model_config`` and ``problem`` of a policy, for its model file."""

    @abc.abstractmethod
    def build_model(self, payload: Mapping[str, Any], source: str) -> nn.Module:
        """The policy of a model-file payload (:func:`trc.model_file.read_model_file`), weights loaded.

        Raises
        ------
        CheckpointError
            If the configuration is invalid or the weights do not fit.
        """


_KINDS: Registry[ProblemKind] = Registry("problem kind")


def register(kind: ProblemKind) -> ProblemKind:
    """Register a problem kind (an instance of a :class:`ProblemKind` subclass); returns it.

    Raises
    ------
    ConfigError
        If the name, a ``problem.kind`` value or a model class is already taken.
    """
    if kind.name in _KINDS:
        raise ConfigError(f"problem kind {kind.name!r} is already registered")
    for other in _KINDS.values():
        taken = set(other.problem_kinds) & set(kind.problem_kinds) or set(other.model_classes) & set(kind.model_classes)
        if taken:
            raise ConfigError(f"problem kind {kind.name!r} claims {sorted(taken, key=str)}, already {other.name!r}'s")
    return _KINDS.add(kind.name, kind)


def get(name: str) -> ProblemKind:
    """The registered kind ``name``.

    Raises
    ------
    UnknownNameError
        Listing the registered kinds.
    """
    return _KINDS.get(name)


def names() -> list[str]:
    """The registered kinds' names, sorted."""
    return _KINDS.names()


def for_problem_kind(value) -> ProblemKind:
    """The kind whose configurations have ``problem.kind: value`` (``None``: no key).

    Raises
    ------
    UnknownNameError
        Listing the known ``problem.kind`` values.
    """
    for kind in _KINDS.values():
        if value in kind.problem_kinds:
            return kind
    raise unknown_name("problem.kind", value, [v for k in _KINDS.values() for v in k.problem_kinds if v is not None])


def for_model(model: nn.Module) -> ProblemKind:
    """The kind of a policy object, by its class name.

    Raises
    ------
    UnknownNameError
        If no kind owns the class.
    """
    cls = type(model).__name__
    for kind in _KINDS.values():
        if cls in kind.model_classes:
            return kind
    raise unknown_name("policy class", cls, [c for k in _KINDS.values() for c in k.model_classes])


def save(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> None:
    """Write a policy of any kind as a model file (:mod:`trc.model_file`), atomically.

    Parameters
    ----------
    model : torch.nn.Module
        A policy of a registered kind, built for its problem.
    path : path-like
        Output file, conventionally ``<run>/model.pt``.
    metadata : mapping, optional
        Plain data stored alongside (training summary, data set, ...).

    Raises
    ------
    UnknownNameError
        If no kind owns the policy's class.
    ConfigError
        If the policy was not built for a problem.
    """
    kind = for_model(model)
    save_model_file(path, kind=kind.name, state_dict=model.state_dict(), metadata=metadata, **kind.model_fields(model))


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load the policy of a model file, of any problem kind, ready for inference.

    Parameters
    ----------
    path : str or PathLike
        A model file (``model.pt``) written by ``python -m trc.train`` or :func:`save`.
    map_location : str or torch.device
        Device of the returned policy (default CPU).

    Returns
    -------
    torch.nn.Module
        The policy in eval mode, with ``problem`` (the problem it was trained for) and
        ``metadata`` (training summary, data set path, ...). A continuous policy
        (:class:`~trc.models.TinyRecursiveControl`) maps ``(x0, target)``, each
        ``(batch, state_dim)``, to controls ``(batch, horizon, control_dim)``.

    Raises
    ------
    CheckpointError
        If the file is missing, truncated or corrupt (SHA-256 of the weights), not a TRC model
        file, or its weights do not fit the model it describes.
    UnknownNameError
        If its problem kind is not registered.
    """
    payload = read_model_file(path)
    model = get(payload["kind"]).build_model(payload, f"model file {str(path)!r}")
    model.metadata = dict(payload["metadata"])
    return model.to(map_location).eval()


def load_policy_weights(policy: nn.Module, payload: Mapping[str, Any], source: str) -> nn.Module:
    """Load a model file's weights into the policy its configuration built; returns ``policy``.

    Raises
    ------
    CheckpointError
        If the configuration builds another class than the file records, or the weights do not fit.
    """
    if type(policy).__name__ != payload["model_class"]:
        raise CheckpointError(f"{source}: its configuration builds a {type(policy).__name__}, the file records "
                              f"a {payload['model_class']}")
    try:
        policy.load_state_dict(payload["state_dict"])
    except RuntimeError as exc:
        raise CheckpointError(f"{source}: the weights do not fit the policy it describes: {exc}") from exc
    return policy
