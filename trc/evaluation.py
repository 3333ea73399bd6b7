"""Metrics of a trained TRC model against the optimal solutions of a data split.

Every metric is computed from the TRC controls rolled out through the problem's plant in
float64 (the same simulator, cost, ``dt`` and horizon as the optimal solutions):

``success_rate``
    Fraction of samples with ``||x_N - x*||_2 < problem.tolerance`` (:func:`terminal_error`;
    for the rocket ``||r_N - r*|| + ||v_N - v*||``, the convention of its solver) that violate
    no constraint (``constraint_violation_rate`` below): a landing that cuts the glide slope is
    not a success.
``terminal_error_mean``, ``terminal_error_median``, ``terminal_error_p95``
    Statistics of ``||x_N - x*||_2`` (state units).
``cost_gap_median``, ``cost_gap_p95``, ``cost_gap_mean``
    Statistics of ``J_TRC / J_opt - 1`` with both costs from :meth:`trc.Problem.cost_of`;
    ``cost_gap_median_successful`` over the successful samples only.
``constraint_violation_rate``
    Fraction of samples with a control outside ``[u_min, u_max]`` or a rolled-out state
    outside ``[x_min, x_max]`` (relative tolerance ``1e-6``), or violating a problem's own
    constraints (rocket: thrust magnitude in ``[rho1, rho2]``, glide slope; see
    :func:`problem_violations`).
``gap_per_cycle``, ``success_per_cycle``
    Median gap and success rate of the controls after every refinement cycle (entry 0 is the
    initial decode), from ``return_all_iterations=True``.
``latency_ms_batch1``
    Median wall time of one batch-1 forward pass with the model's default plant feedback
    (``torch.inference_mode``, after warm-up); ``latency_ms_batch1_no_feedback`` with
    ``plant=False``.
``throughput_per_s_batch1024``
    Problems per second at batch 1024 (``throughput_batch``).
``solver_ms_per_problem``
    Mean wall time per problem of the solver that generated the data (``solve_time``);
    ``speedup_vs_solver`` = ``solver_ms_per_problem / latency_ms_batch1``.
``num_parameters``
    Trainable parameters of the model.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from dynamics.errors import DimensionError

__all__ = ["REPORT_KEYS", "SplitData", "split_data", "Evaluation", "terminal_error", "target_dims",
           "problem_violations", "constraint_violations", "rollout_metrics", "call_times", "measure_latency",
           "evaluate_model"]

#: Keys every evaluation report holds.
REPORT_KEYS = (
    "success_rate",
    "terminal_error_mean",
    "cost_gap_median",
    "cost_gap_p95",
    "constraint_violation_rate",
    "gap_per_cycle",
    "latency_ms_batch1",
    "latency_ms_batch1_no_feedback",
    "throughput_per_s_batch1024",
    "solver_ms_per_problem",
    "speedup_vs_solver",
    "num_parameters",
)

_REL_TOL = 1e-6


@dataclass
class SplitData:
    """The arrays of one data split that evaluation needs (all float64 tensors on CPU).

    Attributes
    ----------
    initial_states, target_states : Tensor, shape ``(M, n)``
    states : Tensor, shape ``(M, N + 1, n)``
        Optimal trajectories.
    controls : Tensor, shape ``(M, N, m)``
        Optimal controls.
    solve_time : Tensor, shape ``(M,)``, optional
        Seconds the solver spent per problem.
    """

    initial_states: torch.Tensor
    target_states: torch.Tensor
    states: torch.Tensor
    controls: torch.Tensor
    solve_time: torch.Tensor | None = None

    def __post_init__(self):
        M = self.initial_states.shape[0]
        shapes = {k: tuple(getattr(self, k).shape) for k in ("initial_states", "target_states", "states", "controls")}
        if any(s[0] != M for s in shapes.values()) or shapes["states"][1] != shapes["controls"][1] + 1:
            raise DimensionError(f"split arrays disagree on sample count or horizon: {shapes}")

    def __len__(self) -> int:
        return self.initial_states.shape[0]

    def subset(self, index) -> "SplitData":
        """The samples at ``index`` (a slice, index tensor or list)."""
        st = None if self.solve_time is None else self.solve_time[index]
        return SplitData(self.initial_states[index], self.target_states[index], self.states[index],
                         self.controls[index], st)


def split_data(data, name: str) -> SplitData:
    """The split ``name`` of a loaded data set (:func:`trc.data.load_dataset`) as float64 tensors.

    Plans of fewer steps than the horizon (shrinking-horizon labels, ``steps_to_go < N``) are left
    out: the evaluation compares ``N``-step plans.

    Raises
    ------
    DimensionError
        If the split is unknown.
    """
    raw = data.raw
    if name not in raw.splits:
        raise DimensionError(f"data set has no split {name!r}; it has {sorted(raw.splits)}")
    idx = raw.splits[name]
    if getattr(raw, "steps_to_go", None) is not None:
        idx = idx[raw.steps_to_go[idx] == raw.problem.horizon]

    def t(array):
        return torch.as_tensor(getattr(raw, array)[idx], dtype=torch.float64)

    return SplitData(t("initial_states"), t("target_states"), t("states"), t("controls"), t("solve_time"))


@dataclass
class Evaluation:
    """Result of :func:`evaluate_model`.

    Attributes
    ----------
    metrics : dict
        JSON-serialisable metrics (see the module documentation and :data:`REPORT_KEYS`).
    samples : dict of str to ndarray
        Arrays for figures: ``x0``, ``target`` ``(S, n)``, ``trc_states`` ``(S, N + 1, n)``,
        ``trc_controls`` ``(S, N, m)``, ``opt_states``, ``opt_controls`` for the first ``S``
        samples, and the per-sample ``gap`` ``(M,)`` and ``terminal_error`` ``(M,)``.
    """

    metrics: dict
    samples: dict = field(default_factory=dict)


def _quantile(x: torch.Tensor, q: float) -> float:
    x = x[~torch.isnan(x)] if x.numel() else x  # +inf (a diverged rollout) counts as the worst value
    return float(torch.quantile(x, q)) if x.numel() else math.nan


def target_dims(problem) -> list[int] | None:
    """State dimensions the target constrains: ``None`` for all; the rocket's position and
    velocity (its target mass is ignored, as in the ``rocket`` solver)."""
    if problem.plant.get("name") == "rocket":
        return [0, 1, 2, 3, 4, 5]
    return None


def terminal_error(problem, x_N: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Distance of final states ``x_N`` ``(B, n)`` to the targets ``(B, n)``, shape ``(B,)``.

    ``||x_N - x*||_2`` in state units, except for the rocket: ``||r_N - r*|| + ||v_N - v*||``
    (metres plus metres per second), the landing check of the ``rocket`` solver
    (:mod:`trc.generators.rocket`). Success is ``terminal_error < problem.tolerance`` with no
    constraint violated (:func:`rollout_metrics`).
    """
    d = x_N - target
    if problem.plant.get("name") == "rocket":
        return torch.linalg.vector_norm(d[:, 0:3], dim=-1) + torch.linalg.vector_norm(d[:, 3:6], dim=-1)
    return torch.linalg.vector_norm(d, dim=-1)


