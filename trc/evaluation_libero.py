"""Closed-loop evaluation of a visuomotor policy in LIBERO, from the official init states.

Each episode starts from one of the task's official init states (episode ``j`` uses init state
``j``, as LIBERO's own evaluation does), lets objects settle for 5 idle steps, then runs the
policy until LIBERO's goal predicate holds or ``max_steps`` steps have passed (LIBERO-Spatial:
220). The policy predicts a chunk of actions; the first ``action_steps`` are executed before it
is queried again (receding horizon).

Outputs in the report folder: ``report.json`` and ``report.md`` (success rate per task and
overall with 95 % Wilson intervals, episode lengths, CPU time), ``videos/*.mp4`` (agent view
and eye-in-hand side by side, upright) of the first ``videos`` episodes of each task, and
``figures/latent_norm.png``, the RMS of the latent ``z_H`` after each recursion cycle.

The simulators are closed when the evaluation ends (also on errors), in this process and in
each worker process, so no rendering context is left for the interpreter's exit.

Command line (the ``libero`` problem kind of :mod:`trc.kinds`)::

    python -m trc.evaluate --checkpoint runs/libero_spatial/model.pt --episodes 20
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from multiprocessing.util import Finalize
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from tqdm import tqdm

from dynamics.errors import CheckpointError, ConfigError
from dynamics.learned_arm import arm_states
from dynamics.libero import LiberoSimulator, proprio_from_raw, suite_tasks

from .backends import check_backend, map_unordered
from .config import from_dict
from .generators.libero_storage import LiberoProblem
from .io import atomic_path, atomic_write_text
from .model_file import read_model_file
from .models.visuomotor import SentenceEncoder, VisuomotorPolicy, policy_from_payload

__all__ = ["EpisodeResult", "run_policy_episode", "evaluate", "wilson_interval", "load_policy"]


@dataclasses.dataclass
class EpisodeResult:
    """Outcome of one closed-loop episode."""

    task_index: int
    init_state_id: int
    success: bool
    length: int
    cpu_seconds: float
    latent_norms: list  # mean RMS of z_H per cycle (start, after cycle 1, ...) over the policy calls
    cycles: float  # mean number of refinement cycles run per call
    frames: Any = None  # (T, H, 2W, 3) uint8 video frames, or None


def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a success rate (Wilson, JASA 22, 1927)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return (max(0.0, centre - half), min(1.0, centre + half))


def _frame(raw: dict) -> np.ndarray:
    a = np.asarray(raw["agentview_image"])[::-1, ::-1]
    b = np.asarray(raw["robot0_eye_in_hand_image"])[::-1, ::-1]
    return np.concatenate([a, b], axis=1)


def run_policy_episode(policy, sim, text: torch.Tensor, init_state_id: int, *, max_steps: int,
                       action_steps: int, record: bool = False) -> EpisodeResult:
    """Run ``policy`` closed-loop in ``sim`` (a :class:`dynamics.libero.LiberoSimulator`).

    Parameters
    ----------
    policy : VisuomotorPolicy
    sim : LiberoSimulator
    text : Tensor, shape ``(384,)``
        Embedding of the task's instruction.
    init_state_id : int
    max_steps : int
    action_steps : int
        Actions of each predicted chunk executed before re-planning.
    record : bool
        Keep video frames.
    """
    t0 = time.process_time()
    raw = sim.reset(init_state_id)
    prev_pos = None
    frames = [_frame(raw)] if record else None
    norms, cycles = [], []
    success, steps = False, 0
    queue: list = []
    while steps < max_steps and not success:
        p = proprio_from_raw(raw)
        x = arm_states(p["ee_pos"][None], p["ee_ori"][None], p["gripper_states"][None], dt=sim.dt,
                       prev_ee_pos=prev_pos)
        if not queue:
            imgs = {"agentview_rgb": raw["agentview_image"][None], "eye_in_hand_rgb": raw["robot0_eye_in_hand_image"][None]}
            chunk, out = policy.act(imgs, text[None], torch.as_tensor(x, dtype=torch.float32))
            norms.append(out.latent_norms[:, 0].numpy())
            cycles.append(float(out.cycles[0]))
            queue = list(chunk[0, :action_steps].numpy())
        prev_pos = p["ee_pos"]
        action = queue.pop(0)
        # Render only where the images are used: before the next policy query, and for videos.
        raw, success = sim.step(action, render=record or not queue)
        steps += 1
        if record:
            frames.append(_frame(raw))
    return EpisodeResult(
        task_index=sim.task.index, init_state_id=int(init_state_id), success=bool(success), length=steps,
        cpu_seconds=time.process_time() - t0, latent_norms=np.mean(norms, axis=0).tolist(),
        cycles=float(np.mean(cycles)), frames=np.stack(frames) if record else None,
    )


def load_policy(path: str | os.PathLike) -> VisuomotorPolicy:
    """The visuomotor policy of a model file (:mod:`trc.model_file`), in eval mode.

    Its ``problem`` (:class:`~trc.generators.libero_storage.LiberoProblem`) says which suite,
    tasks, cameras and episode limit it was trained for; ``metadata["text_embeddings"]`` maps
    each instruction to its embedding. :func:`trc.load` gives the same policy.

    Raises
    ------
    CheckpointError
        If the file cannot be read, is corrupted, or holds a policy of another problem kind.
    """
    payload = read_model_file(path)
    source = f"model file {str(path)!r}"
    if payload["kind"] != "libero":
        raise CheckpointError(f"{source} holds a {payload['model_class']} of problem kind {payload['kind']!r}; "
                              "LIBERO evaluation needs a VisuomotorPolicy (problem kind 'libero')")
    try:
        problem = from_dict(LiberoProblem, payload["problem"], "problem")
    except ConfigError as exc:
        raise CheckpointError(f"{source}: its problem is invalid: {exc}") from exc
    return policy_from_payload(payload, source, problem)


#: What a process reuses between episodes: the policy of ``checkpoint`` and the simulator of ``task``.
_WORKER: dict = {}


def _close_worker_sim() -> None:
    """Close the process's simulator, if any (after the evaluation, or when its worker ends)."""
    sim = _WORKER.pop("sim", None)
    _WORKER.pop("task", None)
    if sim is not None:
        sim.close()


