"""LIBERO manipulation tasks as plants: a Panda arm in MuJoCo, driven by delta end-effector actions.

LIBERO (Liu et al., "LIBERO: Benchmarking Knowledge Transfer for Lifelong Robot Learning",
NeurIPS 2023 Datasets and Benchmarks) defines its tasks in BDDL files and fixes the initial
scenes of every evaluation episode in "init state" files; both ship in the PyPI package
``libero``. The scenes are simulated by robosuite 1.4 on MuJoCo: a Panda arm under robosuite's
operational-space controller ``OSC_POSE`` (Khatib 1987) at 20 Hz, with a 7-DoF action
``u = (dx, dy, dz, dax, day, daz, g)`` in ``[-1, 1]^7``: a position step of up to 5 cm and an
axis-angle rotation step of up to 0.5 rad of the end-effector goal (world frame), and the
gripper command ``g`` (``-1`` open, ``+1`` close).

This module

* writes LIBERO's configuration file and points LIBERO at its assets, so that importing LIBERO
  never asks an interactive question (:func:`configure_libero`);
* lists the tasks of a suite with their instruction, BDDL file and official init states
  (:func:`get_task`, :func:`load_init_states`);
* wraps one task's simulation (:class:`LiberoSimulator`): build, reset to an official init
  state, step, camera images, LIBERO's own success predicate;
* registers the plant ``"libero"`` (:class:`LiberoPlant`), whose state is MuJoCo's flattened
  simulator state ``(time, qpos, qvel)`` -- the ``states`` of LIBERO's data sets.

Assets
------
LIBERO's meshes and textures are not in the PyPI package. They are looked up, in this order,
in the ``assets`` argument, the environment variable ``TRC_LIBERO_ASSETS``, the ``assets``
entry of an existing ``$LIBERO_CONFIG_PATH/config.yaml``, and ``../shared/libero-assets``
beside the repository (the subset for LIBERO-Spatial, -Object and -Goal used by the tests and
CI).

Rendering is headless through EGL: set ``MUJOCO_GL=egl`` (done here if unset).
"""

from __future__ import annotations

import atexit
import dataclasses
import importlib.util
import os
import tempfile
import weakref
from pathlib import Path
from typing import Mapping

import numpy as np
import torch
import yaml

from .errors import ConfigError, DimensionError, NonFiniteError, UnknownNameError
from .plant import Plant
from .registry import register

__all__ = [
    "SUITES",
    "MAX_STEPS",
    "ASSETS_ENV",
    "LiberoPaths",
    "LiberoTask",
    "configure_libero",
    "default_assets_path",
    "get_task",
    "suite_tasks",
    "load_init_states",
    "proprio_from_raw",
    "LiberoSimulator",
    "LiberoPlant",
]

#: Task suites of LIBERO.
SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
#: Episode length limits used in LIBERO evaluations (steps of 50 ms).
MAX_STEPS = {"libero_spatial": 220, "libero_object": 280, "libero_goal": 300, "libero_10": 520, "libero_90": 400}
#: Environment variable naming the folder of LIBERO's assets.
ASSETS_ENV = "TRC_LIBERO_ASSETS"
#: Folders every LIBERO asset tree has.
_ASSET_FOLDERS = ("scenes", "textures", "stable_scanned_objects")
#: Number of idle steps LIBERO's own evaluation runs after setting an init state, so objects
#: settle before the policy acts (``libero/lifelong/metric.py``).
SETTLE_STEPS = 5
#: Render settings: ``"libero"`` as LIBERO renders, ``"fast"`` without MSAA and floor/table
#: reflections and with an off-screen buffer of the camera size (about 3x cheaper in software
#: EGL rendering; images differ by about 3/255 on average).
RENDER_MODES = ("fast", "libero")


