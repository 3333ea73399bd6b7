"""Bad inputs of the simulator, its rollout helpers, the QP generator and the problem config.

One table: each row is a callable, the bad input it is called with, the exception class it
must raise and a fragment of the message (which names the received value).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import dynamics
from dynamics import tasks
from dynamics.errors import ConfigError, DimensionError, NonFiniteError, UncontrollableError, UnknownNameError
from dynamics.fixed_step import zoh_rollout
from dynamics.zoh import lifted_rollout, lifted_zoh
from trc.generators import make_solver
from trc.problem import Problem

F64 = torch.float64
VDP = dynamics.make("van_der_pol", dt=0.05, dtype=F64)
DI = dynamics.make("double_integrator", dt=0.1, dtype=F64)
X = torch.zeros(2, 2, dtype=F64)
U = torch.zeros(2, 1, dtype=F64)
CONTROLS = torch.zeros(2, 3, 1, dtype=F64)
A = torch.tensor([[0.0, 1.0], [0.0, 0.0]], dtype=F64)
B = torch.tensor([[0.0], [1.0]], dtype=F64)
PHI, GAMMA = lifted_zoh(A, B, 0.1, 3)

#: The double-integrator problem of trc.problem's docstring, written out in full.
DI_PROBLEM = dict(
    name="di", plant={"name": "double_integrator", "u_min": -4.0, "u_max": 4.0}, dt=0.33, horizon=15,
    initial_state={"low": [-2.0, -2.0], "high": [2.0, 2.0]}, target_state={"low": [-2.0, -2.0], "high": [2.0, 2.0]},
    Q=[10.0, 5.0], R=[0.1], Qf_scale=20.0,
)
#: A plant whose second state x2' = -x2 no control reaches: (A, B) has rank 1.
UNCONTROLLABLE = dict(
    name="unctrb", plant={"name": "linear", "A": [[0.0, 0.0], [0.0, -1.0]], "B": [[1.0], [0.0]], "u_max": 1.0,
                          "u_min": -1.0},
    dt=0.1, horizon=10, initial_state={"low": [-1, -1], "high": [1, 1]}, target_state={"low": [0, 0], "high": [0, 0]},
)


def problem_with(**changes):
    return Problem.from_dict({**DI_PROBLEM, **changes})


def experiment_with(**changes):
    from trc.experiment import experiment_from_dict

    return experiment_from_dict({"problem": {**DI_PROBLEM, **changes}, "generator": {"solver": "qp"}})


def qp_solver(plant_changes):
    return make_solver("qp", Problem.from_dict({**UNCONTROLLABLE, "plant": {**UNCONTROLLABLE["plant"], **plant_changes}}))


BAD_DT = "dt must be a positive finite number of seconds, got"
POSITIVE_HORIZON = "problem.horizon must be a positive integer, got"

TABLE = [
    # ---------------------------------------------------------------- Plant.rollout / Plant.step: dt
    *[pytest.param(lambda dt: VDP.rollout(X, CONTROLS, dt=dt), bad, ConfigError, f"van_der_pol: {BAD_DT} {bad!r}",
                   id=f"rollout-dt-{bad!r}")
      for bad in (0.0, -0.05, math.nan, math.inf, True, 0.05j)],
    *[pytest.param(lambda dt: VDP.step(X, U, dt=dt), bad, ConfigError, f"{BAD_DT} {bad!r}", id=f"step-dt-{bad!r}")
      for bad in (0, -1e-3, math.nan, -math.inf, np.complex128(0.05))],
    pytest.param(lambda dt: DI.rollout(X, CONTROLS, dt=dt), -0.1, ConfigError, f"double_integrator: {BAD_DT} -0.1",
                 id="exact-rollout-dt"),
    pytest.param(lambda dt: DI.lifted_matrices(3, dt), math.nan, ConfigError, f"{BAD_DT} nan", id="lifted-matrices-dt"),
    pytest.param(lambda dt: dynamics.make("pendulum", dt=dt), True, ConfigError, f"{BAD_DT} True",
                 id="constructor-dt-bool"),
    # ---------------------------------------------------------------- complex states and controls
    pytest.param(lambda x0: VDP.rollout(x0, CONTROLS), X.to(torch.complex128), DimensionError,
                 "van_der_pol: x0 must be real, got complex128", id="rollout-complex-x0"),
    pytest.param(lambda c: VDP.rollout(X, c), CONTROLS.to(torch.complex64), DimensionError,
                 "controls must be real, got complex64", id="rollout-complex-controls"),
    pytest.param(lambda x: VDP.step(x, U), np.zeros((2, 2), dtype=complex), DimensionError,
                 "x must be real, got complex128", id="step-complex-numpy-x"),
    pytest.param(lambda u: DI.step(X, u), [[1 + 0j], [0j]], DimensionError, "u must be real, got complex128",
                 id="step-complex-list-u"),
    # ---------------------------------------------------------------- Plant.f: NaN and infinity
    pytest.param(lambda x: VDP.f(x, U), torch.tensor([[0.0, math.nan], [0.0, 0.0]], dtype=F64), NonFiniteError,
                 "van_der_pol: f(x, u) got NaN or infinity in x", id="f-nan-x"),
    pytest.param(lambda u: VDP.f(X, u), torch.tensor([[0.0], [-math.inf]], dtype=F64), NonFiniteError,
                 "f(x, u) got NaN or infinity in u", id="f-inf-u"),
    pytest.param(lambda u: DI.f(X[:1], u), torch.full((2, 1), math.inf, dtype=F64), NonFiniteError,
                 "got NaN or infinity in u", id="f-inf-u-broadcast"),
    # ---------------------------------------------------------------- fixed-step and exact-ZOH helpers
    pytest.param(lambda dt: zoh_rollout(VDP.f, X, CONTROLS, dt), 0.0, ConfigError, f"zoh_rollout: {BAD_DT} 0.0",
                 id="zoh-rollout-dt"),
    pytest.param(lambda n: zoh_rollout(VDP.f, X, CONTROLS, 0.1, substeps=n), 0, ConfigError,
                 "zoh_rollout: substeps must be a positive integer, got 0", id="zoh-rollout-substeps"),
    pytest.param(lambda x0: zoh_rollout(VDP.f, x0, CONTROLS, 0.1), X.to(torch.complex128), DimensionError,
                 "zoh_rollout: x0 must be real, got complex128", id="zoh-rollout-complex"),
    pytest.param(lambda dt: lifted_zoh(A, B, dt, 3), -math.inf, ConfigError, f"lifted_zoh: {BAD_DT} -inf",
                 id="lifted-zoh-dt"),
    pytest.param(lambda n: lifted_zoh(A, B, 0.1, n), True, ConfigError,
                 "lifted_zoh: horizon must be a positive integer, got True", id="lifted-zoh-horizon"),
    pytest.param(lambda a: lifted_zoh(a, B, 0.1, 3), A.to(torch.complex128), DimensionError,
                 "lifted_zoh: A must be real, got complex128", id="lifted-zoh-complex"),
    pytest.param(lambda b: lifted_zoh(A, b, 0.1, 3), B[:1], DimensionError, "expected (n, n) and (n, m)",
                 id="lifted-zoh-shapes"),
    pytest.param(lambda c: lifted_rollout(PHI, GAMMA, X, c), CONTROLS.to(torch.complex128), DimensionError,
                 "lifted_rollout: controls must be real, got complex128", id="lifted-rollout-complex"),
    # ---------------------------------------------------------------- the qp generator
    pytest.param(qp_solver, {}, UncontrollableError, "qp: plant 'linear': (A, B) is not controllable",
                 id="qp-uncontrollable"),
    pytest.param(qp_solver, {"A": [[0.0, 0.0], [0.0, 0.0]]}, UncontrollableError, "has rank 1; expected 2",
                 id="qp-uncontrollable-integrators"),
    # ---------------------------------------------------------------- the problem section
    pytest.param(lambda h: problem_with(horizon=h), True, ConfigError, f"{POSITIVE_HORIZON} True (a bool)",
                 id="problem-horizon-bool"),
    pytest.param(lambda h: experiment_with(horizon=h), True, ConfigError, f"{POSITIVE_HORIZON} True",
                 id="config-horizon-bool"),
    pytest.param(lambda h: problem_with(horizon=h), 15.0, ConfigError, f"{POSITIVE_HORIZON} 15.0",
                 id="problem-horizon-float"),
    pytest.param(lambda h: problem_with(horizon=h), 0, ConfigError, f"{POSITIVE_HORIZON} 0", id="problem-horizon-0"),
    pytest.param(lambda h: Problem(task="pendulum", horizon=h), np.bool_(True), ConfigError,
                 f"{POSITIVE_HORIZON} True (a bool)", id="task-horizon-numpy-bool"),
    pytest.param(lambda dt: problem_with(dt=dt), False, ConfigError,
                 "problem.dt must be a positive finite number of seconds, got False (a bool)", id="problem-dt-bool"),
    pytest.param(lambda dt: problem_with(dt=dt), math.inf, ConfigError, "problem.dt must be a positive finite number",
                 id="problem-dt-inf"),
    pytest.param(lambda tol: problem_with(tolerance=tol), True, ConfigError,
                 "problem.tolerance must be a positive finite number, got True (a bool)", id="problem-tolerance-bool"),
    pytest.param(lambda tol: problem_with(tolerance=tol), math.nan, ConfigError,
                 "problem.tolerance must be a positive finite number, got nan", id="problem-tolerance-nan"),
    pytest.param(lambda s: problem_with(Qf_scale=s), -1.0, ConfigError, "problem.Qf_scale must be a finite number >= 0",
                 id="problem-qf-scale"),
    pytest.param(lambda q: problem_with(Q=q), [10.0, math.nan], ConfigError, "problem.Q must be finite, got [10.0, nan]",
                 id="problem-q-nan"),
    pytest.param(lambda r: problem_with(R=r), [0.1j], ConfigError, "problem.R must be real numbers", id="problem-r-complex"),
    pytest.param(lambda o: problem_with(options=o), ["glide_slope"], ConfigError, "problem.options must be a mapping",
                 id="problem-options"),
    pytest.param(lambda n: problem_with(name=n), "", ConfigError, "problem.name must be a non-empty string",
                 id="problem-name"),
    # ---------------------------------------------------------------- problem.task
    pytest.param(lambda t: Problem.from_dict({"task": t}), "van_der_pool", ConfigError,
                 "problem.task: unknown task 'van_der_pool'; choose one of ['cartpole', 'double_integrator'",
                 id="task-unknown"),
    pytest.param(lambda p: Problem.from_dict({"task": "van_der_pol", "plant": p}), {"name": "pendulum"}, ConfigError,
                 "problem.plant.name 'pendulum' differs from the plant 'van_der_pol' of task 'van_der_pol'",
                 id="task-other-plant"),
    pytest.param(lambda d: Problem.from_dict(d), {"name": "x", "plant": {"name": "pendulum"}}, ConfigError,
                 "problem: missing key(s) ['dt', 'horizon', 'initial_state', 'target_state']", id="task-missing"),
    pytest.param(tasks.task, "nope", UnknownNameError, "unknown task 'nope'", id="tasks-unknown"),
]


@pytest.mark.parametrize("call, bad, error, fragment", TABLE)
def test_bad_input_raises_a_named_error(call, bad, error, fragment):
    with pytest.raises(error) as info:
        call(bad)
    assert fragment in str(info.value)


def test_the_table_calls_accept_good_input():
    """The callables of the table run on good input, so each row fails only for its bad value."""
    assert VDP.rollout(X, CONTROLS, dt=0.02).shape == (2, 4, 2) and VDP.step(X, U, dt=1).shape == (2, 2)
    assert DI.rollout(X, CONTROLS, dt=np.float64(0.1)).shape == (2, 4, 2)
    assert DI.step(X, [[1.0], [0.0]]).shape == (2, 2)
    assert zoh_rollout(VDP.f, X, CONTROLS, torch.tensor(0.1), substeps=np.int64(2)).shape == (4, 2, 2)
    assert lifted_rollout(PHI, GAMMA, X, CONTROLS).shape == (2, 4, 2)
    assert problem_with(horizon=np.int64(15)).to_dict()["horizon"] == 15
    assert type(problem_with(horizon=np.int64(15)).horizon) is int
    assert experiment_with(horizon=15).problem.horizon == 15
    assert Problem.from_dict({"task": "van_der_pol", "plant": {"name": "van_der_pol"}}).plant["mu"] == 1.0
    make_solver("qp", Problem.from_dict({**UNCONTROLLABLE, "plant": {**UNCONTROLLABLE["plant"], "B": [[1.0], [1.0]]}}))