def _init_worker() -> None:
    """Set up a worker process: close its simulator when the process ends.

    ``multiprocessing`` runs the finalizer when the worker leaves, before the interpreter's
    exit handlers, among them robosuite's ``eglTerminate``.
    """
    Finalize(None, _close_worker_sim, exitpriority=10)


def _worker(args) -> EpisodeResult:
    checkpoint, problem, task_index, init_id, action_steps, record, max_steps, threads = args
    torch.set_num_threads(threads)
    if _WORKER.get("checkpoint") != checkpoint:
        _WORKER["policy"] = load_policy(checkpoint)
        _WORKER["checkpoint"] = checkpoint
    if _WORKER.get("task") != task_index:
        _close_worker_sim()
        _WORKER["sim"] = LiberoSimulator(problem["suite"], task_index, camera_size=problem["camera_size"],
                                         render=problem["render"], assets=problem.get("assets"))
        _WORKER["task"] = task_index
    sim = _WORKER["sim"]
    emb = (_WORKER["policy"].metadata.get("text_embeddings") or {}).get(sim.language)
    if emb is None:
        emb = SentenceEncoder().encode([sim.language])[0].numpy()
    return run_policy_episode(_WORKER["policy"], sim, torch.as_tensor(np.asarray(emb, dtype=np.float32)), init_id,
                              max_steps=max_steps, action_steps=action_steps, record=record)


