"""The command-line layer shared by ``trc-generate``, ``trc-train``, ``trc-evaluate`` and ``trc-export``.

Every command is an :class:`argparse.ArgumentParser` plus a function of the parsed arguments;
:func:`run` parses, sets up logging and torch's threads, calls the function and maps what it
raises to one exit status, the same for every command:

======  ==============================================================================
status  meaning
======  ==============================================================================
0       success
1       run-time failure: a solver, a data set, a checkpoint, a file (any other
        :class:`~dynamics.errors.TRCError`)
2       bad usage or configuration (:class:`~dynamics.errors.ConfigError`,
        :class:`~dynamics.errors.UnknownNameError`, :class:`~dynamics.errors.DimensionError`,
        or argparse's own usage errors)
130     interrupted (Ctrl-C); finished work is kept and a rerun resumes
======  ==============================================================================

The message of a failure is printed as ``<prog>: error: <message>`` on stderr, as argparse
does for usage errors; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, Sequence

import torch

from dynamics.errors import ConfigError, DimensionError, TRCError, UnknownNameError

from .backends import BACKENDS, CONNECT_TIMEOUT
from .config import MAX_SEED

__all__ = [
    "EXIT_OK",
    "EXIT_FAILURE",
    "EXIT_USAGE",
    "EXIT_INTERRUPTED",
    "exit_code",
    "run",
    "add_seed",
    "add_quiet",
    "add_threads",
    "positive_int",
    "seed_int",
    "option_defaults",
]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

_USAGE_ERRORS = (ConfigError, UnknownNameError, DimensionError)


def exit_code(exc: BaseException) -> int:
    """The exit status of a command that raised ``exc`` (see the module table).

    Raises
    ------
    TypeError
        If ``exc`` is not one the commands handle (a bug, not a user error): the caller
        lets it propagate with its traceback.
    """
    if isinstance(exc, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(exc, _USAGE_ERRORS):
        return EXIT_USAGE
    if isinstance(exc, TRCError):
        return EXIT_FAILURE
    raise TypeError(f"no exit status for {type(exc).__name__}")


def positive_int(text: str) -> int:
    """``argparse`` type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def seed_int(text: str) -> int:
    """``argparse`` type: a seed, an integer in ``[0, 2**63 - 1]``."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer seed, got {text!r}") from None
    if not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"a seed is an integer in [0, 2**63 - 1], got {value}")
    return value


def add_seed(parser: argparse.ArgumentParser, default: int | None = None, help: str | None = None) -> None:
    """Add ``--seed S`` (an integer in ``[0, 2**63 - 1]``)."""
    parser.add_argument("--seed", type=seed_int, default=default, metavar="S",
                        help=help or "seed of every random generator: the same seed gives the same arrays")


def add_quiet(parser: argparse.ArgumentParser) -> None:
    """Add ``--quiet`` (no progress bars or log messages, only the summary)."""
    parser.add_argument("--quiet", action="store_true", help="no progress bars or log messages, only the summary")


def add_threads(parser: argparse.ArgumentParser, default: int | None = None) -> None:
    """Add ``--threads T`` (torch's intra-op threads; applied by :func:`run`)."""
    parser.add_argument("--threads", type=positive_int, default=default, metavar="T",
                        help="torch intra-op threads (default: PyTorch's choice)" if default is None
                        else f"torch intra-op threads (default {default})")


def add_backend(parser, what: str = "one task per chunk or episode") -> None:
    """Add ``--backend local|ray`` and ``--address HOST:PORT`` (:mod:`trc.backends`); ``what`` says
    what one Ray task is. The command checks them with :func:`trc.backends.check_backend` before any work."""
    parser.add_argument("--backend", choices=BACKENDS, default="local",
                        help="where the work runs: worker processes on this machine (local, the default) or a Ray "
                        f"cluster (ray: {what}; needs the 'ray' extra)")
    parser.add_argument("--address", metavar="HOST:PORT",
                        help="with --backend ray: the Ray cluster to join (the head's address from `ray start --head`, "
                        f"or 'auto'); refused if not reachable within {CONNECT_TIMEOUT:g} s. Default: a private Ray "
                        "on this machine")


def option_defaults(parser: argparse.ArgumentParser, exclude: Sequence[str] = ()) -> dict:
    """The default of every optional option of ``parser`` (by destination), but ``help`` and ``exclude``.

    Used with :meth:`trc.kinds.ProblemKind.check_options`: an option whose value differs from
    its default was given on the command line.
    """
    return {a.dest: a.default for a in parser._actions
            if a.option_strings and a.dest not in ("help", *exclude)}


def run(parser: argparse.ArgumentParser, command: Callable[[argparse.Namespace], int | None],
        argv: Sequence[str] | None = None, *, interrupted: str | None = None) -> int:
    """Parse ``argv``, run ``command(args)`` and return the exit status.

    Parameters
    ----------
    parser : argparse.ArgumentParser
        The command's parser; its ``prog`` prefixes error messages.
    command : callable
        Takes the parsed arguments; returns an exit status or None (success).
    argv : sequence of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).
    interrupted : str, optional
        Printed on stderr after a Ctrl-C (e.g. how to resume).

    Returns
    -------
    int
        The exit status of the module table. Usage errors found by argparse exit 2 through
        ``SystemExit`` as usual.
    """
    args = parser.parse_args(None if argv is None else list(argv))
    quiet = bool(getattr(args, "quiet", False))
    logging.basicConfig(level=logging.WARNING if quiet else logging.INFO, format="%(name)s: %(message)s")
    if getattr(args, "threads", None) is not None:
        torch.set_num_threads(args.threads)
    try:
        status = command(args)
    except KeyboardInterrupt as exc:
        print(f"\n{parser.prog}: interrupted" + (f"; {interrupted}" if interrupted else ""), file=sys.stderr)
        return exit_code(exc)
    except TRCError as exc:
        print(f"{parser.prog}: error: {exc}", file=sys.stderr)
        return exit_code(exc)
    return EXIT_OK if status is None else int(status)
