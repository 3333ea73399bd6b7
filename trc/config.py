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
import math
import numbers
import os
import typing
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import yaml

from dynamics.errors import ConfigError

from .io import atomic_write_text

__all__ = ["load_yaml", "from_dict", "to_dict", "dump_yaml", "is_int", "is_real", "check_int", "check_real",
           "check_bool", "check_choice", "MAX_SEED", "check_seed", "describe"]

#: Largest seed: seeds are stored as int64 attributes and given to torch (a signed 64-bit seed).
MAX_SEED = 2**63 - 1


# ---------------------------------------------------------------------------- value checks
def is_int(value) -> bool:
    """Whether ``value`` is an integer (a ``bool`` or NumPy bool is not)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def is_real(value) -> bool:
    """Whether ``value`` is a finite real number (a ``bool`` or NumPy bool is not)."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and math.isfinite(value)


def describe(value) -> str:
    """``repr(value)`` for error messages, noting that a bool is not a number (``True`` is an int in Python)."""
    return f"{bool(value)!r} (a bool)" if isinstance(value, (bool, np.bool_)) else repr(value)


def check_int(value, where: str, low: int | None = None, high: int | None = None) -> int:
    """``value`` as an ``int`` in ``[low, high]`` (either bound optional).

    Raises
    ------
    ConfigError
        Naming ``where``, the accepted range and the value received.
    """
    if not is_int(value) or (low is not None and value < low) or (high is not None and value > high):
        if low == 1 and high is None:
            rng = "a positive integer (an integer >= 1)"
        elif low is not None and high is not None:
            rng = f"an integer in [{low}, {high}]"
        else:
            rng = "an integer" + (f" >= {low}" if low is not None else "") + (f" <= {high}" if high is not None else "")
        raise ConfigError(f"{where} must be {rng}, got {describe(value)}")
    return int(value)


def check_seed(seed, what: str = "generator.seed") -> int:
    """A seed: an integer in ``[0, 2**63 - 1]``.

    Raises
    ------
    ConfigError
        If ``seed`` is not an integer (booleans included) or lies outside ``[0, 2**63 - 1]``.
    """
    if not is_int(seed) or not 0 <= seed <= MAX_SEED:
        raise ConfigError(f"{what} must be an integer in [0, 2**63 - 1], got {describe(seed)}")
    return int(seed)


def check_real(value, where: str, low: float = -math.inf, high: float = math.inf, *, low_open: bool = False,
               high_open: bool = False) -> float:
    """``value`` as a finite ``float`` in the interval from ``low`` to ``high`` (open or closed ends).

    Raises
    ------
    ConfigError
        Naming ``where``, the interval and the value received.
    """
    ok = is_real(value) and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        lo, hi = ("(" if low_open else "["), (")" if high_open else "]")
        raise ConfigError(f"{where} must be a finite number in {lo}{low}, {high}{hi}, got {describe(value)}")
    return float(value)


def check_bool(value, where: str) -> bool:
    """``value`` if it is ``True`` or ``False``.

    Raises
    ------
    ConfigError
        For anything else (``1``, ``"yes"``, ...).
    """
    if not isinstance(value, bool):
        raise ConfigError(f"{where} must be true or false, got {value!r}")
    return value


def check_choice(value, where: str, choices) -> object:
    """``value`` if it is one of ``choices``.

    Raises
    ------
    ConfigError
        Listing the choices.
    """
    if value not in tuple(choices):
        raise ConfigError(f"{where} must be one of {list(choices)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------- files and sections
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
    atomic_write_text(path, yaml.safe_dump(dict(data), sort_keys=False))
