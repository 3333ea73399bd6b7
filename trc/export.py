"""Deployment: export a trained TRC controller to TorchScript, ``torch.export`` or ONNX.

The exported program maps ``(current_state (B, n), target_state (B, n))`` to the planned
controls ``(B, N, m)`` (float32; batch size free, or fixed for AOTInductor's ``batch=``),
exactly as ``model(x0, target)``:

==================  =============  ===================  ==================================
format              file           trajectory feedback  runs with
==================  =============  ===================  ==================================
``torchscript``     ``.ts``        yes                  ``torch.jit.load`` (C++: libtorch)
``onnx``            ``.onnx``      yes                  onnxruntime (opset 17), TensorRT, ...
``torch_export``    ``.pt2``       yes (fixed-step)     ``torch.export.load``
``aoti``            ``.aoti.pt2``  yes (fixed-step)     ``torch._inductor.aoti_load_package``
==================  =============  ===================  ==================================

What works, and why:

* **TorchScript** and **ONNX** record the model by *tracing*
  (:func:`torch.jit.trace`; the ONNX exporter is PyTorch's TorchScript-based one,
  ``dynamo=False``). Tracing runs the plant rollouts of the trajectory-error feedback once and
  records their tensor operations. That is exact for fixed-step integrators (``rk4``,
  ``euler``, ...), whose grid of time steps is the same for every input; adaptive methods
  (``dopri5``) and adaptive halting (``act``) take data-dependent decisions that a trace
  would freeze, so they are refused. For the export the plant is wrapped in
  :class:`IntervalRollout`, which steps the rollouts without input checks (the same steps as
  :meth:`dynamics.Plant.rollout`: :mod:`dynamics.fixed_step`). The ONNX export adds the
  operator translation the exporter lacks at opset 17, ``rms_norm`` (as
  ``x / sqrt(mean(x^2) + eps) * w``, Zhang & Sennrich, NeurIPS 2019). (The error encoder's
  pooling is a matrix product and its ``asinh`` is written out already,
  :mod:`trc.models.feedback`.)
* **torch.export** (:func:`torch.export.export`, non-strict, dynamic batch dimension) captures
  the network and the feedback rollouts of the one-step fixed-grid methods
  (:data:`dynamics.fixed_step.ONE_STEP_METHODS`) and of the exact zero-order hold of linear
  plants, which have no data-dependent control flow. Discrete-time plants and torchdiffeq's
  Adams methods are refused with feedback (``feedback=False`` exports the plant-free network,
  which changes the controls of a model trained with feedback). The model's own finiteness
  check on the inputs is data-dependent and is dropped from the exported program (shapes are
  still checked).
* **AOTInductor** (``aoti``) compiles that exported program ahead of time to C++ with
  TorchInductor (:func:`torch._inductor.aoti_compile_and_package`; needs a C++ compiler at
  export time, not at run time): the plant steps fuse into a few loops and the per-operator
  dispatch of eager PyTorch (10-20 us per operator on a small CPU) disappears. A program
  compiled for a fixed small batch size (``batch=1``, a controller's) goes further: every
  intermediate buffer lives on the stack (:data:`AOTI_LATENCY_OPTIONS`), so a plan with
  feedback rollouts takes about 0.1 ms with the ``fast`` preset. Compiling takes minutes for
  long horizons (the rollouts are unrolled, and the matrix products are autotuned).

:func:`export_controller` writes the file atomically and checks that the exported program
reproduces the PyTorch model on fresh random inputs; :func:`load_controller` reads any of the
formats into a NumPy-in, NumPy-out callable that checks the inputs' shapes (the state dimension
is stored with every program; an AOTInductor program would take any width).

Command line (sizes and latencies of the exported files)::

    python -m trc.export --checkpoint runs/double_integrator/model.pt --format all --out exported/
    python -m trc.export --checkpoint runs/van_der_pol/model.pt --format aoti --batch 1 --out exported/
    python -m trc.export --checkpoint runs/van_der_pol/model.pt --format aoti --batch 1024 --processes 2
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import os
import sys
import types
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch._inductor
import torch._inductor.exc
from torch import nn

from torchdiffeq import odeint

from dynamics.errors import ConfigError, DimensionError, TRCError
from dynamics.fixed_step import ONE_STEP_METHODS, zoh_rollout
from dynamics.plant import EXACT, FIXED_STEP_METHODS, Plant
from dynamics.zoh import lifted_rollout

from .io import atomic_path

__all__ = [
    "FORMATS",
    "ControllerProgram",
    "IntervalRollout",
    "ExportResult",
    "ExportedController",
    "export_controller",
    "load_controller",
    "planner_inputs",
    "main",
]

#: Export format -> default file suffix.
FORMATS = {"torchscript": ".ts", "onnx": ".onnx", "torch_export": ".pt2", "aoti": ".aoti.pt2"}

#: ONNX opset of the exports.
ONNX_OPSET = 17

_SUFFIX_FORMAT = {".aoti.pt2": "aoti", ".ts": "torchscript", ".pt": "torchscript", ".onnx": "onnx", ".pt2": "torch_export"}

#: TorchInductor options of every AOTInductor compilation: ``max_autotune`` with the ``CPP``
#: GEMM backend compiles the network's small matrix products into Inductor's own kernels where
#: the autotuner measures them faster (about 1 us each at batch 1, against 7-18 us for an
#: external ``addmm``).
AOTI_OPTIONS = {"max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"}

#: Extra options for a free batch size, or a fixed one above :data:`LATENCY_BATCH`: plan the
#: memory of the intermediate buffers once instead of allocating each per call.
AOTI_DYNAMIC_OPTIONS = {"memory_planning": True}

#: Extra options for a fixed batch size up to :data:`LATENCY_BATCH` (a controller's program):
#: only Inductor's own GEMM kernels (``CPP``; with ``ATEN`` as well if one product has no CPP
#: kernel), and every intermediate buffer, of static shape, on the C++ stack, with no tensor
#: allocated per buffer and call (a feedback rollout of N steps has several buffers per step,
#: and allocating them cost more than computing them). Inductor allows this only in programs
#: without external kernels (hence the matrix-product convolutions of
#: :class:`~trc.models.feedback.TrajectoryErrorEncoder` and the ``CPP`` GEMM backend) and turns
#: it off itself when the buffers are too large for the stack. Memory planning would turn it
#: off too.
AOTI_LATENCY_OPTIONS = {"memory_planning": False, "aot_inductor.allow_stack_allocation": True,
                        "max_autotune_gemm_backends": "CPP"}

#: Extra options for a large or free batch size when the feedback rollouts step a vector field
#: (Runge-Kutta; not the lifted matrices of an exact zero-order hold, nor a discrete plant):
#: vectorise every loop (Inductor's tiling heuristics off). Inductor leaves a loop scalar when it
#: has many strided loads and stores, which the fused rollout kernels have, the batch's states
#: interleaved in ``(batch, n)`` buffers; the vector fields' ``sin`` and ``cos`` were then one
#: ``std::sin`` call per element. Vectorised, one batch-1024 call of the ``fast`` preset on one
#: thread took 20.6 instead of 25.8 ms on the cart-pole, 30.3 instead of 36.2 on the rocket,
#: 18.6 instead of 22.2 on the pendulum and 19.1 instead of 20.8 on Van der Pol (each pair
#: timed interleaved, 2026-12-01). On the double integrator's lifted rollouts it was slower
#: (15.1 instead of 12.3 ms), hence only for vector fields.
AOTI_VECTOR_FIELD_OPTIONS = {"cpp.enable_tiling_heuristics": False}

#: Largest fixed batch size compiled with :data:`AOTI_LATENCY_OPTIONS`.
LATENCY_BATCH = 16

_BATCH_KEY = "trc_batch"  # package metadata: the fixed batch size of an AOTInductor program
#: Metadata key (AOTInductor) and extra file (TorchScript, torch.export) with the program's state
#: dimension, which :class:`ExportedController` checks the inputs against (an AOTInductor program
#: does not check its input shapes itself; ONNX keeps the shapes in its graph).
_STATE_DIM_KEY = "trc_state_dim"


def _aoti_compile(exported, buffer: io.BytesIO, batch: int | None = None, vector_field: bool = False,
                  state_dim: int | None = None) -> None:
    """AOTInductor package of ``exported`` into ``buffer`` with :data:`AOTI_OPTIONS` and, for a
    fixed ``batch`` up to :data:`LATENCY_BATCH`, :data:`AOTI_LATENCY_OPTIONS`, otherwise
    :data:`AOTI_DYNAMIC_OPTIONS` (and :data:`AOTI_VECTOR_FIELD_OPTIONS` if ``vector_field``, the
    program's rollouts step a vector field). A fixed batch size and ``state_dim`` are stored in
    the package's metadata (``trc_batch``, ``trc_state_dim``).

    Inductor's memory planner recurses over the buffers' live ranges and overflows Python's
    stack on the longest unrolled rollouts (the rocket's 7 states x 50 steps); the program is
    then compiled without it (correct, somewhat slower at batch 1). A latency program in which
    a matrix product has no CPP kernel is compiled again with ATEN's as well.
    """
    latency = _is_latency_batch(batch)
    options = {**AOTI_OPTIONS, **(AOTI_LATENCY_OPTIONS if latency else AOTI_DYNAMIC_OPTIONS)}
    if vector_field and not latency:
        options.update(AOTI_VECTOR_FIELD_OPTIONS)
    metadata = {_BATCH_KEY: batch, _STATE_DIM_KEY: state_dim}
    if any(v is not None for v in metadata.values()):
        options["aot_inductor.metadata"] = {k: str(v) for k, v in metadata.items() if v is not None}

    def compile_with(inductor_configs):
        buffer.seek(0)
        buffer.truncate()
        with _stack_allocating_wrapper() if latency else contextlib.nullcontext():
            torch._inductor.aoti_compile_and_package(exported, package_path=buffer, inductor_configs=inductor_configs)

    try:
        compile_with(options)
    except torch._inductor.exc.InductorError as exc:
        causes = _causes(exc)
        if options["memory_planning"] and "RecursionError" in causes:
            compile_with({**options, "memory_planning": False})
        elif latency and "NoValidChoicesError" in causes:  # a product CPP cannot do
            compile_with({**options, "max_autotune_gemm_backends": AOTI_OPTIONS["max_autotune_gemm_backends"]})
        else:
            raise


def _is_latency_batch(batch: int | None) -> bool:
    """A fixed batch size up to :data:`LATENCY_BATCH`: a controller's program, compiled with
    :data:`AOTI_LATENCY_OPTIONS` (Inductor's own GEMMs only, buffers on the stack)."""
    return batch is not None and batch <= LATENCY_BATCH


def _causes(exc: BaseException) -> set[str]:
    """Class names of ``exc`` and of the exceptions it wraps (Inductor's ``inner_exception``, a
    lowering error's ``__cause__``/``__context__``), e.g. ``{"InductorError", "LoweringException",
    "NoValidChoicesError"}``."""
    names, todo = set(), [exc]
    while todo:
        e = todo.pop()
        if e is None or type(e).__name__ in names:
            continue
        names.add(type(e).__name__)
        todo += [getattr(e, "inner_exception", None), e.__cause__, e.__context__]
    return names


@contextlib.contextmanager
def _stack_allocating_wrapper():
    """Compile with Inductor's stack-allocating C++ wrapper for the CPU.

    Inductor picks its CPU wrapper class once per process, from the options of the first
    compilation (``torch._inductor.codegen.common.init_backend_registration``); after a
    compilation without stack allocation, a later one with it would silently get the heap
    wrapper. This registers the stack-allocating class for the duration of one compilation.
    """
    from torch._inductor.codegen import common
    from torch._inductor.codegen.cpp_wrapper_cpu_array_ref import CppWrapperCpuArrayRef

    common.init_backend_registration()
    registered = common.device_codegens["cpu"]
    common.device_codegens["cpu"] = dataclasses.replace(registered, cpp_wrapper_codegen=CppWrapperCpuArrayRef)
    try:
        yield
    finally:
        common.device_codegens["cpu"] = registered


def _format_of(path: Path) -> str | None:
    """The export format a file name implies (longest matching suffix), or ``None``."""
    return next((fmt for suffix, fmt in _SUFFIX_FORMAT.items() if path.name.endswith(suffix)), None)


def _is_aoti_package(path: Path) -> bool:
    """Whether the ``.pt2`` archive at ``path`` holds an AOTInductor program (its compiled
    model lives under ``data/aotinductor/``; a :func:`torch.export.save` archive has none)."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/data/aotinductor/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


class IntervalRollout(Plant):
    """A fixed-step plant whose rollout records only tensor operations (for traces and exports).

    ``rollout`` takes the same fixed steps as :meth:`dynamics.Plant.rollout` without its input
    checks: torchdiffeq's step function of the plant's method, interval by interval
    (:func:`dynamics.fixed_step.zoh_rollout`, also where the plant's own rollout computes those
    steps in closed form, :meth:`dynamics.Rocket.fixed_step_rollout`: its prefix sums are
    products with a constant left factor, which Inductor's own GEMM kernels do not take, so a
    batch-1 program would lose its stack-allocated buffers); for the Adams methods, one
    :func:`torchdiffeq.odeint` call per control interval on the grid
    ``[0, dt / substeps, ..., dt]`` with ``u_k`` held (the vector fields are autonomous between
    switches). Discrete-time plants step their difference equation. A linear plant with the
    ``"exact"`` method uses its lifted zero-order-hold matrices for ``horizon`` steps, computed
    here once and stored as constants (:mod:`dynamics.zoh`).

    Parameters
    ----------
    plant : dynamics.Plant
        A continuous plant with a fixed-step or the exact method, or a discrete plant.
    horizon : int, optional
        Horizon of the rollouts; needed for the exact method.

    Raises
    ------
    ConfigError
        If the plant integrates with an adaptive method.
    """

    def __init__(self, plant: Plant, horizon: int | None = None):
        nn.Module.__init__(self)
        exact = not plant.discrete and plant.method == EXACT
        if exact and horizon is None:
            raise ConfigError(f"{plant.name}: the exact method needs the horizon of the rollouts")
        if not plant.discrete and not exact and plant.method not in FIXED_STEP_METHODS:
            raise ConfigError(f"{plant.name}: method {plant.method!r} is adaptive; IntervalRollout needs one of {FIXED_STEP_METHODS}")
        self.inner = plant
        self.lifted = None
        if exact:
            with torch.no_grad():
                self.lifted = tuple(t.detach().clone() for t in plant.lifted_matrices(int(horizon)))
        self.name, self.discrete = plant.name, plant.discrete
        self.state_names, self.control_names = plant.state_names, plant.control_names
        self.dt, self.method, self.substeps = plant.dt, plant.method, plant.substeps

    @property
    def steps_vector_field(self) -> bool:
        """Whether the rollouts integrate a vector field (not the lifted matrices of an exact
        zero-order hold, nor a discrete plant's difference equation)."""
        return self.lifted is None and not self.discrete

    def f(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.inner.f(x, u)

    def discrete_step(self, x: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return self.inner.discrete_step(x, u)

    def rollout(self, x0: torch.Tensor, controls: torch.Tensor, dt: float | None = None) -> torch.Tensor:
        """Trajectories ``(B, horizon + 1, state_dim)`` of controls ``(B, horizon, control_dim)``."""
        if self.lifted is not None:
            Phi, Gamma = self.lifted
            if dt is not None or controls.shape[1] != Gamma.shape[1]:
                Phi, Gamma = self.inner.lifted_matrices(controls.shape[1], dt)
            return lifted_rollout(Phi.to(x0), Gamma.to(x0), x0, controls)
        h = self.dt if dt is None else float(dt)
        if not self.discrete and self.method in ONE_STEP_METHODS:
            return zoh_rollout(self.inner.f, x0, controls, h, self.method, self.substeps).transpose(0, 1)
        states = [x0]
        x = x0
        if not self.discrete:
            grid = torch.linspace(0.0, h, self.substeps + 1, dtype=x0.dtype, device=x0.device)
        for k in range(controls.shape[1]):
            u = controls[:, k]
            if self.discrete:
                x = self.inner.discrete_step(x, u)
            else:
                x = odeint(lambda t, y, u=u: self.inner.f(y, u), x, grid, method=self.method)[-1]
            states.append(x)
        return torch.stack(states, dim=1)


class ControllerProgram(nn.Module):
    """The function that is exported: ``(current_state, target_state) -> controls``.

    Parameters
    ----------
    model : trc.models.TinyRecursiveControl
        Deep-copied, in eval mode.
    feedback : bool
        Roll the controls out through the model's plant (wrapped in :class:`IntervalRollout`)
        at every cycle, the model's normal behaviour when it has a plant; ``False`` runs the
        plant-free network. The inference-time stages ``tracking`` and ``correction_steps``
        (:mod:`trc.models.tracking`, :mod:`trc.models.correction`) are always left out.
    """

    def __init__(self, model, feedback: bool):
        super().__init__()
        self.model = copy.deepcopy(model).eval().requires_grad_(False)
        # Tracking and the terminal correction differentiate the plant (autograd), which an
        # exported program cannot hold: the program is the network with its feedback only.
        self.model.config = self.model.config.replace(tracking=False, correction_steps=0)
        # the error sequence's scale as one vector (trc.models.feedback.trajectory_error)
        self.model.inverse_scale_rows = (1.0 / self.model.state_scale).repeat(self.model.horizon)
        self.feedback = bool(feedback)
        self.rollout_plant = IntervalRollout(self.model.plant, self.model.horizon) if self.feedback else None

    def forward(self, current_state: torch.Tensor, target_state: torch.Tensor) -> torch.Tensor:
        """Controls ``(B, horizon, control_dim)`` of states and targets ``(B, state_dim)``."""
        plant = self.rollout_plant if self.feedback else False
        return self.model(current_state, target_state, plant=plant)


@dataclass
class ExportResult:
    """What :func:`export_controller` wrote.

    Attributes
    ----------
    path : pathlib.Path
    format : str
        One of :data:`FORMATS`.
    feedback : bool
        Whether the exported program includes the trajectory-error feedback rollouts.
    size_bytes : int
        File size.
    max_abs_error : float
        Largest difference between the exported program's controls and the PyTorch model's on
        the verification inputs (control units).
    batch : int or None
        The program's fixed batch size, or ``None`` for a free one.
    """

    path: Path
    format: str
    feedback: bool
    size_bytes: int
    max_abs_error: float
    batch: int | None = None


def _has_feedback(model) -> bool:
    return getattr(model, "error_encoder", None) is not None and getattr(model, "plant", None) is not None


def _check_exportable(model, fmt: str, feedback: bool) -> None:
    if fmt not in FORMATS:
        raise ConfigError(f"unknown export format {fmt!r}; choose one of {sorted(FORMATS)}")
    if getattr(model, "halting", None) is not None:
        raise ConfigError(
            "the model uses adaptive halting (act: true), whose number of cycles depends on the input; "
            "it cannot be exported as a fixed graph"
        )
    if feedback:
        if not _has_feedback(model):
            raise ConfigError("feedback=True needs a model with trajectory-error feedback and a plant")
        plant = model.plant
        if not plant.discrete and plant.method not in (EXACT, *FIXED_STEP_METHODS):
            raise ConfigError(
                f"the model's plant integrates with the adaptive method {plant.method!r}, whose steps depend on "
                f"the input; export needs a fixed-step method {FIXED_STEP_METHODS} (or feedback=False)"
            )
        if fmt in ("torch_export", "aoti") and (plant.discrete or plant.method not in (EXACT, *ONE_STEP_METHODS)):
            raise ConfigError(
                f"{fmt} captures the feedback rollouts of continuous plants with one of the methods "
                f"{(EXACT, *ONE_STEP_METHODS)} only (the plant {plant.name!r} "
                f"{'is discrete-time' if plant.discrete else f'uses {plant.method!r}'}); use format 'torchscript' or "
                "'onnx', or feedback=False for a model trained without feedback"
            )


def _state_check_for_export(self, t, what: str):
    """``TinyRecursiveControl._check_states`` without its data-dependent finiteness test."""
    if not torch.is_tensor(t):
        t = torch.as_tensor(np.asarray(t, dtype=float))
    if t.ndim != 2 or t.shape[1] != self.state_dim:
        raise DimensionError(f"{what} has shape {tuple(t.shape)}; expected (batch, state_dim={self.state_dim})")
    return t.to(dtype=self.state_scale.dtype, device=self.state_scale.device)


@contextlib.contextmanager
def _onnx_translations():
    """Register the ONNX translation of ``rms_norm`` for one export."""
    from torch.onnx import symbolic_helper as sh

    def rms_norm(g, x, normalized_shape, weight, eps):
        shape = sh._get_const(normalized_shape, "is", "normalized_shape")
        axes = list(range(-len(shape), 0))
        value = None if sh._is_none(eps) else sh._maybe_get_const(eps, "f")
        if value is None or not isinstance(value, float):
            value = float(torch.finfo(torch.float32).eps)  # nn.RMSNorm's default eps=None
        mean_square = g.op("ReduceMean", g.op("Mul", x, x), axes_i=axes, keepdims_i=1)
        rms = g.op("Sqrt", g.op("Add", mean_square, g.op("Constant", value_t=torch.tensor(value, dtype=torch.float32))))
        y = g.op("Div", x, rms)
        return y if sh._is_none(weight) else g.op("Mul", y, weight)

    translations = {"aten::rms_norm": rms_norm}
    for name, fn in translations.items():
        torch.onnx.register_custom_op_symbolic(name, fn, ONNX_OPSET)
    try:
        yield
    finally:
        for name in translations:
            torch.onnx.unregister_custom_op_symbolic(name, ONNX_OPSET)


def _example_inputs(model, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """States and targets drawn around the model's state normalisation box, float32, CPU."""
    g = torch.Generator().manual_seed(seed)
    c, s = model.state_center.detach().float().cpu(), model.state_scale.detach().float().cpu()
    x0 = c + s * (2 * torch.rand(batch, model.state_dim, generator=g) - 1)
    xt = c + s * (2 * torch.rand(batch, model.state_dim, generator=g) - 1)
    return x0, xt


def export_controller(
    model,
    path: str | os.PathLike,
    *,
    format: str | None = None,
    feedback: bool | None = None,
    batch: int | None = None,
    example_batch: int = 2,
    verify_batch: int = 5,
    atol: float = 1e-4,
    rtol: float = 1e-5,
    seed: int = 0,
) -> ExportResult:
    """Export a trained TRC model for deployment and verify the exported program.

    Parameters
    ----------
    model : trc.models.TinyRecursiveControl
        A trained model (copied to the CPU in float32; the original is not changed).
    path : str or PathLike
        Output file, written atomically.
    format : {"torchscript", "onnx", "torch_export", "aoti"}, optional
        Default from the suffix (``.ts``/``.pt``, ``.onnx``, ``.pt2``, ``.aoti.pt2``).
    feedback : bool, optional
        Include the trajectory-error feedback rollouts; default: whenever the model has them.
    batch : int, optional
        ``aoti`` only: compile for this fixed batch size (calls with another batch size raise
        :class:`~dynamics.errors.DimensionError`). Up to :data:`LATENCY_BATCH`, every
        intermediate buffer then lives on the stack (:data:`AOTI_LATENCY_OPTIONS`), which makes
        a batch-1 controller several times faster. Default: a free batch size.
    example_batch : int
        Batch size of the example inputs of the trace (the exported batch size is free).
    verify_batch : int
        Batch size of the fresh inputs on which the exported program is compared with the
        PyTorch model (a different size than ``example_batch`` checks the free batch size).
    atol, rtol : float
        Accepted difference of the controls: ``max |u_exported - u| <= atol + rtol max |u|``
        (control units; the relative part covers the float32 rounding of large controls, e.g. a
        rocket's thrust in newtons, when a compiler reorders the operations of long rollouts),
        or up to the float32 rounding of the PyTorch model itself, ``max |u - u_float64|`` on
        the same inputs, where that is larger (an untrained rocket controller's thrust moves by
        about 2 N out of 1e4 N between float32 and float64).
    seed : int
        Seed of the trace's example inputs; the verification inputs use ``seed + 1``.

    Returns
    -------
    ExportResult

    Raises
    ------
    ConfigError
        On an unknown format or suffix, or a model the format cannot represent (see the module
        documentation: adaptive halting, adaptive integrators, feedback of discrete plants with
        ``torch_export`` or ``aoti``), or a ``batch`` that is not a positive integer or is
        given for another format than ``aoti``.
    TRCError
        If the exported program's controls differ from the model's by more than that (the
        file is not written).
    """
    path = Path(path)
    fmt = format or _format_of(path)
    if fmt is None:
        raise ConfigError(f"cannot tell the export format from suffix {path.suffix!r}; pass format= one of {sorted(FORMATS)}")
    feedback = _has_feedback(model) if feedback is None else bool(feedback)
    _check_exportable(model, fmt, feedback)
    if batch is not None:
        if fmt != "aoti":
            raise ConfigError(f"a fixed batch size is an AOTInductor option; format {fmt!r} always has a free one")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"batch must be a positive integer or None, got {batch!r}")
        example_batch = verify_batch = batch
    cpu_model = copy.deepcopy(model).cpu().float()
    program = ControllerProgram(cpu_model, feedback).eval()
    if fmt == "aoti" and program.model.error_encoder is not None and not _is_latency_batch(batch):
        # external GEMMs (not stack-allocated): convolutions without the im2col copies
        program.model.error_encoder.shifted_sum = True
    example = _example_inputs(cpu_model, example_batch, seed=seed)
    fresh = _example_inputs(cpu_model, verify_batch, seed=seed + 1)
    with torch.no_grad():
        expected = program(*fresh).numpy()
        rounding = _float32_rounding(program, fresh, expected)

    with atomic_path(path) as tmp, warnings.catch_warnings():
        # Tracing warns about every tensor-to-Python conversion it freezes; they are the fixed
        # time grid of the rollouts and the input checks (see the module documentation).
        warnings.simplefilter("ignore")
        if fmt == "torchscript":
            with torch.no_grad():
                traced = torch.jit.trace(program, example, check_trace=False)
            torch.jit.save(traced, str(tmp), _extra_files={_STATE_DIM_KEY: str(cpu_model.state_dim)})
        elif fmt == "onnx":
            with _onnx_translations(), torch.no_grad():
                torch.onnx.export(
                    program, example, str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                    input_names=["current_state", "target_state"], output_names=["controls"],
                    dynamic_axes={"current_state": {0: "batch"}, "target_state": {0: "batch"}, "controls": {0: "batch"}},
                )
        else:
            program.model._check_states = types.MethodType(_state_check_for_export, program.model)
            size = torch.export.Dim("batch", min=1, max=1 << 20)
            dynamic = None if batch is not None else ({0: size}, {0: size})
            with torch.no_grad():
                exported = torch.export.export(program, example, dynamic_shapes=dynamic, strict=False)
            buffer = io.BytesIO()  # both writers insist on a .pt2 name; the temporary file has none
            if fmt == "torch_export":
                torch.export.save(exported, buffer, extra_files={_STATE_DIM_KEY: str(cpu_model.state_dim)})
            else:
                rollout = program.rollout_plant
                _aoti_compile(exported, buffer, batch, state_dim=cpu_model.state_dim,
                              vector_field=rollout is not None and rollout.steps_vector_field)
            tmp.write_bytes(buffer.getvalue())
        got = ExportedController(tmp, fmt)(*(t.numpy() for t in fresh))
        error = float(np.abs(got - expected).max())
        if not error <= max(atol + rtol * float(np.abs(expected).max()), rounding):
            raise TRCError(f"the exported {fmt} program differs from the PyTorch model by up to {error:.3g} "
                           f"(more than atol={atol:g} + rtol={rtol:g} max|u| and than the model's own float32 "
                           f"rounding, {rounding:.3g})")
    return ExportResult(path=path, format=fmt, feedback=feedback, size_bytes=path.stat().st_size, max_abs_error=error,
                        batch=batch)


def _float32_rounding(program: nn.Module, inputs: tuple[torch.Tensor, ...], expected: np.ndarray) -> float:
    """``max |u - u_float64|``: how far float32 rounding alone moves the controls ``expected``
    that the float32 ``program`` gives on ``inputs`` (the same program run in float64)."""
    with torch.no_grad():
        reference = copy.deepcopy(program).double()(*(t.double() for t in inputs)).numpy()
    return float(np.abs(reference - expected).max())


class ExportedController:
    """An exported controller loaded for inference: ``controller(x0, target) -> controls``.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`export_controller`.
    format : str, optional
        Default from the suffix; a ``.pt2`` archive that holds an AOTInductor package loads as
        ``aoti``.

    Every format runs with ``torch.get_num_threads()`` intra-op threads (for ONNX, the number
    at load time).

    Raises
    ------
    ConfigError
        On an unknown format or suffix.
    FileNotFoundError
        If the file does not exist.
    """

    def __init__(self, path: str | os.PathLike, format: str | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"exported controller {str(path)!r} does not exist")
        fmt = format or _format_of(path)
        if fmt == "torch_export" and format is None and _is_aoti_package(path):
            fmt = "aoti"  # an AOTInductor package saved as plain .pt2 (export_controller(format="aoti"))
        if fmt not in FORMATS:
            raise ConfigError(f"unknown export format {fmt!r} (file {str(path)!r}); choose one of {sorted(FORMATS)}")
        self.path, self.format = path, fmt
        #: The program's fixed batch size (AOTInductor programs compiled with ``batch=``), else None.
        self.batch: int | None = None
        extra = {_STATE_DIM_KEY: ""}  # filled in by the TorchScript and torch.export loaders
        if fmt == "onnx":
            import onnxruntime as ort

            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = torch.get_num_threads()  # as the torch formats; its default: every core
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            extra[_STATE_DIM_KEY] = self._session.get_inputs()[0].shape[1]
            self._run = lambda x0, xt: self._session.run(None, {"current_state": x0, "target_state": xt})[0]
        elif fmt == "aoti":
            module = torch._inductor.aoti_load_package(io.BytesIO(path.read_bytes()))
            metadata = module.get_metadata()
            fixed = metadata.get(_BATCH_KEY)
            self.batch = None if fixed is None else int(fixed)
            extra[_STATE_DIM_KEY] = metadata.get(_STATE_DIM_KEY, "")
            loader = module.loader  # called directly: the package's Python wrapper re-parses its call spec per call
            self._module = module
            self._run = lambda x0, xt: loader.run([torch.from_numpy(x0), torch.from_numpy(xt)])[0].numpy()
        else:
            if fmt == "torchscript":
                with warnings.catch_warnings():  # TorchScript is deprecated upstream, still supported
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(str(path), _extra_files=extra)
            else:
                module = torch.export.load(io.BytesIO(path.read_bytes()), extra_files=extra).module()

            def run(x0, xt):
                with torch.no_grad():
                    return module(torch.from_numpy(x0), torch.from_numpy(xt)).numpy()

            self._module = module
            self._run = run
        dim = extra[_STATE_DIM_KEY]
        dim = dim.decode() if isinstance(dim, bytes) else str(dim)
        #: The state dimension the inputs must have (None for files written before it was stored).
        self.state_dim: int | None = int(dim) if dim.isdigit() else None

    def __call__(self, current_state, target_state) -> np.ndarray:
        """Controls ``(B, horizon, control_dim)`` (float32) of ``(B, state_dim)`` states and targets.

        Raises
        ------
        DimensionError
            If the inputs are not 2-D arrays of equal shape, their width is not the program's
            state dimension, or their batch size is not the program's fixed one.
        """
        x0, xt = planner_inputs(current_state, target_state)
        if self.state_dim is not None and x0.shape[1] != self.state_dim:
            raise DimensionError(f"{self.path.name} plans for {self.state_dim} states; "
                                 f"got states of width {x0.shape[1]}")
        if self.batch is not None and x0.shape[0] != self.batch:
            raise DimensionError(f"{self.path.name} was compiled for batch {self.batch}; got batch {x0.shape[0]}")
        return self._run(x0, xt)


def planner_inputs(current_state, target_state) -> tuple[np.ndarray, np.ndarray]:
    """States and targets as contiguous float32 arrays ``(B, state_dim)``, as exported programs take them.

    Raises
    ------
    DimensionError
        If they are not 2-D arrays of equal shape.
    """
    x0 = np.ascontiguousarray(current_state, dtype=np.float32)
    xt = np.ascontiguousarray(target_state, dtype=np.float32)
    if x0.ndim != 2 or x0.shape != xt.shape:
        raise DimensionError(f"states {x0.shape} and targets {xt.shape} must both be (batch, state_dim)")
    return x0, xt


def load_controller(path: str | os.PathLike, format: str | None = None) -> ExportedController:
    """Load a file written by :func:`export_controller`; see :class:`ExportedController`."""
    return ExportedController(path, format)


# ---------------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.export``."""
    p = argparse.ArgumentParser(
        prog="python -m trc.export",
        description="Export a trained TRC model (model.pt) to TorchScript, ONNX, torch.export or AOTInductor; print "
        "the file sizes, the agreement with PyTorch and the CPU latencies (AOTInductor compiles for minutes on long "
        "horizons).",
    )
    p.add_argument("--checkpoint", required=True, help="model file written by python -m trc.train")
    p.add_argument("--format", default="all", choices=[*FORMATS, "all"], help="export format (default: all that apply)")
    p.add_argument("--out", default="exported", help="output folder (default: exported/)")
    p.add_argument("--no-feedback", action="store_true", help="export the plant-free network")
    p.add_argument("--batch", type=int, default=None,
                   help="compile the aoti program for this fixed batch size (faster; default: a free batch size; "
                   "the other formats always have a free one)")
    p.add_argument("--repeats", type=int, default=50, help="timed calls per latency measurement")
    p.add_argument("--threads", type=int, default=1, help="torch/onnxruntime intra-op threads (default 1)")
    p.add_argument("--processes", type=int, default=1,
                   help="also time each program's large batch (the aoti program's fixed one, else 1024) in a "
                   "trc.parallel.ParallelController of this many processes, that batch in each (default 1: not)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the example (trace), verification and latency inputs: seed, seed + 1, seed + 2")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m trc.export``; returns the exit status (0, 1 failure, 2 usage)."""
    from .evaluation import measure_latency
    from .loading import load

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.processes < 1 or args.threads < 1:
        parser.error("--processes and --threads must be at least 1")
    torch.set_num_threads(args.threads)
    try:
        model = load(args.checkpoint)
    except TRCError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    feedback = False if args.no_feedback else None
    formats = list(FORMATS) if args.format == "all" else [args.format]
    out = Path(args.out)
    rows = []
    for batch in (1, 1024):
        x0, xt = _example_inputs(model, batch, seed=args.seed + 2)
        with torch.no_grad():
            ms = measure_latency(lambda: model(x0, xt, plant=False if args.no_feedback else None), args.repeats)
        rows.append(("pytorch (eager)", batch, ms, None, None))
    status = 0
    for fmt in formats:
        path = out / f"{Path(args.checkpoint).parent.name or 'model'}{FORMATS[fmt]}"
        batch = args.batch if fmt == "aoti" else None
        try:
            result = export_controller(model, path, format=fmt, feedback=feedback, batch=batch, seed=args.seed)
        except (ConfigError, TRCError) as exc:
            print(f"{fmt}: not exported: {exc}", file=sys.stderr)
            status = 1 if args.format != "all" else status
            continue
        ctrl = load_controller(path)
        for batch in (1, 1024) if ctrl.batch is None else (ctrl.batch,):
            x0, xt = (t.numpy() for t in _example_inputs(model, batch, seed=args.seed + 2))
            ms = measure_latency(lambda: ctrl(x0, xt), args.repeats)
            rows.append((f"{fmt} ({path})", batch, ms, result.size_bytes, result.max_abs_error))
        if args.processes > 1:
            rows.append(_parallel_row(model, path, fmt, ctrl.batch or 1024, args))
    print(f"{'program':<48} {'batch':>6} {'latency ms':>11} {'size KiB':>9} {'max |du|':>9}")
    for name, batch, ms, size, err in rows:
        size_s = "" if size is None else f"{size / 1024:.0f}"
        err_s = "" if err is None else f"{err:.1e}"
        print(f"{name:<48} {batch:>6} {ms:>11.3f} {size_s:>9} {err_s:>9}")
    return status


def _parallel_row(model, path: Path, fmt: str, batch: int, args) -> tuple:
    """The CLI's row of ``path`` in a :class:`~trc.parallel.ParallelController` of ``args.processes``
    processes, ``batch`` plans in each per call."""
    from .parallel import parallel_latency

    x0, xt = (t.numpy() for t in _example_inputs(model, batch * args.processes, seed=args.seed + 2))
    ms = parallel_latency(path, x0, xt, args.processes, args.repeats, threads=args.threads)
    return (f"{fmt}, {args.processes} processes ({batch} plans each)", batch * args.processes, ms, None, None)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
