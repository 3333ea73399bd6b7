"""A scripted expert for LIBERO pick-and-place tasks, and the demonstration generator.

LIBERO's own demonstrations (50 human teleoperations per task) cannot be downloaded here, so
demonstrations are produced in the real LIBERO scenes by a scripted expert that reads the
objects' poses from the simulator (privileged information the learned policy never sees) and
drives the arm through robosuite's operational-space controller with the same 7-DoF delta
actions a policy outputs.

The expert (:class:`PickPlaceExpert`) handles goals of the form ``(on <object> <target>)``
(all of LIBERO-Spatial and the pick-and-place tasks of LIBERO-Object): a state machine

    approach -> descend -> grasp -> lift -> carry -> lower -> release -> retreat

with proportional control of the grip-site position and orientation toward waypoints computed
from the object poses at every step (so it corrects for slip and contact). Bowls are grasped
at their rim with the fingers straddling the wall; other objects at their centre.

Demonstrations (:func:`generate`) follow LIBERO's HDF5 layout
(:mod:`trc.generators.libero_storage`), one file per task; only successful episodes are kept.
Optional action noise during collection (``noise_std``) makes the expert visit and correct
states off its nominal path (DART, Laskey et al., "DART: Noise Injection for Robust Imitation
Learning", CoRL 2017); the stored ``actions`` are then the expert's noise-free labels and the
executed ones are stored as ``executed_actions``.
"""

from __future__ import annotations

import dataclasses
import os
import time
from multiprocessing.util import Finalize
from pathlib import Path
from typing import Any

import numpy as np
from scipy.spatial.transform import Rotation
from tqdm import tqdm

from dynamics.errors import ConfigError, SolverError
from dynamics.libero import LiberoSimulator, get_task, load_init_states, proprio_from_raw

from ..backends import TaskPool, check_backend
from ..config import check_choice, check_int, check_real, from_dict
from .libero_storage import Episode, LiberoProblem, load_staged, stage_episode, task_file_name, write_task_file

__all__ = ["ExpertConfig", "PickPlaceExpert", "Episode", "run_episode", "generate", "LiberoGeneratorConfig",
           "init_state_of_attempt"]

#: Grip-site orientation the expert holds: fingers pointing down, closing along world y.
R_DOWN = np.diag([1.0, -1.0, -1.0])
#: Full-scale position and rotation steps of LIBERO's OSC_POSE controller (m, rad).
POS_SCALE, ROT_SCALE = 0.05, 0.5


@dataclasses.dataclass
class ExpertConfig:
    """Gains and geometry of :class:`PickPlaceExpert` (lengths in m).

    Attributes
    ----------
    kp, kr : float
        Proportional gains on the position and orientation errors, in units of the
        controller's full-scale step (``a = kp * e / 0.05``).
    max_speed : float
        Largest position action (fraction of the 5 cm full scale).
    rim_radius : float
        Radius of the bowl wall where the fingers grasp it.
    grasp_depth : float
        Height of the grip site above the object's base when grasping.
    hover, carry_clearance : float
        Height above the grasp point of the approach, and clearance of the carried object
        above the highest of its start and its target.
    place_height : float
        Height of the object's base above the target's base when it is released.
    close_steps, release_steps : int
        Steps the gripper is commanded closed (open) before lifting (retreating).
    tolerance : float
        Distance of the grip site to the grasp point at which the fingers close.
    force_direction : {"+y", "-y", "+x", "-x"} or None
        Always grasp from this side (None: choose, see :meth:`PickPlaceExpert._candidates`).
    max_reach : float
        Horizontal distance from the arm's base beyond which a grasp or release pose is
        avoided when another side is possible (measured: at carrying height the Panda's elbow
        reaches its joint limit, and the controller stalls, about 0.77 m from the base).
    clearance_enough : float
        Room between the outer finger and the nearest other object beyond which more room does
        not make a side preferable.
    carry_stall_steps : int
        Steps without progress toward the target after which carrying ends and lowering starts.
    """

    kp: float = 1.2
    kr: float = 1.0
    max_speed: float = 1.0
    rim_radius: float = 0.047
    grasp_depth: float = 0.035
    hover: float = 0.10
    carry_clearance: float = 0.17
    place_height: float = 0.025
    close_steps: int = 10
    release_steps: int = 6
    tolerance: float = 0.008
    force_direction: str | None = None
    max_reach: float = 0.76
    clearance_enough: float = 0.08
    carry_stall_steps: int = 10

    def __post_init__(self):
        for key in ("kp", "kr", "max_speed", "rim_radius", "hover", "carry_clearance", "tolerance", "max_reach",
                    "clearance_enough"):
            check_real(getattr(self, key), f"expert.{key} (positive)", 0.0, low_open=True)
        check_int(self.carry_stall_steps, "expert.carry_stall_steps", 1)
        check_choice(self.force_direction, "expert.force_direction", (*sorted(PickPlaceExpert.DIRECTIONS), None))