def _write_video(path: Path, frames: np.ndarray, fps: int = 20) -> None:
    """Write an H.264 MP4 through imageio-ffmpeg, atomically (temporary ``.mp4`` then rename)."""
    import imageio.v2 as imageio

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.partial.mp4")  # ffmpeg picks the container from the suffix
    try:
        with imageio.get_writer(str(tmp), fps=fps, codec="libx264", macro_block_size=1) as w:
            for f in frames:
                w.append_data(f)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _latent_figure(path: Path, results: list[EpisodeResult]) -> None:
    """Mean and standard deviation over the episodes of the latent RMS after each cycle (PNG).

    Drawn on a :class:`matplotlib.figure.Figure` (no pyplot state, Agg canvas), as the reports
    of :mod:`trc.report`.
    """
    norms = np.array([r.latent_norms for r in results])
    fig = Figure(figsize=(5, 3.2), layout="tight")
    ax = fig.subplots()
    ks = np.arange(norms.shape[1])
    ax.errorbar(ks, norms.mean(0), yerr=norms.std(0), marker="o", capsize=3)
    ax.set_xlabel("recursion cycle (0 = input embedding)")
    ax.set_ylabel("RMS of $z_H$")
    ax.set_xticks(ks)
    ax.set_title("Latent state norm per recursion step")
    ax.grid(alpha=0.3)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)