def problem_violations(problem, plant, states: torch.Tensor, controls: torch.Tensor, target: torch.Tensor,
                       thrust_rtol: float = 1e-3, glide_tol: float = 1.0) -> torch.Tensor:
    """Constraints of a problem beyond the plant's boxes, per sample ``(B,)`` (bool).

    Rocket (Açıkmeşe & Ploen 2007, as checked by the ``rocket`` solver): thrust magnitude
    ``rho1 <= ||T_k|| <= rho2`` (relative tolerance ``thrust_rtol``) and the glide slope
    ``(r_k - r*)_z >= tan(gamma) ||(r_k - r*)_xy||`` at every node ``k >= 1`` (tolerance
    ``glide_tol`` metres), ``gamma = problem.options["glide_slope"]`` degrees (default 4).
    Other problems: none.
    """
    B = states.shape[0]
    if problem.plant.get("name") != "rocket":
        return torch.zeros(B, dtype=torch.bool)
    thrust = torch.linalg.vector_norm(controls, dim=-1)
    bad = ((thrust < plant.rho1 * (1 - thrust_rtol)) | (thrust > plant.rho2 * (1 + thrust_rtol))).any(1)
    gamma = math.radians(float(problem.options.get("glide_slope", 4.0)))
    d = states[:, 1:, :3] - target[:, None, :3]
    margin = d[..., 2] - math.tan(gamma) * torch.linalg.vector_norm(d[..., :2], dim=-1)
    return bad | (margin < -glide_tol).any(1)


def constraint_violations(problem, plant, states: torch.Tensor, controls: torch.Tensor,
                          target: torch.Tensor) -> torch.Tensor:
    """Samples ``(B,)`` (bool) with a control outside ``[u_min, u_max]``, a state outside
    ``[x_min, x_max]`` (relative tolerance ``1e-6``), a non-finite value, or a violation of the
    problem's own constraints (:func:`problem_violations`).

    Parameters
    ----------
    states : Tensor, shape ``(B, T + 1, n)``
    controls : Tensor, shape ``(B, T, m)``
    target : Tensor, shape ``(B, n)``
    """

    def outside(v, lo, hi):
        lo, hi = lo.to(v), hi.to(v)
        tol_lo = _REL_TOL * (1 + lo.abs().nan_to_num(posinf=0, neginf=0))
        tol_hi = _REL_TOL * (1 + hi.abs().nan_to_num(posinf=0, neginf=0))
        return ((v < lo - tol_lo) | (v > hi + tol_hi) | ~torch.isfinite(v)).flatten(1).any(1)

    violation = outside(controls, plant.u_min, plant.u_max) | outside(states, plant.x_min, plant.x_max)
    return violation | problem_violations(problem, plant, states, controls, target)