class PickPlaceExpert:
    """Scripted pick-and-place expert for goals ``(on <object> <target>)``.

    Parameters
    ----------
    sim : dynamics.libero.LiberoSimulator
        The task; its goal must be a single ``on`` predicate.
    config : ExpertConfig, optional
    rng : numpy.random.Generator, optional
        Randomises the grasp side when both are free.

    Raises
    ------
    SolverError
        If the task's goal is not a single ``on`` predicate.
    """

    PHASES = ("backoff", "approach", "descend", "grasp", "lift", "carry", "lower", "release", "retreat")

    def __init__(self, sim, config: ExpertConfig | None = None, rng: np.random.Generator | None = None):
        goal = sim.goal()
        if len(goal) != 1 or goal[0][0].lower() != "on":
            raise SolverError(f"the pick-and-place expert needs a goal (on A B); task {sim.task.name} has {goal}")
        self.sim = sim
        self.obj, self.target = goal[0][1], goal[0][2]
        self.config = config or ExpertConfig()
        self.rng = rng or np.random.default_rng(0)
        self.reset()

    def reset(self) -> None:
        """Start a new episode (call after the simulator's reset)."""
        self.phase = "approach"
        self.phase_steps = 0
        self.side = None
        self.candidates: list[str] = []
        self.carry_z = None
        self.best = np.inf  # the phase's best progress measure so far (see _stalled_steps)
        self.stall = 0
        self.hold = None

    # ---------------------------------------------------------------- geometry
    def _is_bowl(self) -> bool:
        return "bowl" in self.obj

    #: Grasp directions (unit vectors in the table plane from the object centre to the grasp
    #: point on the rim) and the yaw of the gripper that closes its fingers along them.
    DIRECTIONS = {"+y": ((0.0, 1.0), 0.0), "-y": ((0.0, -1.0), 0.0), "+x": ((1.0, 0.0), 90.0), "-x": ((-1.0, 0.0), 90.0)}

    def _stalled_steps(self, value: float) -> int:
        """Count the steps since ``value`` (smaller is better, in m) last beat the phase's best by
        more than 2 mm; :meth:`_next` resets it when a phase starts."""
        if value < self.best - 0.002:
            self.best, self.stall = value, 0
        else:
            self.stall += 1
        return self.stall

    def _robot_base_xy(self) -> np.ndarray:
        """Position of the arm's base in the table plane, shape ``(2,)`` (m)."""
        sim = self.sim.sim
        return np.asarray(sim.data.body_xpos[sim.model.body_name2id("robot0_base")][:2], dtype=float)

    def _reach(self, key: str, obj_pos: np.ndarray, tgt_pos: np.ndarray) -> float:
        """Largest horizontal distance (m) from the arm's base of the grip site when grasping
        the object from side ``key`` and when releasing it over the target (same offset)."""
        d = np.asarray(self.DIRECTIONS[key][0])
        offset = d * self.config.rim_radius if self._is_bowl() else np.zeros(2)
        base = self._robot_base_xy()
        return max(np.linalg.norm(obj_pos[:2] + offset - base), np.linalg.norm(tgt_pos[:2] + offset - base))

    def _candidates(self, obj_pos: np.ndarray, tgt_pos: np.ndarray) -> list[str]:
        """Grasp directions, best first.

        Free directions (see :meth:`_fingers_blocked`) come first. Among them, directions whose
        grasp and release poses stay within ``max_reach`` of the arm's base come first (near
        full extension the Panda's elbow reaches its joint limit and the operational-space
        controller stalls), then those with most room between the outer finger and other
        objects at finger height (room beyond ``clearance_enough`` counts the same), then the
        shortest reach.
        """
        c = self.config
        others = []
        for name in list(self.sim.env.objects_dict):
            if name == self.obj:
                continue
            pos, _ = self.sim.body_pose(name)
            if abs(pos[2] - obj_pos[2]) < 0.08:  # only objects at the height of the fingers
                others.append(pos[:2])

        def clearance(key):
            d = np.asarray(self.DIRECTIONS[key][0])
            finger = obj_pos[:2] + d * (c.rim_radius + 0.04)
            return min((np.linalg.norm(finger - o) for o in others), default=1.0)

        def score(key):
            reach = self._reach(key, obj_pos, tgt_pos)
            return (reach > c.max_reach, -round(min(clearance(key), c.clearance_enough), 2), reach)

        scores = {key: score(key) for key in self.DIRECTIONS}
        order = sorted(self.DIRECTIONS, key=scores.get)
        first, second = scores[order[0]], scores[order[1]]
        # Equally good first choices: pick one at random (diverse demonstrations).
        if first[:2] == second[:2] and abs(first[2] - second[2]) < 0.01 and self.rng.random() < 0.5:
            order[0], order[1] = order[1], order[0]
        free = [k for k in order if not self._fingers_blocked(k, obj_pos)]
        return free + [k for k in order if k not in free]

    def _fingers_blocked(self, key: str, obj_pos: np.ndarray) -> bool:
        """Whether a fixture or object stands above the fingertips' depth under the outer finger.

        Casts vertical rays (``mujoco.mj_ray``) at the outer finger's footprint, ignoring the
        object itself and the robot.
        """
        import mujoco

        c = self.config
        env = self.sim.env
        m, d = env.sim.model._model, env.sim.data._data
        own = env.obj_body_id[self.obj]
        robot = {i for i in range(m.nbody) if (mujoco.mj_id2name(m, mujoco.mjtObj.mjOBJ_BODY, i) or "").startswith(("robot", "gripper", "mount"))}
        u = np.asarray(self.DIRECTIONS[key][0])
        v = np.array([-u[1], u[0]])
        tip_z = obj_pos[2] + c.grasp_depth - 0.015  # lowest point of the fingertips
        geomid = np.zeros(1, dtype=np.int32)
        for along in (c.rim_radius + 0.03, c.rim_radius + 0.05):
            for across in (-0.012, 0.0, 0.012):
                xy = obj_pos[:2] + u * along + v * across
                start = np.array([xy[0], xy[1], tip_z + 0.25])
                for _ in range(5):  # skip robot geoms above the footprint
                    dist = mujoco.mj_ray(m, d, start, np.array([0.0, 0.0, -1.0]), None, 1, own, geomid)
                    if dist < 0:
                        break
                    hit_z = start[2] - dist
                    if m.geom_bodyid[geomid[0]] in robot or m.geom_contype[geomid[0]] == 0 and m.geom_conaffinity[geomid[0]] == 0:
                        start = np.array([xy[0], xy[1], hit_z - 1e-4])
                        continue
                    if hit_z > tip_z:
                        return True
                    break
        return False

    def _grasp_point(self, obj_pos: np.ndarray) -> np.ndarray:
        c = self.config
        d = np.asarray(self.DIRECTIONS[self.side][0])
        offset = np.array([d[0], d[1], 0.0]) * c.rim_radius if self._is_bowl() else np.zeros(3)
        return obj_pos + offset + np.array([0.0, 0.0, c.grasp_depth])

    def _target_rotation(self) -> np.ndarray:
        yaw = self.DIRECTIONS[self.side or "+y"][1]
        return Rotation.from_euler("z", yaw, degrees=True).as_matrix() @ R_DOWN

    # ---------------------------------------------------------------- control
    def _servo(self, raw: dict, target: np.ndarray, gripper: float, speed: float | None = None) -> np.ndarray:
        c = self.config
        pos = np.asarray(raw["robot0_eef_pos"], dtype=float)
        R = Rotation.from_quat(np.asarray(raw["robot0_eef_quat"], dtype=float)).as_matrix()  # (x, y, z, w)
        a_pos = c.kp * (target - pos) / POS_SCALE
        limit = c.max_speed if speed is None else speed
        norm = np.linalg.norm(a_pos)
        if norm > limit:
            a_pos *= limit / norm
        rotvec = Rotation.from_matrix(self._target_rotation() @ R.T).as_rotvec()
        a_rot = np.clip(c.kr * rotvec / ROT_SCALE, -1.0, 1.0)
        return np.concatenate([np.clip(a_pos, -1, 1), a_rot, [gripper]])

    def _next(self, phase: str) -> None:
        self.phase, self.phase_steps = phase, 0
        self.best, self.stall = np.inf, 0  # the progress tracker of _stalled_steps

    def holds_object(self, raw: dict, rest_z: float) -> bool:
        """Whether the fingers hold the object off its support: the object at least 2 cm above
        ``rest_z`` (its height at rest, m), within 6 cm of the grip site, the fingers not open."""
        obj_pos, _ = self.sim.body_pose(self.obj)
        eef = np.asarray(raw["robot0_eef_pos"], dtype=float)
        width = float(np.sum(np.abs(np.asarray(raw["robot0_gripper_qpos"], dtype=float))))
        return bool(obj_pos[2] > rest_z + 0.02 and np.linalg.norm(obj_pos - eef) < 0.06 and width < 0.07)

    def resume(self, raw: dict, rest_z: float) -> str:
        """Take over an episode in its current state (another controller ran it so far): work out
        the phase from the scene and return it.

        * the object held off its support: ``carry`` (toward the target at carrying height);
        * otherwise: ``backoff`` (fingers open, 6 cm up from where the grip site is), then the
          approach to the object from its best grasp side.

        Parameters
        ----------
        raw : dict
            robosuite's raw observations of the current state.
        rest_z : float
            Height of the object's body at rest on its support at the start of the episode (m).
        """
        self.reset()
        obj_pos, _ = self.sim.body_pose(self.obj)
        tgt_pos, _ = self.sim.body_pose(self.target)
        eef = np.asarray(raw["robot0_eef_pos"], dtype=float)
        self.candidates = self._candidates(obj_pos, tgt_pos) if self.config.force_direction is None else \
            [self.config.force_direction]
        self.side = self.candidates.pop(0)
        if self.holds_object(raw, rest_z):
            c = self.config
            self.obj_z0 = rest_z
            self.carry_z = max(rest_z, tgt_pos[2]) + c.carry_clearance + c.grasp_depth
            self.hold = eef.copy()
            self._next("carry")
        else:
            self.hold = eef + np.array([0.0, 0.0, 0.06])
            self._next("backoff")
        return self.phase

    def act(self, raw: dict) -> np.ndarray:
        """The expert's action in the current state, shape ``(7,)`` in ``[-1, 1]``.

        Parameters
        ----------
        raw : dict
            robosuite's raw observations of the current state.
        """
        c = self.config
        obj_pos, _ = self.sim.body_pose(self.obj)
        tgt_pos, _ = self.sim.body_pose(self.target)
        eef = np.asarray(raw["robot0_eef_pos"], dtype=float)
        if self.side is None:
            self.candidates = self._candidates(obj_pos, tgt_pos) if self.config.force_direction is None else [self.config.force_direction]
            self.side = self.candidates.pop(0)
        self.phase_steps += 1
        grasp = self._grasp_point(obj_pos)
        if self.phase == "backoff":
            if self.phase_steps > 8:
                self._next("approach")
            else:
                return self._servo(raw, self.hold, -1.0)
        if self.phase == "approach":
            above = grasp + np.array([0.0, 0.0, c.hover])
            close = np.linalg.norm((above - eef)[:2]) < 0.01 and abs(above[2] - eef[2]) < 0.03
            if close or (self.phase_steps > 40 and np.linalg.norm((above - eef)[:2]) < 0.02):
                self._next("descend")
            else:
                return self._servo(raw, above, -1.0)
        if self.phase == "descend":
            blocked = self._stalled_steps(eef[2]) > 6 and eef[2] - grasp[2] > 0.015
            if blocked and self.candidates:
                # the fingers rest on something (a drawer wall, a neighbour): try the next grasp
                self.side = self.candidates.pop(0)
                self.hold = eef + np.array([0.0, 0.0, 0.06])
                self._next("backoff")
                return self._servo(raw, self.hold, -1.0)
            if np.linalg.norm(grasp - eef) < c.tolerance or self.phase_steps > 40:
                self._next("grasp")
                self.hold = grasp.copy()
            else:
                return self._servo(raw, grasp, -1.0, speed=0.6)
        if self.phase == "grasp":
            if self.phase_steps > c.close_steps:
                self._next("lift")
                self.obj_z0 = obj_pos[2]
                self.carry_z = max(obj_pos[2], tgt_pos[2]) + c.carry_clearance + c.grasp_depth
            else:
                return self._servo(raw, self.hold, 1.0)
        if self.phase == "lift":
            target = np.array([self.hold[0], self.hold[1], self.carry_z])
            stuck = self._stalled_steps(-eef[2]) > 8  # the grip site should rise
            if eef[2] > self.carry_z - 0.03 or self.phase_steps > 40 or stuck:
                if stuck or obj_pos[2] < self.obj_z0 + 0.03:  # object left behind or caught: grasp again
                    if self.candidates:
                        self.side = self.candidates.pop(0)
                    self.hold = eef.copy()
                    self._next("backoff")
                    return self._servo(raw, self.hold, -1.0)
                self._next("carry")
            else:
                return self._servo(raw, target, 1.0)
        if self.phase == "carry":
            shift = tgt_pos[:2] - obj_pos[:2]
            target = np.array([eef[0] + shift[0], eef[1] + shift[1], self.carry_z])
            dist = float(np.linalg.norm(shift))
            stalled = self._stalled_steps(dist) > c.carry_stall_steps and dist < 0.04
            if dist < 0.01 or stalled or self.phase_steps > 80:
                self._next("lower")
            else:
                return self._servo(raw, target, 1.0)
        if self.phase == "lower":
            shift = tgt_pos[:2] - obj_pos[:2]
            drop = (tgt_pos[2] + c.place_height) - obj_pos[2]
            target = eef + np.array([shift[0], shift[1], drop])
            if drop > -0.01 or self.phase_steps > 50:
                self._next("release")
                self.hold = eef.copy()
            else:
                return self._servo(raw, target, 1.0, speed=0.7)
        if self.phase == "release":
            if self.phase_steps > c.release_steps:
                self._next("retreat")
                self.hold = eef + np.array([0.0, 0.0, 0.10])
            else:
                return self._servo(raw, self.hold, -1.0)
        return self._servo(raw, self.hold, -1.0)