# ---------------------------------------------------------------------- configuration
@dataclasses.dataclass(frozen=True)
class LiberoPaths:
    """Where LIBERO's files are.

    Attributes
    ----------
    config_file : Path
        ``$LIBERO_CONFIG_PATH/config.yaml``.
    benchmark_root, bddl_files, init_states, assets : Path
        LIBERO's package folder, its task definitions, its init states and the assets used.
    """

    config_file: Path
    benchmark_root: Path
    bddl_files: Path
    init_states: Path
    assets: Path


_CONFIGURED: LiberoPaths | None = None


def default_assets_path() -> Path:
    """``<repository>/../shared/libero-assets``, the assets subset used by tests and CI."""
    return Path(__file__).resolve().parents[1].parent / "shared" / "libero-assets"


def _package_root() -> Path:
    """LIBERO's ``libero/libero`` folder, found without importing LIBERO (which could prompt)."""
    spec = importlib.util.find_spec("libero")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            "LIBERO is not installed; install it with `pip install --no-deps libero==0.1.1 robosuite==1.4.0 "
            "bddl==1.0.1 easydict future termcolor 'mujoco>=3.3,<3.10'`"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "libero"


def _check_assets(path: Path, origin: str) -> Path:
    path = Path(path).expanduser().resolve()
    missing = [name for name in _ASSET_FOLDERS if not (path / name).is_dir()]
    if missing:
        raise ConfigError(
            f"LIBERO assets folder {str(path)!r} (from {origin}) is missing {missing}; expected LIBERO's "
            f"asset layout with folders {list(_ASSET_FOLDERS)}. Point the `assets` option, the environment "
            f"variable {ASSETS_ENV} or the `assets` entry of LIBERO's config.yaml at a copy of LIBERO's assets."
        )
    return path


def configure_libero(assets: str | os.PathLike | None = None, config_dir: str | os.PathLike | None = None) -> LiberoPaths:
    """Make LIBERO importable without an interactive prompt and point it at its assets.

    LIBERO reads its paths from ``$LIBERO_CONFIG_PATH/config.yaml`` and, when that file is
    missing, asks on standard input where to put its data sets -- which fails without a
    terminal. This function writes the file when it is missing (atomically), sets
    ``LIBERO_CONFIG_PATH``, imports LIBERO and tells it where the assets are (LIBERO 0.1.1
    otherwise looks beside its package and then tries to download them).

    Parameters
    ----------
    assets : path, optional
        Folder of LIBERO's assets; see the module notes for the default.
    config_dir : path, optional
        Folder of LIBERO's ``config.yaml``; default ``$LIBERO_CONFIG_PATH``, else ``~/.libero``.

    Returns
    -------
    LiberoPaths

    Raises
    ------
    ConfigError
        If LIBERO is not installed, the assets folder does not have LIBERO's layout, or an
        existing ``config.yaml`` is not a YAML mapping.
    """
    global _CONFIGURED
    root = _package_root()
    config_dir = Path(config_dir or os.environ.get("LIBERO_CONFIG_PATH") or Path.home() / ".libero").expanduser()
    config_file = config_dir / "config.yaml"
    existing: dict = {}
    if config_file.is_file():
        try:
            existing = yaml.safe_load(config_file.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"LIBERO config {str(config_file)!r} is not valid YAML: {exc}") from exc
        if not isinstance(existing, dict):
            raise ConfigError(f"LIBERO config {str(config_file)!r} must hold a mapping, got {existing!r}")
    if assets is not None:
        assets_path = _check_assets(Path(assets), "the `assets` argument")
    elif os.environ.get(ASSETS_ENV):
        assets_path = _check_assets(Path(os.environ[ASSETS_ENV]), f"${ASSETS_ENV}")
    elif existing.get("assets") and Path(existing["assets"]).is_dir():
        assets_path = _check_assets(Path(existing["assets"]), str(config_file))
    else:
        assets_path = _check_assets(default_assets_path(), "the default ../shared/libero-assets")
    if not config_file.is_file():
        data = {
            "benchmark_root": str(root),
            "bddl_files": str(root / "bddl_files"),
            "init_states": str(root / "init_files"),
            "datasets": str(config_dir / "datasets"),
            "assets": str(assets_path),
        }
        _atomic_write_text(config_file, yaml.safe_dump(data, sort_keys=False))
    os.environ["LIBERO_CONFIG_PATH"] = str(config_dir)
    os.environ.setdefault("MUJOCO_GL", "egl")
    import libero.libero as libero_pkg  # safe now: the config file exists

    libero_pkg._assets_path_cache = str(assets_path)  # LIBERO 0.1.1 ignores config["assets"]
    _CONFIGURED = LiberoPaths(config_file, root, root / "bddl_files", root / "init_files", assets_path)
    return _CONFIGURED