def rollout_metrics(problem, plant, x0, target, controls, J_opt) -> dict[str, torch.Tensor]:
    """Per-sample success, terminal error, cost gap and constraint violation of ``controls``.

    Parameters
    ----------
    problem : trc.Problem
    plant : dynamics.Plant
        Float64 plant of the problem.
    x0, target : Tensor, shape ``(B, n)``
    controls : Tensor, shape ``(B, N, m)``
    J_opt : Tensor, shape ``(B,)``
        Optimal costs (same convention).

    Returns
    -------
    dict of str to Tensor, each ``(B,)``
        ``success`` (bool: within the tolerance and no violation), ``terminal_error``, ``cost``,
        ``gap`` (``J / J_opt - 1``), ``violation`` (bool), and ``states`` ``(B, N + 1, n)``.
    """
    controls = controls.to(torch.float64)
    states = plant.rollout(x0, controls)
    J = problem.cost_of(states, controls, target)
    err = torch.nan_to_num(terminal_error(problem, states[:, -1], target), nan=math.inf)
    gap = J / J_opt.clamp_min(torch.finfo(torch.float64).tiny) - 1.0
    gap = torch.nan_to_num(gap, nan=math.inf)

    violation = constraint_violations(problem, plant, states, controls, target)
    return {
        "success": (err < problem.tolerance) & ~violation,
        "terminal_error": err,
        "cost": J,
        "gap": gap,
        "violation": violation,
        "states": states,
    }


def call_times(fn, repeats: int, warmup: int = 5, seconds: float = 0.0) -> np.ndarray:
    """Wall times of ``fn()`` in milliseconds, shape ``(calls,)``, after ``warmup`` untimed calls:
    at least ``repeats`` calls and as many more as end at least ``seconds`` seconds after the
    first timed one (a window long enough to average a shared machine's swings of speed)."""
    for _ in range(warmup):
        fn()
    times, end = [], time.perf_counter() + seconds
    while len(times) < repeats or time.perf_counter() < end:
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000.0 * np.asarray(times)