# ---------------------------------------------------------------------- episodes
def _obs_record(raw: dict, cameras: bool) -> dict:
    rec = proprio_from_raw(raw)
    if cameras:
        rec["agentview_rgb"] = np.asarray(raw["agentview_image"], dtype=np.uint8)
        rec["eye_in_hand_rgb"] = np.asarray(raw["robot0_eye_in_hand_image"], dtype=np.uint8)
    return rec


def run_episode(
    sim,
    init_state_id: int,
    *,
    max_steps: int = 220,
    noise_std: float = 0.0,
    seed: int = 0,
    expert_config: ExpertConfig | None = None,
    extra_steps: int = 0,
) -> Episode:
    """Run the scripted expert from an official init state.

    Parameters
    ----------
    sim : dynamics.libero.LiberoSimulator
    init_state_id : int
        Index of the official init state.
    max_steps : int
        Episode limit (LIBERO-Spatial: 220).
    noise_std : float
        Standard deviation of Gaussian noise added to the executed position and rotation
        actions (the gripper command is not perturbed); see the module notes.
    seed : int
        Seeds the noise and the grasp-side choice.
    expert_config : ExpertConfig, optional
    extra_steps : int
        Steps recorded after success (0: the episode ends at the first successful step,
        as LIBERO's evaluation does).

    Returns
    -------
    Episode
    """
    t0 = time.process_time()
    rng = np.random.default_rng(seed)
    raw = sim.reset(init_state_id)
    expert = PickPlaceExpert(sim, expert_config, rng)
    recs, actions, executed, states = [], [], [], []
    success, after = False, 0
    for _ in range(max_steps):
        a = expert.act(raw)
        a_exec = a.copy()
        if noise_std > 0:
            a_exec[:6] = np.clip(a_exec[:6] + rng.normal(0.0, noise_std, 6), -1, 1)
        recs.append(_obs_record(raw, sim.cameras))
        states.append(sim.get_state())
        actions.append(a)
        executed.append(a_exec)
        raw, ok = sim.step(a_exec)
        success = success or ok
        if success:
            after += 1
            if after > extra_steps:
                break
    T = len(actions)
    rewards = np.zeros(T)
    dones = np.zeros(T, dtype=np.uint8)
    if success:
        rewards[-1], dones[-1] = 1.0, 1
    obs = {k: np.stack([r[k] for r in recs]) for k in recs[0]}
    return Episode(
        obs=obs,
        actions=np.asarray(actions, dtype=np.float64),
        executed_actions=np.asarray(executed, dtype=np.float64),
        rewards=rewards,
        dones=dones,
        states=np.asarray(states, dtype=np.float64),
        success=bool(success),
        init_state_id=int(init_state_id),
        task_index=int(sim.task.index),
        cpu_seconds=time.process_time() - t0,
    )


