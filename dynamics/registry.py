"""Registry of plants: ``register`` a class under a name, ``make`` one by name.

Examples
--------
>>> import dynamics
>>> plant = dynamics.make("van_der_pol", mu=2.0)
>>> "double_integrator" in dynamics.names()
True
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

import torch

from .errors import UnknownNameError

__all__ = ["Registry", "unknown_name", "register", "make", "names", "get"]

T = TypeVar("T")


def unknown_name(what: str, name, choices) -> UnknownNameError:
    """The error for an unregistered ``name``: the close names and all the choices.

    Parameters
    ----------
    what : str
        What was looked up (``"plant"``, ``"problem kind"``).
    name : object
        The name given.
    choices : iterable of str
        The registered names.
    """
    choices = sorted(str(c) for c in choices)
    close = difflib.get_close_matches(str(name), choices, n=3)
    hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
    return UnknownNameError(f"unknown {what} {name!r}{hint}; choose one of {choices}")


class Registry(Generic[T]):
    """Names to objects of one kind (plants, solvers, problem kinds), as ``gymnasium.register``/``make``.

    Parameters
    ----------
    what : str
        What the registry holds, for messages (``"plant"``, ``"solver"``).

    Examples
    --------
    >>> solvers = Registry("solver")
    >>> @solvers.register("lqr")
    ... class LQR: ...
    >>> solvers.get("lqr").name
    'lqr'
    """

    def __init__(self, what: str):
        self.what = what
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T) -> T:
        """Register ``item`` under ``name``; returns it.

        Raises
        ------
        ValueError
            If ``name`` is already registered to another object.
        """
        if name in self._items and self._items[name] is not item:
            raise ValueError(f"{self.what} name {name!r} is already registered to {self._items[name]!r}")
        self._items[name] = item
        return item

    def register(self, name: str) -> Callable[[T], T]:
        """Class decorator: register the class under ``name`` and set its ``name`` attribute."""

        def decorator(cls: T) -> T:
            self.add(name, cls)
            cls.name = name
            return cls

        return decorator

    def get(self, name: str) -> T:
        """The object registered under ``name``.

        Raises
        ------
        UnknownNameError
            If ``name`` is not registered; the message lists the close names and all names.
        """
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise unknown_name(self.what, name, self._items) from None

    def names(self) -> list[str]:
        """Sorted registered names."""
        return sorted(self._items)

    def values(self) -> list[T]:
        """The registered objects, in registration order."""
        return list(self._items.values())

    def __contains__(self, name) -> bool:
        return name in self._items


PLANTS: Registry[type] = Registry("plant")


def register(name: str) -> Callable[[type], type]:
    """Class decorator that registers a :class:`~dynamics.Plant` subclass under ``name``.

    Raises
    ------
    ValueError
        If ``name`` is already registered to another class.
    """
    return PLANTS.register(name)


def names() -> list[str]:
    """Sorted names of all registered plants."""
    return PLANTS.names()


def get(name: str) -> type:
    """The plant class registered under ``name``.

    Raises
    ------
    UnknownNameError
        If ``name`` is not registered; the message lists the registered names.
    """
    return PLANTS.get(name)


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
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        return cls(**params).to(dtype)
    finally:
        torch.set_default_dtype(previous)