def evaluate(checkpoint: str | os.PathLike, *, episodes: int = 20, tasks: list[int] | None = None,
             out_dir: str | os.PathLike | None = None, workers: int | None = None, videos: int = 1,
             action_steps: int | None = None, max_steps: int | None = None, render: str | None = None,
             progress: bool = True, backend: str = "local", address: str | None = None) -> dict:
    """Evaluate a policy checkpoint closed-loop in LIBERO; see the module notes.

    Parameters
    ----------
    checkpoint : path
        A model file of a visuomotor policy (``python -m trc.train`` on a LIBERO
        configuration, or :func:`trc.save`).
    episodes : int
        Episodes per task (init states ``0 .. episodes - 1``).
    tasks : list of int, optional
        Task indices; default the checkpoint's problem tasks.
    out_dir : path, optional
        Report folder; default ``<checkpoint folder>/evaluation``.
    workers : int, optional
        ``local``: parallel processes, one simulator and one policy copy each (default 1: this
        process); ``ray``: most episodes at once (default: as many as the cluster's CPUs).
    videos : int
        Episodes recorded per task.
    action_steps : int, optional
        Executed actions per chunk; default half the chunk.
    max_steps : int, optional
        Default the problem's (LIBERO-Spatial: 220).
    render : {"fast", "libero"}, optional
        Override the render settings of the checkpoint's problem.
    progress : bool
    backend : {"local", "ray"}
        Where the episodes run (:mod:`trc.backends`): one Ray task per episode, each task loading
        the checkpoint from its path (on a cluster of several machines, a path every node can read).
    address : str, optional
        Ray cluster address (``ray`` only).

    Returns
    -------
    dict
        ``per_task`` (success rate, Wilson interval, mean length), ``success_rate``,
        ``mean_length``, ``cpu_seconds``, ``latent_norms``.

    Raises
    ------
    ConfigError
        On a non-positive ``episodes``, ``workers`` or ``action_steps``; a bad backend or address.
    SolverError
        If a worker process died (local), or a Ray task's worker in every retry.
    CheckpointError
        If the checkpoint cannot be loaded or is not a visuomotor policy.
    """
    if episodes < 1 or (workers is not None and workers < 1) or videos < 0:
        raise ConfigError(f"episodes and workers must be >= 1 and videos >= 0, got {episodes}, {workers}, {videos}")
    check_backend(backend, address)
    policy = load_policy(checkpoint)
    problem = policy.problem.worker_dict()
    if render is not None:
        problem["render"] = render
    chunk = policy.config.chunk
    action_steps = max(1, chunk // 2) if action_steps is None else int(action_steps)
    if not 1 <= action_steps <= chunk:
        raise ConfigError(f"action_steps must be in 1..{chunk} (the chunk length), got {action_steps}")
    max_steps = int(max_steps or problem["max_steps"])
    if tasks is None:
        tasks = policy.problem.task_list()
    out = Path(out_dir) if out_dir is not None else Path(checkpoint).parent / "evaluation"
    # Share the cores among the workers, never more threads than this process is allowed
    # (torch.get_num_threads() follows OMP_NUM_THREADS and torch.set_num_threads).
    threads = 1 if backend == "ray" else max(1, min(torch.get_num_threads(), (os.cpu_count() or 1) // (workers or 1)))
    jobs = [(str(checkpoint), problem, t, j, action_steps, j < videos, max_steps, threads) for t in tasks for j in range(episodes)]
    results: list[EpisodeResult] = []
    t0 = time.time()
    bar = tqdm(total=len(jobs), desc="LIBERO episodes", disable=not progress)
    try:
        if backend == "local" and (workers or 1) == 1:
            _WORKER.update(policy=policy, checkpoint=str(checkpoint))  # loaded above: the file as it is now
            try:
                for job in jobs:
                    results.append(_worker(job))
                    bar.update(1)
                    bar.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")
            finally:
                _close_worker_sim()
                _WORKER.clear()
        else:
            # Each worker closes its simulator when it ends (_init_worker), before EGL is terminated.
            for _, result in map_unordered(_worker, jobs, backend=backend, address=address, workers=workers,
                                           inline=False, initializer=_init_worker):
                results.append(result)
                bar.update(1)
                bar.set_postfix(success=f"{np.mean([r.success for r in results]):.2f}")
    finally:
        bar.close()
    results.sort(key=lambda r: (r.task_index, r.init_state_id))
    names = {t.index: t.language for t in suite_tasks(problem["suite"])}
    per_task = {}
    for t in tasks:
        rs = [r for r in results if r.task_index == t]
        k = sum(r.success for r in rs)
        per_task[t] = {
            "instruction": names[t], "episodes": len(rs), "successes": k, "success_rate": k / len(rs),
            "wilson95": wilson_interval(k, len(rs)), "mean_length": float(np.mean([r.length for r in rs])),
            "mean_length_success": float(np.mean([r.length for r in rs if r.success])) if k else None,
        }
    k = sum(r.success for r in results)
    report = {
        "checkpoint": str(checkpoint), "suite": problem["suite"], "episodes_per_task": episodes,
        "max_steps": max_steps, "action_steps": action_steps, "render": problem["render"],
        "success_rate": k / len(results), "wilson95": wilson_interval(k, len(results)),
        "average_task_success": float(np.mean([v["success_rate"] for v in per_task.values()])),
        "mean_length": float(np.mean([r.length for r in results])),
        "cpu_seconds": float(sum(r.cpu_seconds for r in results)), "wall_seconds": time.time() - t0,
        "mean_cycles": float(np.mean([r.cycles for r in results])),
        "latent_norms": np.mean([r.latent_norms for r in results], axis=0).tolist(),
        "per_task": per_task,
    }
    _latent_figure(out / "figures" / "latent_norm.png", results)
    atomic_write_text(out / "report.json", json.dumps(report, indent=2, default=float))
    lines = [f"# LIBERO evaluation: {problem['suite']}", "",
             f"{episodes} episodes per task from the official init states, at most {max_steps} steps, "
             f"{action_steps} of {chunk} actions executed per chunk.", "",
             "| task | instruction | success | 95 % interval | mean length |", "|---:|---|---:|---|---:|"]
    for t, v in per_task.items():
        lo, hi = v["wilson95"]
        lines.append(f"| {t} | {v['instruction']} | {v['successes']}/{v['episodes']} ({100 * v['success_rate']:.0f} %) "
                     f"| {100 * lo:.0f}-{100 * hi:.0f} % | {v['mean_length']:.0f} |")
    lo, hi = report["wilson95"]
    lines += ["", f"Overall: {k}/{len(results)} ({100 * report['success_rate']:.1f} %, 95 % interval "
              f"{100 * lo:.0f}-{100 * hi:.0f} %), mean episode length {report['mean_length']:.0f} steps, "
              f"CPU time {report['cpu_seconds']:.0f} s."]
    atomic_write_text(out / "report.md", "\n".join(lines) + "\n")
    for r in results:
        if r.frames is not None:
            tag = "success" if r.success else "failure"
            _write_video(out / "videos" / f"task{r.task_index:02d}_init{r.init_state_id:02d}_{tag}.mp4", r.frames)
    report["out_dir"] = str(out)
    return report