def measure_latency(fn, repeats: int, warmup: int = 5, seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` in milliseconds over :func:`call_times`' calls (``repeats``
    calls at least, for at least ``seconds`` seconds, after ``warmup`` calls)."""
    return float(np.median(call_times(fn, repeats, warmup, seconds)))


@torch.inference_mode()
def evaluate_model(
    model,
    problem,
    data: SplitData,
    *,
    batch_size: int = 2048,
    latency_repeats: int = 200,
    throughput_batch: int = 1024,
    throughput_repeats: int = 10,
    plot_samples: int = 4,
    timing: bool = True,
) -> Evaluation:
    """Evaluate ``model`` on ``data`` (see the module documentation for the metrics).

    Parameters
    ----------
    model : trc.models.TinyRecursiveControl
        Put in eval mode; runs on its current device, the rollouts on CPU in float64.
    problem : trc.Problem
        The problem ``data`` solves.
    data : SplitData
        Optimal solutions to compare with.
    batch_size : int
        Samples per forward pass of the metric computation.
    latency_repeats, throughput_batch, throughput_repeats : int
        Timing settings.
    plot_samples : int
        Number of samples whose trajectories are returned for figures.
    timing : bool
        Measure latency and throughput (skip for validation passes).

    Returns
    -------
    Evaluation
    """
    model.eval()
    device = next(itertools.chain(model.parameters(), model.buffers()), torch.empty(0)).device
    plant = problem.make_plant(torch.float64)
    M = len(data)
    if M == 0:
        raise DimensionError("cannot evaluate on an empty split")
    J_opt = problem.cost_of(data.states, data.controls, data.target_states)
    opt_err = terminal_error(problem, data.states[:, -1], data.target_states)

    per: dict[str, list] = {k: [] for k in ("success", "terminal_error", "gap", "violation")}
    cyc_gap: list[torch.Tensor] = []
    cyc_success: list[torch.Tensor] = []
    trc_states, trc_controls = [], []
    cycles_used = []
    for start in range(0, M, batch_size):
        sl = slice(start, min(start + batch_size, M))
        x0, tgt = data.initial_states[sl], data.target_states[sl]
        out = model(x0.to(device, torch.float32), tgt.to(device, torch.float32), return_all_iterations=True)
        all_u = out.all_controls.to("cpu", torch.float64)  # (C, B, N, m)
        full = getattr(getattr(model, "config", None), "H_cycles", all_u.shape[0] - 1) + 1
        if all_u.shape[0] < full:  # adaptive halting stopped the whole batch early: its controls stay
            all_u = torch.cat([all_u, all_u[-1:].expand(full - all_u.shape[0], *all_u.shape[1:])])
        C, B = all_u.shape[:2]
        r_all = rollout_metrics(problem, plant, x0.repeat(C, 1), tgt.repeat(C, 1), all_u.flatten(0, 1),
                                J_opt[sl].repeat(C))
        gap_c = r_all["gap"].view(C, B)
        succ_c = r_all["success"].view(C, B)
        cyc_gap.append(gap_c)
        cyc_success.append(succ_c)
        final = out.controls.to("cpu", torch.float64)
        r = rollout_metrics(problem, plant, x0, tgt, final, J_opt[sl])
        for k in per:
            per[k].append(r[k])
        cycles_used.append(out.cycles.cpu().double())
        if start < plot_samples:
            trc_states.append(r["states"][:plot_samples])
            trc_controls.append(final[:plot_samples])

    res = {k: torch.cat(v) for k, v in per.items()}
    gap_all, succ_all = torch.cat(cyc_gap, dim=1), torch.cat(cyc_success, dim=1)
    metrics: dict[str, Any] = {
        "problem": problem.name,
        "num_samples": M,
        "tolerance": float(problem.tolerance),
        "success_rate": float(res["success"].double().mean()),
        "terminal_error_mean": float(res["terminal_error"].mean()),
        "terminal_error_median": _quantile(res["terminal_error"], 0.5),
        "terminal_error_p95": _quantile(res["terminal_error"], 0.95),
        "cost_gap_median": _quantile(res["gap"], 0.5),
        "cost_gap_p95": _quantile(res["gap"], 0.95),
        "cost_gap_mean": float(res["gap"].mean()),
        # over the successful samples only (a controller that misses the target can spend less
        # than the optimum, e.g. the rocket's fuel, so the plain gap can be negative)
        "cost_gap_median_successful": _quantile(res["gap"][res["success"]], 0.5),
        "constraint_violation_rate": float(res["violation"].double().mean()),
        "gap_per_cycle": [_quantile(g, 0.5) for g in gap_all],
        "success_per_cycle": [float(s.double().mean()) for s in succ_all],
        "mean_cycles_used": float(torch.cat(cycles_used).mean()),
        "optimal_success_rate": float((opt_err < problem.tolerance).double().mean()),
        "optimal_cost_median": _quantile(J_opt, 0.5),
        "num_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
    }
    if data.solve_time is not None and data.solve_time.numel():
        st = data.solve_time.double() * 1000.0
        metrics["solver_ms_per_problem"] = float(st.mean())
        metrics["solver_ms_per_problem_median"] = float(st.median())
    else:
        metrics["solver_ms_per_problem"] = math.nan
    if timing:
        metrics.update(_timings(model, data, device, latency_repeats, throughput_batch, throughput_repeats))
        metrics["speedup_vs_solver"] = metrics["solver_ms_per_problem"] / metrics["latency_ms_batch1"]
    samples = {
        "x0": data.initial_states[:plot_samples].numpy(),
        "target": data.target_states[:plot_samples].numpy(),
        "opt_states": data.states[:plot_samples].numpy(),
        "opt_controls": data.controls[:plot_samples].numpy(),
        "trc_states": torch.cat(trc_states).numpy() if trc_states else np.zeros((0,)),
        "trc_controls": torch.cat(trc_controls).numpy() if trc_controls else np.zeros((0,)),
        "gap": res["gap"].numpy(),
        "terminal_error": res["terminal_error"].numpy(),
        "gap_per_cycle_all": gap_all.numpy(),
    }
    return Evaluation(metrics=metrics, samples=samples)


def _timings(model, data: SplitData, device, repeats: int, tp_batch: int, tp_repeats: int) -> dict:
    """Batch-1 latency (with and without feedback) and large-batch throughput."""
    x0 = data.initial_states[:1].to(device, torch.float32)
    tgt = data.target_states[:1].to(device, torch.float32)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def once(plant=None):
        def call():
            model(x0, tgt, plant=plant)
            sync()
        return call

    lat = measure_latency(once(), repeats)
    lat_nf = measure_latency(once(False), repeats)
    idx = torch.arange(tp_batch) % len(data)
    xb = data.initial_states[idx].to(device, torch.float32)
    tb = data.target_states[idx].to(device, torch.float32)

    def big():
        model(xb, tb)
        sync()

    t_big = measure_latency(big, tp_repeats, warmup=1)
    return {
        "latency_ms_batch1": lat,
        "latency_ms_batch1_no_feedback": lat_nf,
        "throughput_per_s_batch1024": tp_batch / (t_big / 1000.0),
        "throughput_batch": tp_batch,
        "torch_threads": torch.get_num_threads(),
    }