# ---------------------------------------------------------------------- generation
@dataclasses.dataclass
class LiberoGeneratorConfig:
    """The ``generator:`` section of a LIBERO configuration.

    Attributes
    ----------
    demos_per_task : int
        Successful demonstrations wanted per task.
    max_attempts_per_task : int
        Episodes tried per task at most. Attempt ``k`` starts from official init state
        ``(first_init_state + k) mod n`` (``n`` = 50 in LIBERO).
    first_init_state : int
        Init state of the first attempt. The default 25 keeps demonstrations (init states
        25..49 for up to 25 attempts) apart from the init states ``0 .. episodes - 1`` that
        :func:`trc.evaluation_libero.evaluate` tests on, so closed-loop success is measured on
        scenes the policy was not trained on.
    noise_std : float
        Exploration noise of the executed actions, see :func:`run_episode`.
    output : str
        Output folder; one ``<task name>_demo.hdf5`` per task.
    workers : int
        Parallel worker processes (one simulator each); with the Ray backend, the most
        episodes run at once across the cluster.
    expert : ExpertConfig
    """

    demos_per_task: int = 10
    max_attempts_per_task: int = 20
    first_init_state: int = 25
    noise_std: float = 0.1
    output: str = "datasets/libero_spatial"
    workers: int = 1
    expert: ExpertConfig = dataclasses.field(default_factory=ExpertConfig)

    def __post_init__(self):
        if isinstance(self.expert, dict):
            self.expert = from_dict(ExpertConfig, self.expert, "generator.expert")
        for key in ("demos_per_task", "max_attempts_per_task", "workers"):
            check_int(getattr(self, key), f"generator.{key}", 1)
        check_real(self.noise_std, "generator.noise_std", 0.0, 1.0, high_open=True)
        check_int(self.first_init_state, "generator.first_init_state", 0)


