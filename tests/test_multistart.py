"""Multi-start of the nonlinear generator (``initial_guess="multistart"``) on swing-ups from any angle.

References: IPOPT with exact Hessians (:class:`trc.generators.ipopt.IpoptReference`, CasADi's
own model of the pendulum) started from the same guess as the winning start; the CasADi
re-simulation of the guesses; hand-computed first torques of the energy-pumping law.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from dynamics.errors import ConfigError, DimensionError
from trc.generators import make_solver
from trc.generators.config import GeneratorConfig
from trc.generators.guesses import MAX_STARTS, energy_pumping_guesses, multistart_plan
from trc.generators.ipopt import IpoptReference
from trc.generators.nonlinear import NonlinearSolver, straight_line_states
from trc.problem import Problem

PI = math.pi

#: Hard instances: near hanging, near upright on either side (2 pi apart in the unwrapped cost),
#: at the extreme speeds.
HARD_X0 = np.array([[0.05, 1.0], [3.10, 1.0], [3.10, -1.0], [-3.10, -1.0], [1.5, -1.0], [-1.5, 1.0]])


@pytest.fixture(scope="module")
def problem() -> Problem:
    """The pendulum task from any angle (benchmarks/swing_up_labels.py): |u| <= 2, g = 10, N = 100."""
    return Problem(task="pendulum", name="pendulum_any_angle", plant={"u_max": 2.0, "g": 10.0}, horizon=100,
                   initial_state={"low": [-PI, -1.0], "high": [PI, 1.0]})


@pytest.fixture(scope="module")
def hard(problem):
    """Multi-start solutions of the hard instances and the diagnostics (start 0 is the default
    solver's straight line: see test_every_start_is_the_single_start_solve_of_its_guess)."""
    target = np.tile([PI, 0.0], (len(HARD_X0), 1))
    solver = NonlinearSolver(problem, initial_guess="multistart")
    multi = solver.solve(HARD_X0, target)
    return target, multi, solver.diagnostics


def test_multistart_solves_every_hard_instance_at_no_higher_cost(problem, hard):
    target, multi, diag = hard
    err = np.linalg.norm(multi.states[:, -1] - target, axis=1)
    assert multi.success.all(), multi.status
    assert (err <= problem.tolerance).all(), err
    first_ok, first_cost = diag["start_success"][:, 0], diag["start_costs"][:, 0]
    assert not first_ok.all(), "the default start should fail on some hard instance"
    assert (multi.costs[first_ok] <= first_cost[first_ok] * (1 + 1e-12)).all()
    # where the default start failed, a later start won
    assert (diag["start"][~first_ok] > 0).all()
    np.testing.assert_array_equal(diag["beats_first"], ~first_ok | (multi.costs < first_cost * (1 - 1e-8)))
    # the returned cost is the smallest successful start's
    np.testing.assert_allclose(multi.costs, np.nanmin(diag["start_costs"], axis=1), rtol=1e-12)


def test_multistart_cost_matches_ipopt_from_the_winning_guess(problem, hard):
    """IPOPT (exact Hessian, CasADi model) from the guess of the winning start reaches the same optimum."""
    target, multi, diag = hard
    plan = multistart_plan(len(diag["start_names"]))
    solver = NonlinearSolver(problem)
    ref = IpoptReference(problem)
    N = problem.horizon
    for i, s in enumerate(diag["start"]):
        if s == 0:
            Xg, Ug = straight_line_states(HARD_X0[i:i + 1], target[i:i + 1], N)[0], np.zeros((N, 1))
        else:
            X, U = energy_pumping_guesses(solver.plant, HARD_X0[i:i + 1], target[i:i + 1], N, [plan[s][1]],
                                          [plan[s][2]])
            Xg, Ug = X[0, 0], U[0, 0]
        r = ref.solve(HARD_X0[i], target[i], Xg, Ug)
        assert r.success, (i, r.status)
        assert multi.costs[i] == pytest.approx(r.cost, rel=1e-6), (i, diag["start_names"][s])


def test_every_start_is_the_single_start_solve_of_its_guess(problem):
    """The rows of the stacked batch are bookkept right: each start's cost equals a separate solve
    of the default solver (same defect tolerance) from that start's guess."""
    x0 = HARD_X0[[1, 2, 4]]
    target = np.tile([PI, 0.0], (3, 1))
    multi = NonlinearSolver(problem, initial_guess="multistart", starts=3)
    multi.solve(x0, target)
    single = NonlinearSolver(problem, feas_tol=1e-14)
    X, U = energy_pumping_guesses(single.plant, x0, target, problem.horizon, [1, -1], [1.0, 1.0])
    guesses = [(straight_line_states(x0, target, problem.horizon), np.zeros((3, problem.horizon, 1))),
               (X[0], U[0]), (X[1], U[1])]
    for s, (Xg, Ug) in enumerate(guesses):
        sol = single.solve(x0, target, Xg, Ug)
        np.testing.assert_array_equal(sol.success, multi.diagnostics["start_success"][:, s])
        np.testing.assert_allclose(sol.costs[sol.success], multi.diagnostics["start_costs"][sol.success, s],
                                   rtol=1e-12)
        np.testing.assert_array_equal(sol.iterations, multi.diagnostics["start_iterations"][:, s])


def test_energy_pumping_guesses_follow_the_plant_and_push_the_given_way(problem):
    """The guesses are rollouts of their own controls (checked against CasADi's model), within the
    bounds, and at rest the first torque is ``d alpha u_max`` (hand-computed: 2, -2, 1.2, -1.2)."""
    solver = NonlinearSolver(problem)
    x0 = np.array([[0.0, 0.0], [-2.0, 0.7]])
    target = np.tile([PI, 0.0], (2, 1))
    X, U = energy_pumping_guesses(solver.plant, x0, target, problem.horizon, [1, -1, 1, -1], [1.0, 1.0, 0.6, 0.6])
    assert X.shape == (4, 2, problem.horizon + 1, 2) and U.shape == (4, 2, problem.horizon, 1)
    np.testing.assert_allclose(U[:, 0, 0, 0], [2.0, -2.0, 1.2, -1.2], rtol=1e-12)
    assert np.abs(U).max() <= 2.0
    ref = IpoptReference(problem)
    for s in range(4):
        for i in range(2):
            np.testing.assert_allclose(X[s, i], ref.simulate(x0[i], U[s, i]), atol=1e-9)
    # full torque from rest reaches the upright target within the horizon (energy pumping works)
    assert abs(X[0, 0, -1, 0] - PI) < 0.2 and abs(X[1, 0, -1, 0] - PI) < 0.2


def test_no_successful_start_is_reported_as_a_failure(problem):
    """With one SQP iteration and no rescue nothing converges: the first start's failure is returned."""
    x0 = HARD_X0[:2]
    solver = NonlinearSolver(problem, initial_guess="multistart", max_iter=1, rescue_iter=0)
    sol = solver.solve(x0, np.tile([PI, 0.0], (2, 1)))
    assert not sol.success.any()
    assert all("not converged" in s or "QP" in s or "line search" in s for s in sol.status), sol.status
    np.testing.assert_array_equal(solver.diagnostics["start"], [0, 0])
    assert not solver.diagnostics["beats_first"].any()
    assert np.isnan(solver.diagnostics["start_costs"]).all()


@pytest.mark.parametrize("options, match", [
    ({"initial_guess": "multistart", "starts": 0}, "starts"),
    ({"initial_guess": "multistart", "starts": MAX_STARTS + 1}, "starts"),
    ({"initial_guess": "multistart", "starts": True}, "starts"),
    ({"initial_guess": "multistart", "starts": 2.0}, "starts"),
    ({"initial_guess": "interpolate", "starts": 3}, "starts"),
    ({"initial_guess": "neighbour", "rescue_iter": 10}, "rescue_iter"),
    ({"initial_guess": "multistart", "rescue_iter": -1}, "rescue_iter"),
    ({"initial_guess": "multi-start"}, "initial_guess"),
    ({"initial_guess": "multistart", "feas_tol": 0.0}, "feas_tol"),
])
def test_bad_multistart_options_raise_config_error(problem, options, match):
    with pytest.raises(ConfigError, match=match):
        make_solver("nonlinear", problem, **options)
    generator = GeneratorConfig(solver="nonlinear", options=options)
    with pytest.raises(ConfigError, match=match):
        generator.make_solver(problem)


def test_multistart_needs_guesses_for_the_plant():
    vdp = Problem(task="van_der_pol", horizon=10)
    with pytest.raises(ConfigError, match="van_der_pol"):
        NonlinearSolver(vdp, initial_guess="multistart", starts=3)
    # one start (the straight line) needs no plant-specific guess
    sol = NonlinearSolver(vdp, initial_guess="multistart", starts=1).solve(*vdp.sample(2, seed=0))
    assert sol.success.all()


def test_guess_arguments_are_checked(problem):
    plant = NonlinearSolver(problem).plant
    x0 = np.zeros((1, 2))
    with pytest.raises(ConfigError, match="directions"):
        energy_pumping_guesses(plant, x0, x0, 5, [0], [1.0])
    with pytest.raises(ConfigError, match="fractions"):
        energy_pumping_guesses(plant, x0, x0, 5, [1], [1.5])
    with pytest.raises(DimensionError):
        energy_pumping_guesses(plant, x0, x0, 5, [1, -1], [1.0])
    with pytest.raises(DimensionError):
        energy_pumping_guesses(plant, np.zeros((1, 3)), np.zeros((1, 3)), 5, [1], [1.0])
    vdp = Problem(task="van_der_pol").make_plant(torch.float64)
    with pytest.raises(ConfigError, match="pendulum"):
        energy_pumping_guesses(vdp, x0, x0, 5, [1], [1.0])


@pytest.mark.slow
def test_multistart_solves_random_instances(problem):
    """On 40 random instances multi-start solves at least 39 (the benchmark's goal is 99 %)."""
    x0, target = problem.sample(40, seed=11)
    sol = NonlinearSolver(problem, initial_guess="multistart").solve(x0, target)
    err = np.linalg.norm(sol.states[:, -1] - target, axis=1)
    assert (sol.success & (err <= problem.tolerance)).sum() >= 39


def test_benchmark_solved_mask_and_cost_excess(monkeypatch):
    """The benchmark's bookkeeping on hand-made numbers."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parent.parent / "benchmarks"))
    bench = importlib.import_module("swing_up_labels")
    sys.modules.pop("swing_up_labels")  # benchmarks are not importable outside their tests
    final = np.array([[PI, 0.0], [PI + 0.3, 0.0], [PI, 0.1], [np.nan, 0.0]])
    target = np.tile([PI, 0.0], (4, 1))
    np.testing.assert_array_equal(bench.solved_mask([True, True, False, True], final, target, 0.2),
                                  [True, False, False, False])
    J = np.array([1.0, 2.0 * (1 + 2e-6), 3.0, 5.0])
    J_ref = np.array([1.0, 2.0, 3.5, 1.0])
    count, worst = bench.cost_excess(J, J_ref, [True, True, True, False])
    assert count == 1 and worst == pytest.approx(2e-6)
    count, worst = bench.cost_excess(J, J_ref, [False] * 4)
    assert count == 0 and math.isnan(worst)
    problem = bench.swing_up_problem()
    assert problem.horizon == 100 and problem.dt == 0.05 and problem.tolerance == 0.2
    np.testing.assert_allclose(problem.target_state.low, [PI, 0.0])
