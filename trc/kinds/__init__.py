"""The registry of problem kinds: continuous control, discrete puzzles, the LIBERO arm.

>>> import trc.kinds
>>> trc.kinds.names()
['continuous', 'discrete', 'libero', 'recap', 'recap_libero']
>>> trc.kinds.for_problem_kind("maze").name
'discrete'

Each kind (:class:`ProblemKind`) holds, in one module, its problem and generator
configuration and the generator, policy, trainer and evaluator behind one interface;
``trc-generate``, ``trc-train``, ``trc-evaluate``, :func:`trc.load` and :func:`trc.save` look
the kind up here. See ``ARCHITECTURE.md`` for adding a kind.
"""

from .base import ProblemKind, for_model, for_problem_kind, get, load, names, register, save
from .continuous import ContinuousKind
from .discrete import DiscreteKind
from .libero import LiberoKind
from .recap import RecapKind
from .recap_libero import RecapLiberoKind

__all__ = ["ProblemKind", "register", "get", "names", "for_problem_kind", "for_model", "load", "save",
           "ContinuousKind", "DiscreteKind", "LiberoKind",
           "RecapKind", "RecapLiberoKind"]