def init_state_of_attempt(config: LiberoGeneratorConfig, attempt: int, num_init_states: int) -> int:
    """Official init state that generation attempt ``attempt`` (0-based) of a task starts from.

    ``(config.first_init_state + attempt) mod num_init_states``.

    Raises
    ------
    ConfigError
        If ``attempt`` is negative or ``num_init_states`` is not positive.
    """
    if attempt < 0 or num_init_states < 1:
        raise ConfigError(f"attempt must be >= 0 and num_init_states >= 1, got {attempt} and {num_init_states}")
    return (config.first_init_state + int(attempt)) % int(num_init_states)


#: The simulator of a worker process, by ``"<suite>/<task>"`` (at most one).
_WORKER_SIM: dict[str, Any] = {}


def _close_worker_sims() -> None:
    """Close the worker's simulator (at the worker's exit, see :func:`_init_worker`)."""
    while _WORKER_SIM:
        _WORKER_SIM.popitem()[1].close()


def _init_worker() -> None:
    """Set up a worker process (local or Ray): close its simulator when the process ends.

    ``multiprocessing`` runs the finalizer when the worker leaves (for Ray workers, from its
    exit handler), before robosuite's ``eglTerminate``.
    """
    Finalize(None, _close_worker_sims, exitpriority=10)


