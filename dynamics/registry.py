"""Registry of plants: ``register`` a class under a name, ``make`` one by name.

Examples
--------
>>> import dynamics
>>> plant = dynamics.make("van_der_pol", mu=2.0)
>>> "double_integrator" in dynamics.names()
True
"""

from __future__ import annotations

from typing import Callable, TypeVar

from .errors import UnknownNameError

__all__ = ["register", "make", "names", "get"]

_PLANTS: dict[str, type] = {}

T = TypeVar("T", bound=type)


def register(name: str) -> Callable[[T], T]:
    """Class decorator that registers a :class:`~dynamics.Plant` subclass under ``name``.

    Raises
    ------
    ValueError
        If ``name`` is already registered to another class.
    """

    def decorator(cls: T) -> T:
        if name in _PLANTS and _PLANTS[name] is not cls:
            raise ValueError(f"plant name {name!r} is already registered to {_PLANTS[name].__name__}")
        _PLANTS[name] = cls
        cls.name = name
        return cls

    return decorator


def names() -> list[str]:
    """Sorted names of all registered plants."""
    return sorted(_PLANTS)


def get(name: str) -> type:
    """The plant class registered under ``name``.

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered; the message lists the registered names.
    """
    try:
        return _PLANTS[name]
    except KeyError:
        raise UnknownNameError(f"unknown plant {name!r}; choose one of {names()}") from None


def make(name: str, dtype=None, **params):
    """Build the plant registered under ``name`` with its physical parameters ``params``.

    Parameters
    ----------
    name : str
        A registered plant name, see :func:`names`.
    dtype : torch.dtype, optional
        Floating dtype of the plant's buffers (parameters, bounds); default
        ``torch.get_default_dtype()``. The plant is built in this dtype, so float64 parameters
        are exact rather than float32 values promoted.
    **params
        Keyword arguments of the plant's constructor (physical parameters, ``dt``, ``method``).

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered.
    TypeError
        If a parameter is not accepted by the plant.
    """
    cls = get(name)
    if dtype is None:
        return cls(**params)
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return cls(**params).to(dtype)
    finally:
        torch.set_default_dtype(previous)
