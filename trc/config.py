"""YAML configuration files and strict dataclass construction.

A configuration file has one section per stage, each parsed into a dataclass that validates
itself in ``__post_init__``::

    problem:    # trc.problem.Problem        (plant, horizon, dt, cost, sampling)
    generator:  # trc.generators.GeneratorConfig (solver, sample count, output file)
    model:      # trc.model.TRCConfig
    training:   # trc.training.TrainConfig

Unknown keys anywhere are an error (:class:`~dynamics.errors.ConfigError`), so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from pathlib import Path
from typing import Any, Mapping

import yaml

from dynamics.errors import ConfigError

__all__ = ["load_yaml", "from_dict", "to_dict", "dump_yaml"]


def load_yaml(path: str | os.PathLike) -> dict:
    """Read a YAML mapping from ``path``.

    Raises
    ------
    ConfigError
        If the file does not exist, is not valid YAML, or its top level is not a mapping.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level, got {type(data).__name__}")
    return data


def from_dict(cls, data: Mapping[str, Any] | None, where: str = ""):
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys.

    Nested dataclass fields are built recursively. Errors raised by the dataclass's own
    validation (``ValueError``/``TypeError``) are re-raised as :class:`ConfigError` naming
    the section ``where``.

    Raises
    ------
    ConfigError
        On unknown keys, a non-mapping section, or invalid values.
    """
    where = where or cls.__name__
    if data is None:
        data = {}
    if isinstance(data, cls):
        return data
    if not isinstance(data, Mapping):
        raise ConfigError(f"section {where!r} must be a mapping, got {type(data).__name__}: {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in section {where!r}; allowed keys: {sorted(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in data.items():
        hint = hints.get(key)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = from_dict(hint, value, f"{where}.{key}")
        kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"invalid section {where!r}: {exc}") from exc


def to_dict(obj) -> dict:
    """A dataclass as plain Python data (for YAML/JSON), recursing into nested dataclasses."""
    return dataclasses.asdict(obj)


def dump_yaml(data: Mapping, path: str | os.PathLike) -> None:
    """Write ``data`` as YAML atomically (temporary file, then rename)."""
    from .io import atomic_write_text

    atomic_write_text(path, yaml.safe_dump(dict(data), sort_keys=False))