def _atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename (never half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _paths() -> LiberoPaths:
    return _CONFIGURED if _CONFIGURED is not None else configure_libero()


# ---------------------------------------------------------------------- tasks
@dataclasses.dataclass(frozen=True)
class LiberoTask:
    """One LIBERO task.

    Attributes
    ----------
    suite : str
        Suite name, e.g. ``"libero_spatial"``.
    index : int
        Index of the task in the suite (LIBERO's default task order).
    name : str
        Task name (the BDDL file name without extension).
    language : str
        The language instruction.
    bddl_file : Path
        The task's BDDL file.
    init_states_file : Path
        The task's official init states (LIBERO's ``.pruned_init`` file).
    """

    suite: str
    index: int
    name: str
    language: str
    bddl_file: Path
    init_states_file: Path


def _check_suite(suite: str) -> str:
    if suite not in SUITES:
        raise UnknownNameError(f"unknown LIBERO suite {suite!r}; choose one of {list(SUITES)}")
    return suite


def suite_tasks(suite: str) -> list[LiberoTask]:
    """The tasks of ``suite`` in LIBERO's default order.

    Raises
    ------
    UnknownNameError
        If ``suite`` is not one of :data:`SUITES`.
    """
    _check_suite(suite)
    paths = _paths()
    from libero.libero.benchmark import get_benchmark_dict

    benchmark = get_benchmark_dict()[suite](task_order_index=0)
    tasks = []
    for i in range(benchmark.get_num_tasks()):
        t = benchmark.get_task(i)
        tasks.append(
            LiberoTask(
                suite=suite,
                index=i,
                name=t.name,
                language=t.language,
                bddl_file=paths.bddl_files / t.problem_folder / t.bddl_file,
                init_states_file=paths.init_states / t.problem_folder / t.init_states_file,
            )
        )
    return tasks


def get_task(suite: str, task: int | str) -> LiberoTask:
    """Task ``task`` (index or name) of ``suite``.

    Raises
    ------
    UnknownNameError
        On an unknown suite, an index out of range or an unknown task name.
    """
    tasks = suite_tasks(suite)
    if isinstance(task, (int, np.integer)) and not isinstance(task, bool):
        if not 0 <= int(task) < len(tasks):
            raise UnknownNameError(f"{suite} has tasks 0..{len(tasks) - 1}; got task={task}")
        return tasks[int(task)]
    for t in tasks:
        if task in (t.name, t.language):
            return t
    raise UnknownNameError(f"unknown task {task!r} in {suite}; choose an index 0..{len(tasks) - 1} or one of {[t.name for t in tasks]}")


def load_init_states(task: LiberoTask) -> np.ndarray:
    """The official init states of ``task``, shape ``(num_init_states, state_dim)`` float64.

    Each row is a flattened MuJoCo state ``(time, qpos, qvel)`` of the task's scene.
    """
    if not task.init_states_file.is_file():
        raise ConfigError(f"init states file {str(task.init_states_file)!r} of {task.name} does not exist")
    states = torch.load(task.init_states_file, weights_only=False)  # a numpy array saved by torch
    return np.asarray(states, dtype=np.float64)


# ---------------------------------------------------------------------- observations
def proprio_from_raw(raw: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Proprioception in the naming and units of LIBERO's data sets, from robosuite observations.

    Returns
    -------
    dict
        ``ee_pos`` (3,) m, ``ee_ori`` (3,) axis-angle rad (from robosuite's ``(x, y, z, w)``
        quaternion), ``ee_states`` (6,) their concatenation, ``gripper_states`` (2,) finger
        joint positions m, ``joint_states`` (7,) arm joint angles rad.
    """
    from robosuite.utils.transform_utils import quat2axisangle

    ee_pos = np.asarray(raw["robot0_eef_pos"], dtype=np.float64)
    ee_ori = quat2axisangle(np.array(raw["robot0_eef_quat"], dtype=np.float64))
    return {
        "ee_pos": ee_pos,
        "ee_ori": ee_ori,
        "ee_states": np.concatenate([ee_pos, ee_ori]),
        "gripper_states": np.asarray(raw["robot0_gripper_qpos"], dtype=np.float64),
        "joint_states": np.asarray(raw["robot0_joint_pos"], dtype=np.float64),
    }


# ---------------------------------------------------------------------- simulator
#: Simulators with a rendering context that are not closed yet (closed at exit, see
#: :func:`_close_open_simulators`).
_OPEN_SIMULATORS: weakref.WeakSet = weakref.WeakSet()


def _close_open_simulators() -> None:
    """Close every simulator still open; runs at interpreter exit, before EGL is terminated.

    robosuite registers ``eglTerminate`` with :mod:`atexit` when it creates the first EGL
    context, and its render contexts free themselves in ``__del__``, which at exit runs after
    the display is gone and prints ``EGLError`` tracebacks. This hook is (re-)registered after
    each rendering simulator is built, so it runs before ``eglTerminate`` (:mod:`atexit` runs
    the last registered first).
    """
    for sim in list(_OPEN_SIMULATORS):
        sim.close()


class LiberoSimulator:
    """One LIBERO task in MuJoCo: build, reset to an official init state, step, render.

    Parameters
    ----------
    suite : str
        LIBERO suite, see :data:`SUITES`.
    task : int or str
        Task index or name in the suite.
    camera_size : int
        Height and width of both camera images (LIBERO uses 128).
    cameras : bool
        Render the agent-view and eye-in-hand cameras (``False``: physics only, faster).
    render : {"fast", "libero"}
        Render settings, see :data:`RENDER_MODES`.
    control_freq : int
        Control frequency in Hz (LIBERO: 20).
    assets : path, optional
        LIBERO's assets, see :func:`configure_libero`.

    Raises
    ------
    UnknownNameError
        On an unknown suite or task.
    ConfigError
        If LIBERO is not installed or its assets are missing or incomplete.

    Notes
    -----
    Images are returned as LIBERO renders and stores them (OpenGL convention, upside down);
    flip both axes (``img[::-1, ::-1]``) to view them.

    Call :meth:`close` when done, or use the simulator as a context manager
    (``with LiberoSimulator(...) as sim:``): it frees the MuJoCo rendering resources and the
    EGL context in the order they need. Simulators still open at interpreter exit are closed
    then, before robosuite terminates EGL. Several simulators may render in one process; each
    makes its own EGL context current before it renders.
    """

    action_dim = 7

    def __init__(
        self,
        suite: str = "libero_spatial",
        task: int | str = 0,
        *,
        camera_size: int = 128,
        cameras: bool = True,
        render: str = "fast",
        control_freq: int = 20,
        assets: str | os.PathLike | None = None,
    ):
        if render not in RENDER_MODES:
            raise ConfigError(f"render must be one of {RENDER_MODES}, got {render!r}")
        if isinstance(camera_size, bool) or not isinstance(camera_size, int) or camera_size < 8:
            raise ConfigError(f"camera_size must be an integer >= 8, got {camera_size!r}")
        configure_libero(assets) if assets is not None else _paths()
        self.task = get_task(suite, task)
        self.camera_size = camera_size
        self.cameras = bool(cameras)
        self.render_mode = render
        self.control_freq = int(control_freq)
        self.init_states = load_init_states(self.task)
        from libero.libero.envs.env_wrapper import ControlEnv

        self.env_kwargs = {
            "bddl_file_name": str(self.task.bddl_file),
            "camera_heights": camera_size,
            "camera_widths": camera_size,
            "has_renderer": False,
            "has_offscreen_renderer": self.cameras,
            "use_camera_obs": self.cameras,
            "control_freq": self.control_freq,
            "ignore_done": True,
            "hard_reset": False,
        }
        self._env = None
        try:
            self._env = ControlEnv(**self.env_kwargs)
        except (FileNotFoundError, ValueError, AssertionError) as exc:
            raise ConfigError(
                f"could not build LIBERO task {self.task.name!r} from assets {str(_paths().assets)!r}: {exc}"
            ) from exc
        if self._render_context() is not None:
            _OPEN_SIMULATORS.add(self)
            # after robosuite's atexit eglTerminate (registered with the first EGL context), so it runs before it
            atexit.unregister(_close_open_simulators)
            atexit.register(_close_open_simulators)
        self._apply_render_settings()
        self._env.reset()
        self.state_dim = int(self._env.get_sim_state().size)
        if self.init_states.shape[1] != self.state_dim:
            raise DimensionError(
                f"init states of {self.task.name} have {self.init_states.shape[1]} entries; the scene has {self.state_dim}"
            )
        self.steps = 0
        self.last_raw: dict | None = None
        self._cameras_enabled = True

    # -------------------------------------------------------------- properties
    @property
    def language(self) -> str:
        """The task's language instruction."""
        return self.task.language

    @property
    def env(self):
        """The underlying robosuite environment (LIBERO's problem class)."""
        return self._env.env

    @property
    def sim(self):
        """robosuite's ``MjSim``."""
        return self._env.env.sim

    @property
    def dt(self) -> float:
        """Control period in seconds."""
        return 1.0 / self.control_freq

    def _render_context(self):
        """robosuite's off-screen render context of the simulation (None without cameras or once closed)."""
        env = self._env
        sim = getattr(env.env, "sim", None) if env is not None else None
        return getattr(sim, "_render_context_offscreen", None) if sim is not None else None

    def _make_current(self) -> None:
        """Make this simulator's EGL context current, so its cameras render into it.

        robosuite makes a context current only when it creates it; with several simulators in
        one process the last one built (or none, after one is closed) would be current.
        """
        if self.cameras:
            ctx = self._render_context()
            if ctx is not None:
                ctx.gl_ctx.make_current()

    def _apply_render_settings(self) -> None:
        if not self.cameras or self.render_mode == "libero":
            return
        import mujoco

        sim = self.sim
        model = sim.model._model
        model.vis.quality.offsamples = 0
        model.vis.global_.offwidth = self.camera_size
        model.vis.global_.offheight = self.camera_size
        ctx = self._render_context()
        if ctx is not None:
            ctx.gl_ctx.make_current()
            ctx.con.free()
            ctx._set_mujoco_context_and_buffers()
            ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    # -------------------------------------------------------------- episodes
    def reset(self, init_state: int | np.ndarray = 0, settle_steps: int = SETTLE_STEPS,
              seed: int | None = None) -> dict:
        """Reset to an official init state (by index) or to a given flattened MuJoCo state.

        After setting the state, ``settle_steps`` idle actions (zeros) let objects settle, as
        LIBERO's evaluation does; they are not counted in :attr:`steps`.

        robosuite's reset draws visual details of the scene (about 10 % of the agent-view pixels
        change between draws; the physical state does not) from NumPy's global generator. The
        reset seeds that generator with ``seed`` (default: the init state's index, 0 for a given
        state) and restores its previous state afterwards, so an init state always gives the
        same images, whatever ran before in the process. (The physical state after a reset still
        depends on the previous episode at the level of floating-point rounding, about 1e-17,
        through robosuite's controller and MuJoCo's solver state.)

        Returns
        -------
        dict
            robosuite's raw observation dictionary.

        Raises
        ------
        UnknownNameError
            If the init state index is out of range.
        DimensionError
            If a given state does not have ``state_dim`` entries.
        """
        if isinstance(init_state, (int, np.integer)) and not isinstance(init_state, bool):
            n = len(self.init_states)
            if not 0 <= int(init_state) < n:
                raise UnknownNameError(f"{self.task.name} has init states 0..{n - 1}; got {init_state}")
            state = self.init_states[int(init_state)]
        else:
            state = np.asarray(init_state, dtype=np.float64)
            if state.shape != (self.state_dim,):
                raise DimensionError(f"init state has shape {state.shape}; expected ({self.state_dim},)")
        self._set_cameras_enabled(True)
        self._make_current()
        if seed is None:
            seed = int(init_state) if isinstance(init_state, (int, np.integer)) else 0
        outer = np.random.get_state()
        np.random.seed(int(seed))
        try:
            self._env.reset()
        finally:
            np.random.set_state(outer)
        raw = self._env.set_init_state(state)
        for _ in range(settle_steps):
            raw, _, _, _ = self._env.step(np.zeros(self.action_dim))
        self.steps = 0
        self.last_raw = raw
        return raw

    def _set_cameras_enabled(self, enabled: bool) -> None:
        """Switch robosuite's camera observables on or off (off: the step renders nothing).

        robosuite's ``Observable.set_enabled`` restarts an observable's sampling clock, which
        would shift (or skip) its next sample; the clock is kept across the switch instead, so
        a camera switched back on samples within the step exactly as if it had never been off
        (each control step is one whole sampling period). Uses the observable's private clock
        attributes of robosuite 1.4.0, the version LIBERO pins.
        """
        if not self.cameras or enabled == self._cameras_enabled:
            return
        for name, obs in self.env._observables.items():
            if not name.endswith("_image"):
                continue
            clock = (obs._time_since_last_sample, obs._sampled, obs._current_delay)
            value = obs._current_observed_value
            obs.set_enabled(enabled)
            obs._time_since_last_sample, obs._sampled, obs._current_delay = clock
            obs._current_observed_value = value
        self._cameras_enabled = enabled

    def step(self, action: np.ndarray, render: bool = True) -> tuple[dict, bool]:
        """Apply one 7-DoF action for one control period.

        Parameters
        ----------
        action : array_like, shape ``(7,)``
            ``(dx, dy, dz, dax, day, daz, gripper)`` in ``[-1, 1]`` (clipped by robosuite).
        render : bool
            Render the cameras in this step. ``False`` skips the rendering (most of a step's
            cost), and ``raw`` then has no images. Skipping changes neither the physics nor
            the images of later rendered steps (taken at the same instant within the step as
            when every step renders).

        Returns
        -------
        raw : dict
            robosuite's raw observation dictionary.
        success : bool
            LIBERO's goal predicate of the task after the step.

        Raises
        ------
        DimensionError, NonFiniteError
            On a malformed action.
        """
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (self.action_dim,):
            raise DimensionError(f"action has shape {action.shape}; expected ({self.action_dim},)")
        if not np.isfinite(action).all():
            raise NonFiniteError(f"action contains NaN or infinity: {action.tolist()}")
        self._set_cameras_enabled(bool(render))
        if render:
            self._make_current()
        raw, _, _, _ = self._env.step(action)
        self.steps += 1
        self.last_raw = raw
        return raw, bool(self._env.check_success())

    def success(self) -> bool:
        """LIBERO's goal predicate of the task in the current state."""
        return bool(self._env.check_success())

    def get_state(self) -> np.ndarray:
        """Flattened MuJoCo state ``(time, qpos, qvel)``, shape ``(state_dim,)``."""
        return np.asarray(self._env.get_sim_state(), dtype=np.float64).copy()

    def set_state(self, state: np.ndarray) -> dict:
        """Set the flattened MuJoCo state and return the raw observations there."""
        state = np.asarray(state, dtype=np.float64)
        if state.shape != (self.state_dim,):
            raise DimensionError(f"state has shape {state.shape}; expected ({self.state_dim},)")
        self._set_cameras_enabled(True)
        self._make_current()
        raw = self._env.regenerate_obs_from_state(state)
        self.last_raw = raw
        return raw

    # -------------------------------------------------------------- privileged information
    def body_pose(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        """World position (3,) m and quaternion ``(w, x, y, z)`` (4,) of object ``name``'s body."""
        env = self.env
        obj = env.objects_dict.get(name) or env.fixtures_dict.get(name)
        if obj is None:
            raise UnknownNameError(f"no object {name!r} in {self.task.name}; objects: {sorted(env.objects_dict)}")
        bid = env.sim.model.body_name2id(obj.root_body)
        return np.array(env.sim.data.body_xpos[bid]), np.array(env.sim.data.body_xquat[bid])

    def goal(self) -> list[list[str]]:
        """The goal predicates of the task's BDDL file, e.g. ``[["on", "akita_black_bowl_1", "plate_1"]]``."""
        return [list(p) for p in self.env.parsed_problem["goal_state"]]

    def env_args(self) -> dict:
        """Arguments that rebuild the environment (``env_args`` of LIBERO's data sets)."""
        return {
            "type": 1,
            "env_name": self._env.problem_name,
            "problem_name": self._env.problem_name,
            "bddl_file": str(self.task.bddl_file),
            "env_kwargs": {k: v for k, v in self.env_kwargs.items() if k != "bddl_file_name"} | {
                "controller": "OSC_POSE",
                "camera_names": ["agentview", "robot0_eye_in_hand"],
                "render": self.render_mode,
            },
        }

    def problem_info(self) -> dict:
        """``problem_info`` of LIBERO's data sets: problem and domain names, instruction."""
        return {
            "problem_name": self._env.problem_name,
            "domain_name": self._env.domain_name,
            "language_instruction": self.task.language,
        }

    def close(self) -> None:
        """Free the rendering resources and the simulation; calling it again does nothing.

        The order matters: MuJoCo's GPU resources are freed with the simulator's own EGL
        context current (freeing them under another simulator's context would delete that
        one's textures and buffers), then the EGL context is destroyed, then robosuite frees
        the simulation. robosuite's render context, whose ``__del__`` would otherwise do this
        later (at interpreter exit: after EGL is terminated, printing ``EGLError``), finds
        nothing left to free.
        """
        env = self.__dict__.get("_env")
        if env is None:
            return
        ctx = self._render_context()
        self._env = None
        _OPEN_SIMULATORS.discard(self)
        try:
            if ctx is not None:
                env.env.sim._render_context_offscreen = None
                ctx.gl_ctx.make_current()
                ctx.con.free()
                ctx.gl_ctx.free()
        finally:
            env.close()

    def __enter__(self) -> LiberoSimulator:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self):
        # A simulator nobody closed, collected before exit; __del__ cannot raise.
        try:
            self.close()
        except Exception:
            pass


# ---------------------------------------------------------------------- plant
@register("libero")
class LiberoPlant(Plant):
    """A LIBERO task as a discrete-time plant simulated by MuJoCo.

    State ``x``: MuJoCo's flattened state ``(time, qpos, qvel)`` of the scene, shape
    ``(batch, state_dim)`` (92 entries for LIBERO-Spatial task 0; the size of the task's
    official init states). Control ``u``: the 7-DoF delta end-effector action in ``[-1, 1]``,
    shape ``(batch, 7)``. ``x[k+1] = F(x[k], u[k])`` is one 50 ms control period of robosuite's
    operational-space controller and MuJoCo's contact dynamics.

    Parameters
    ----------
    suite : str
        LIBERO suite, see :data:`SUITES`.
    task : int or str
        Task index or name in the suite.
    dt : float
        Control period in seconds; LIBERO uses 0.05 (20 Hz).
    assets : path, optional
        LIBERO's assets, see :func:`configure_libero`.

    Notes
    -----
    The simulator is built on the first step (about 10 s), without cameras. MuJoCo is not
    vectorised: a batch is simulated one state after the other. The plant is not
    differentiable (:attr:`differentiable` is ``False``; :meth:`linearize` raises); the learned
    arm model :class:`dynamics.learned_arm.LearnedArmDynamics` is its differentiable surrogate.
    """

    discrete = True
    #: MuJoCo through robosuite gives no gradients.
    differentiable = False
    control_names = ("dx", "dy", "dz", "dax", "day", "daz", "gripper")
    control_units = ("1", "1", "1", "1", "1", "1", "1")

    def __init__(self, suite: str = "libero_spatial", task: int | str = 0, *, dt: float = 0.05, assets=None, **kwargs):
        _paths() if assets is None else configure_libero(assets)
        self.task = get_task(suite, task)
        self.assets = assets
        self.init_states = load_init_states(self.task)
        n = self.init_states.shape[1]
        self.state_names = tuple(["time"] + [f"s{i}" for i in range(1, n)])
        self.state_units = ("s",) + ("1",) * (n - 1)
        control_freq = round(1.0 / dt)
        if not np.isclose(control_freq * dt, 1.0):
            raise ConfigError(f"dt must be 1 / (an integer control frequency in Hz), got {dt}")
        kwargs.setdefault("u_min", -1.0)
        kwargs.setdefault("u_max", 1.0)
        super().__init__(dt=dt, **kwargs)
        self._sim: LiberoSimulator | None = None

    def config(self) -> dict:
        return {"name": self.name, "suite": self.task.suite, "task": self.task.index, "dt": self.dt}

    @property
    def simulator(self) -> LiberoSimulator:
        """The task's :class:`LiberoSimulator` (without cameras), built on first use."""
        if self._sim is None:
            self._sim = LiberoSimulator(
                self.task.suite, self.task.index, cameras=False, control_freq=round(1.0 / self.dt), assets=self.assets
            )
        return self._sim

    def initial_states(self) -> torch.Tensor:
        """The official init states, shape ``(num_init_states, state_dim)``."""
        return torch.as_tensor(self.init_states, dtype=self.u_min.dtype)

    def discrete_step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """One control period from each state of the batch (see the class notes); no gradient."""
        sim = self.simulator
        x_np = x.detach().cpu().double().numpy()
        u_np = u.detach().cpu().double().numpy()
        out = np.empty_like(x_np)
        for i in range(x_np.shape[0]):  # MuJoCo steps one scene at a time
            sim.set_state(x_np[i])
            sim.step(np.clip(u_np[i], -1.0, 1.0))
            out[i] = sim.get_state()
        return torch.as_tensor(out, dtype=x.dtype, device=x.device)

    def success(self, x: torch.Tensor) -> torch.Tensor:
        """LIBERO's goal predicate at each state, shape ``(batch,)`` bool."""
        x = self.check_state(x)
        sim = self.simulator
        flags = []
        for row in x.detach().cpu().double().numpy():
            sim.set_state(row)
            flags.append(sim.success())
        return torch.tensor(flags, dtype=torch.bool)

    def proprio(self, x: torch.Tensor) -> dict[str, np.ndarray]:
        """LIBERO's proprioceptive observations at each state (see :func:`proprio_from_raw`), batched."""
        x = self.check_state(x)
        sim = self.simulator
        rows = [proprio_from_raw(sim.set_state(row)) for row in x.detach().cpu().double().numpy()]
        return {k: np.stack([r[k] for r in rows]) for k in rows[0]}

    def linearize(self, x_eq, u_eq):
        raise NotImplementedError(
            "the LIBERO plant is a MuJoCo simulation without gradients; linearise its differentiable "
            "surrogate dynamics.make('learned_arm', ...) instead"
        )

    def to_iosys(self, name=None):
        raise NotImplementedError("the LIBERO plant has no python-control form; use its simulator")