def _worker_episode(args: tuple) -> Episode:
    """Run one episode in a worker process, reusing the worker's simulator of the task."""
    problem, task_index, init_id, seed, noise_std, expert_cfg = args
    key = f"{problem['suite']}/{task_index}"
    sim = _WORKER_SIM.get(key)
    if sim is None:
        _close_worker_sims()
        sim = LiberoSimulator(
            problem["suite"], task_index, camera_size=problem["camera_size"], render=problem["render"],
            assets=problem.get("assets"),
        )
        _WORKER_SIM[key] = sim
    return run_episode(
        sim, init_id, max_steps=problem["max_steps"], noise_std=noise_std, seed=seed,
        expert_config=ExpertConfig(**expert_cfg),
    )


def generate(problem: LiberoProblem, config: LiberoGeneratorConfig, *, output: str | os.PathLike | None = None,
             seed: int = 0, resume: bool = True, progress: bool = True, backend: str = "local",
             address: str | None = None) -> dict:
    """Generate scripted demonstrations for the tasks of a LIBERO problem.

    Episodes run from the official init states in order (``first_init_state``, then the next
    ones, cycling), each with
    its own seed derived from ``seed``, task and attempt, so the same seed gives the same data
    whatever the number of workers or the backend. Finished episodes are staged in
    ``<output>/.staging`` (atomically, by this process), so an interrupted run resumes where it
    stopped; a task's HDF5 file is written (atomically) when its demonstrations are complete.
    Episodes run in worker processes (``backend="local"``, ``config.workers`` of them) or as
    one Ray task each (``backend="ray"``, see :mod:`trc.backends`; a task only gets the
    problem's dictionary, the task, init state, seed and expert settings, and returns the
    episode; one whose worker dies is run again by Ray).

    Parameters
    ----------
    problem : LiberoProblem
    config : LiberoGeneratorConfig
    output : path, optional
        Output folder; default ``config.output``.
    seed : int
    resume : bool
        Reuse staged episodes and finished task files.
    progress : bool
        Show a tqdm progress bar.
    backend : {"local", "ray"}
    address : str, optional
        ``backend="ray"``: the cluster to join (default: a Ray initialised in this process,
        else a private Ray on this machine with ``config.workers`` CPUs).

    Returns
    -------
    dict
        Per task: ``attempts``, ``successes``, ``success_rate``, ``mean_length``,
        ``cpu_seconds``, ``file``.

    Raises
    ------
    ConfigError
        Before any episode: a bad ``backend`` or ``address``, Ray not installed (the
        message names the ``ray`` extra), an ``address`` not reachable within
        :data:`trc.backends.CONNECT_TIMEOUT` seconds.
    SolverError
        If a local worker process dies, or a Ray task's worker died in all its attempts.
    """
    check_backend(backend, address)
    out = Path(output or config.output)
    out.mkdir(parents=True, exist_ok=True)
    staging = out / ".staging"
    tasks = problem.task_list()
    pdict = problem.worker_dict()
    expert_cfg = dataclasses.asdict(config.expert)
    report: dict = {}
    jobs = []
    staged: dict[int, list] = {}
    infos = {}
    for t in tasks:
        task = get_task(problem.suite, t)
        n_init = len(load_init_states(task))
        infos[t] = task
        final = out / task_file_name(task.name)
        if resume and final.is_file():
            report[t] = {"file": str(final), "skipped": True}
            continue
        done = load_staged(staging, t) if resume else []
        staged[t] = done
        n_ok = sum(e["success"] for e in done)
        tried = {e["attempt"] for e in done}
        need = config.demos_per_task - n_ok
        for attempt in range(config.max_attempts_per_task):
            if need <= 0:
                break
            if attempt in tried:
                continue
            init_id = init_state_of_attempt(config, attempt, n_init)
            ep_seed = int(np.random.SeedSequence([seed, t, attempt]).generate_state(1)[0])
            jobs.append((t, attempt, (pdict, t, init_id, ep_seed, config.noise_std, expert_cfg)))
            need -= 1  # optimistic: queue as many attempts as demos still needed
    # Queue further attempts lazily when episodes fail.
    pending_attempts = {t: sorted({j[1] for j in jobs if j[0] == t}) for t in staged}
    next_attempt = {t: (max(pending_attempts[t] + [e["attempt"] for e in staged[t]], default=-1) + 1) for t in staged}
    bar = tqdm(total=sum(config.demos_per_task - sum(e["success"] for e in staged[t]) for t in staged),
               desc="LIBERO demos", disable=not progress)

    def handle(t, attempt, ep: Episode):
        stage_episode(staging, t, attempt, ep)
        staged[t].append({"attempt": attempt, "success": ep.success, "path": None})
        if ep.success:
            bar.update(1)

    # Each worker closes its simulator when it ends (_init_worker), before EGL is terminated.
    pool = None
    finished = False
    try:
        if jobs:
            pool = TaskPool(_worker_episode, backend=backend, address=address, workers=config.workers,
                            inline=False, initializer=_init_worker)
        running = {pool.submit(args): (t, attempt) for t, attempt, args in jobs}
        for index, ep in (pool.as_completed() if pool is not None else ()):
            t, attempt = running.pop(index)
            handle(t, attempt, ep)
            n_ok = sum(e["success"] for e in staged[t])
            n_running = sum(1 for v in running.values() if v[0] == t)
            if (not ep.success and n_ok + n_running < config.demos_per_task
                    and next_attempt[t] < config.max_attempts_per_task):
                a = next_attempt[t]
                next_attempt[t] += 1
                n_init = len(load_init_states(infos[t]))
                ep_seed = int(np.random.SeedSequence([seed, t, a]).generate_state(1)[0])
                args = (pdict, t, init_state_of_attempt(config, a, n_init), ep_seed, config.noise_std, expert_cfg)
                running[pool.submit(args)] = (t, a)
        finished = True
    finally:
        bar.close()
        if pool is not None:
            pool.close(finished)
    for t in staged:
        episodes = load_staged(staging, t, with_data=True)
        ok = [e for e in episodes if e["episode"].success]
        ok.sort(key=lambda e: e["attempt"])
        ok = ok[: config.demos_per_task]
        final = out / task_file_name(infos[t].name)
        write_task_file(final, [e["episode"] for e in ok], problem.file_attrs(t))
        n = len(episodes)
        report[t] = {
            "attempts": n,
            "successes": sum(e["episode"].success for e in episodes),
            "success_rate": sum(e["episode"].success for e in episodes) / max(n, 1),
            "mean_length": float(np.mean([len(e["episode"]) for e in ok])) if ok else float("nan"),
            "cpu_seconds": float(sum(e["episode"].cpu_seconds for e in episodes)),
            "file": str(final),
        }
    return report
