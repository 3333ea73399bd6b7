"""Reports of a training or evaluation run: ``report.json``, ``report.md`` and PNG figures.

:func:`write_report` writes, in a run folder,

* ``report.json``: the metrics of :func:`trc.evaluation.evaluate_model` plus run information;
* ``report.md``: the same as readable tables, with the figures linked;
* ``figures/trajectories.png``: TRC versus optimal states and controls for a few samples;
* ``figures/gap_per_cycle.png``: median cost gap after each refinement cycle;
* ``figures/loss_curves.png``: training losses and validation metrics per epoch (training runs).

Figures are drawn with :class:`matplotlib.figure.Figure` (no pyplot state, Agg canvas) and, like
every file here, written atomically.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from .io import atomic_path, atomic_write_text

__all__ = ["write_report", "summary_text", "plot_trajectories", "plot_gap_per_cycle", "plot_loss_curves", "to_json"]


def to_json(obj) -> Any:
    """``obj`` as JSON-compatible data (NumPy scalars and arrays to Python, non-finite floats to None)."""
    if isinstance(obj, Mapping):
        return {str(k): to_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_json(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return to_json(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        v = float(obj)
        return v if math.isfinite(v) else None
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt(value, digits: int = 4) -> str:
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v, digits) for v in value) + "]"
    return "" if value is None else str(value)


def summary_text(metrics: Mapping[str, Any]) -> str:
    """A short human-readable summary of the main metrics (for stdout)."""
    m = metrics
    lines = [
        f"problem            {m.get('problem', '?')} ({m.get('num_samples', '?')} {m.get('split', 'test')} samples)",
        f"success rate       {100 * m['success_rate']:.2f} %  (||x_N - x*|| < {m.get('tolerance', '?')})",
        f"cost gap           median {100 * m['cost_gap_median']:.3f} %, p95 {100 * m['cost_gap_p95']:.3f} %",
        f"terminal error     mean {m['terminal_error_mean']:.4g}",
        f"constraint viol.   {100 * m['constraint_violation_rate']:.2f} %",
        "gap per cycle      " + ", ".join(f"{100 * g:.2f} %" if g is not None else "nan" for g in m["gap_per_cycle"]),
    ]
    if "latency_ms_batch1" in m:
        lines.append(
            f"latency (batch 1)  {m['latency_ms_batch1']:.3f} ms with feedback, "
            f"{m['latency_ms_batch1_no_feedback']:.3f} ms without"
        )
        batch = m.get("throughput_batch", 1024)
        lines.append(f"throughput         {m['throughput_per_s_batch1024']:,.0f} problems/s at batch {batch}")
    sm = m.get("solver_ms_per_problem")
    if sm is not None and isinstance(sm, float) and math.isfinite(sm):
        speed = m.get("speedup_vs_solver")
        lines.append(f"solver             {sm:.3f} ms/problem" + (f"  (TRC speed-up x{speed:.1f})" if speed else ""))
    lines.append(f"parameters         {m['num_parameters']:,}")
    if "train_seconds" in m:
        lines.append(
            f"training           {m['train_seconds'] / 60:.2f} min, {m.get('epochs_run', '?')} epochs "
            f"(best {m.get('best_epoch', '?')}, stop: {m.get('stop_reason', '?')})"
        )
    return "\n".join(lines)


def _save(fig, path: Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def _figure(rows: int, cols: int, size=(4.0, 2.6)):
    fig = Figure(figsize=(size[0] * cols, size[1] * rows), layout="constrained")
    axes = np.atleast_2d(fig.subplots(rows, cols, squeeze=False))
    return fig, axes


def plot_trajectories(path: str | os.PathLike, samples: Mapping[str, np.ndarray], problem) -> Path | None:
    """TRC (solid) versus optimal (dashed) states and controls of a few samples.

    Parameters
    ----------
    path : path-like
        PNG file.
    samples : mapping
        ``x0``, ``target`` ``(S, n)``, ``trc_states``, ``opt_states`` ``(S, N + 1, n)``,
        ``trc_controls``, ``opt_controls`` ``(S, N, m)`` (see :class:`trc.evaluation.Evaluation`).
    problem : trc.Problem
        For ``dt``, names and units.

    Returns
    -------
    pathlib.Path or None
        The file written, or None when there are no samples.
    """
    trc_x = np.asarray(samples.get("trc_states", []))
    if trc_x.ndim != 3 or trc_x.shape[0] == 0:
        return None
    opt_x, trc_u, opt_u = (np.asarray(samples[k]) for k in ("opt_states", "trc_controls", "opt_controls"))
    target = np.asarray(samples["target"])
    plant = problem.make_plant()
    n, m = trc_x.shape[-1], trc_u.shape[-1]
    dt, N = problem.dt, trc_u.shape[1]
    t_x, t_u = dt * np.arange(N + 1), dt * np.arange(N)
    cols = n + m
    fig, axes = _figure(1, cols)
    colors = [f"C{i}" for i in range(trc_x.shape[0])]
    for j in range(n):
        ax = axes[0, j]
        for s, c in enumerate(colors):
            ax.plot(t_x, trc_x[s, :, j], color=c, lw=1.6)
            ax.plot(t_x, opt_x[s, :, j], color=c, lw=1.2, ls="--")
            ax.plot(t_x[-1], target[s, j], marker="*", color=c, ms=8)
        name = plant.state_names[j] if j < len(plant.state_names) else f"x{j}"
        unit = plant.state_units[j] if j < len(plant.state_units) else ""
        ax.set_title(f"{name} [{unit}]" if unit else name)
        ax.set_xlabel("t [s]")
    for j in range(m):
        ax = axes[0, n + j]
        for s, c in enumerate(colors):
            ax.step(t_u, trc_u[s, :, j], where="post", color=c, lw=1.6)
            ax.step(t_u, opt_u[s, :, j], where="post", color=c, lw=1.2, ls="--")
        name = plant.control_names[j] if j < len(plant.control_names) else f"u{j}"
        unit = plant.control_units[j] if j < len(plant.control_units) else ""
        ax.set_title(f"{name} [{unit}]" if unit else name)
        ax.set_xlabel("t [s]")
    fig.suptitle(f"{problem.name}: TRC (solid) vs optimal (dashed); * = target")
    _save(fig, Path(path))
    return Path(path)


def plot_gap_per_cycle(path: str | os.PathLike, metrics: Mapping[str, Any]) -> Path | None:
    """Median cost gap (log scale) and success rate after each refinement cycle."""
    gaps = [g for g in metrics.get("gap_per_cycle", [])]
    if not gaps:
        return None
    fig, axes = _figure(1, 2)
    k = np.arange(len(gaps))
    g = np.array([np.nan if v is None else v for v in gaps], dtype=float)
    ax = axes[0, 0]
    ax.semilogy(k, np.maximum(np.abs(g), 1e-8), marker="o")
    ax.set_xlabel("refinement cycle (0 = initial decode)")
    ax.set_ylabel("median |J / J* - 1|")
    ax.set_xticks(k)
    ax.grid(True, which="both", alpha=0.3)
    ax = axes[0, 1]
    succ = metrics.get("success_per_cycle")
    if succ:
        ax.plot(k, 100 * np.asarray(succ, dtype=float), marker="o", color="C1")
    ax.set_xlabel("refinement cycle")
    ax.set_ylabel("success rate [%]")
    ax.set_xticks(k)
    ax.grid(True, alpha=0.3)
    fig.suptitle(f"{metrics.get('problem', '')}: refinement cycles")
    _save(fig, Path(path))
    return Path(path)


def plot_loss_curves(path: str | os.PathLike, history: Sequence[Mapping[str, Any]]) -> Path | None:
    """Training loss terms and validation metrics per epoch."""
    if not history:
        return None
    epochs = np.array([r["epoch"] for r in history])
    fig, axes = _figure(1, 3)
    ax = axes[0, 0]
    skip = ("train_seconds", "train_grad_norm")
    for key in sorted({k for r in history for k in r if k.startswith("train_") and k not in skip}):
        y = np.array([r.get(key, np.nan) for r in history], dtype=float)
        if np.isfinite(y).any() and (np.abs(y[np.isfinite(y)]) > 0).any():
            ax.semilogy(epochs, np.abs(y), label=key[6:])
    ax.set_xlabel("epoch")
    ax.set_title("training loss terms")
    ax.legend(fontsize=7)
    ax.grid(True, which="both", alpha=0.3)
    val = [(r["epoch"], r) for r in history if "val_cost_gap_median" in r]
    if val:
        e = np.array([v[0] for v in val])
        ax = axes[0, 1]
        for key, label in (("val_cost_gap_median", "median"), ("val_cost_gap_p95", "p95")):
            ax.semilogy(e, np.maximum(np.abs([v[1].get(key, np.nan) for v in val]), 1e-8), label=label)
        ax.set_xlabel("epoch")
        ax.set_title("validation cost gap |J / J* - 1|")
        ax.legend(fontsize=7)
        ax.grid(True, which="both", alpha=0.3)
        ax = axes[0, 2]
        ax.plot(e, [100 * v[1].get("val_success_rate", np.nan) for v in val], color="C2")
        ax.set_xlabel("epoch")
        ax.set_title("validation success rate [%]")
        ax.grid(True, alpha=0.3)
    lr = np.array([r.get("lr", np.nan) for r in history], dtype=float)
    if np.isfinite(lr).any():
        twin = axes[0, 0].twinx()
        twin.plot(epochs, lr, color="0.6", ls=":", lw=1)
        twin.set_ylabel("learning rate", color="0.5")
    _save(fig, Path(path))
    return Path(path)


def _markdown(metrics: Mapping[str, Any], figures: Mapping[str, Path], out_dir: Path, title: str) -> str:
    main = [
        ("success_rate", "success rate", lambda v: f"{100 * v:.2f} %"),
        ("cost_gap_median", "median cost gap J/J* - 1", lambda v: f"{100 * v:.3f} %"),
        ("cost_gap_p95", "95th percentile cost gap", lambda v: f"{100 * v:.3f} %"),
        ("terminal_error_mean", "mean terminal error", _fmt),
        ("constraint_violation_rate", "constraint violation rate", lambda v: f"{100 * v:.2f} %"),
        ("latency_ms_batch1", "latency, batch 1 (with feedback)", lambda v: f"{v:.3f} ms"),
        ("latency_ms_batch1_no_feedback", "latency, batch 1 (no feedback)", lambda v: f"{v:.3f} ms"),
        ("throughput_per_s_batch1024", "throughput, batch 1024", lambda v: f"{v:,.0f} /s"),
        ("solver_ms_per_problem", "solver time per problem", lambda v: f"{v:.3f} ms"),
        ("speedup_vs_solver", "speed-up vs solver (batch 1)", lambda v: f"x{v:.1f}"),
        ("num_parameters", "parameters", lambda v: f"{v:,}"),
    ]
    lines = [f"# {title}", "", "| metric | value |", "|---|---|"]
    shown = set()
    for key, label, fmt in main:
        if key in metrics and metrics[key] is not None:
            lines.append(f"| {label} | {fmt(metrics[key])} |")
            shown.add(key)
    gaps = metrics.get("gap_per_cycle")
    if gaps:
        lines += ["", "## Refinement cycles", "", "| cycle | median gap | success |", "|---|---|---|"]
        succ = metrics.get("success_per_cycle") or [None] * len(gaps)
        for k, (g, s) in enumerate(zip(gaps, succ)):
            gap = "" if g is None else f"{100 * g:.3f} %"
            rate = "" if s is None else f"{100 * s:.2f} %"
            lines.append(f"| {k} | {gap} | {rate} |")
        shown |= {"gap_per_cycle", "success_per_cycle"}
    rest = {k: v for k, v in metrics.items() if k not in shown and not isinstance(v, (dict, list))}
    if rest:
        lines += ["", "## All values", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {_fmt(v)} |" for k, v in rest.items()]
    if figures:
        lines += ["", "## Figures", ""]
        for name, p in figures.items():
            rel = os.path.relpath(p, out_dir)
            lines += [f"![{name}]({rel})", ""]
    return "\n".join(lines) + "\n"


def write_report(
    out_dir: str | os.PathLike,
    metrics: Mapping[str, Any],
    *,
    problem=None,
    samples: Mapping[str, np.ndarray] | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    title: str | None = None,
) -> dict[str, Path]:
    """Write ``report.json``, ``report.md`` and the figures into ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Run or evaluation folder (created if needed).
    metrics : mapping
        Evaluation metrics and run information (JSON-serialisable after :func:`to_json`).
    problem : trc.Problem, optional
        Needed for the trajectory figure.
    samples : mapping, optional
        ``Evaluation.samples`` for the trajectory figure.
    history : sequence of mapping, optional
        Per-epoch metrics for the loss curves.
    title : str, optional
        Heading of ``report.md``.

    Returns
    -------
    dict of str to pathlib.Path
        Every file written, by name (``report.json``, ``report.md``, figure names).
    """
    out = Path(out_dir)
    fig_dir = out / "figures"
    figures: dict[str, Path] = {}
    if samples is not None and problem is not None:
        p = plot_trajectories(fig_dir / "trajectories.png", samples, problem)
        if p is not None:
            figures["trajectories"] = p
    p = plot_gap_per_cycle(fig_dir / "gap_per_cycle.png", metrics)
    if p is not None:
        figures["gap_per_cycle"] = p
    if history:
        p = plot_loss_curves(fig_dir / "loss_curves.png", history)
        if p is not None:
            figures["loss_curves"] = p
    data = to_json(dict(metrics))
    data["figures"] = {k: os.path.relpath(v, out) for k, v in figures.items()}
    atomic_write_text(out / "report.json", json.dumps(data, indent=2) + "\n")
    title = title or f"TRC report: {metrics.get('problem', '')}"
    atomic_write_text(out / "report.md", _markdown(metrics, figures, out, title))
    return {"report.json": out / "report.json", "report.md": out / "report.md", **figures}
