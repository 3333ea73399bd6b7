"""Export a trained TRC controller to TorchScript, ``torch.export``, AOTInductor or ONNX.

The exported program maps ``(current_state (B, n), target_state (B, n))`` to the planned
controls ``(B, N, m)`` (float32; batch size free, or fixed for AOTInductor's ``batch=``),
exactly as ``model(x0, target)``; a model with ``time_to_go`` takes the steps to go ``(B,)``
(float32, whole numbers in ``[1, N]``) as a third input, as ``model(x0, target, steps_to_go=k)``:

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
  :class:`dynamics.interval.IntervalRollout`, which steps the rollouts without input checks
  (the same steps as :meth:`dynamics.Plant.rollout`: :mod:`dynamics.fixed_step`). The ONNX
  export adds the operator translation the exporter lacks at opset 17, ``rms_norm`` (as
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
  TorchInductor (:mod:`trc.export.inductor`).

:func:`export_controller` writes the file atomically and checks that the exported program
reproduces the PyTorch model on fresh random inputs (loaded with
:class:`~trc.export.controller.ExportedController`).
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import types
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.onnx import symbolic_helper

from dynamics.errors import ConfigError, DimensionError, TRCError
from dynamics.fixed_step import ONE_STEP_METHODS
from dynamics.interval import IntervalRollout
from dynamics.plant import EXACT, FIXED_STEP_METHODS

from ..io import atomic_path
from .controller import ExportedController
from .files import FORMATS, HORIZON_KEY, STATE_DIM_KEY, format_of
from .inductor import _aoti_compile, _is_latency_batch

__all__ = ["FORMATS", "ONNX_OPSET", "ControllerProgram", "ExportResult", "export_controller"]

#: ONNX opset of the exports.
ONNX_OPSET = 17


class ControllerProgram(nn.Module):
    """The function that is exported: ``(current_state, target_state[, steps_to_go]) -> controls``.

    Parameters
    ----------
    model : trc.models.TinyRecursiveControl
        Deep-copied, in eval mode.
    feedback : bool
        Roll the controls out through the model's plant (wrapped in
        :class:`dynamics.interval.IntervalRollout`) at every cycle, the model's normal
        behaviour when it has a plant; ``False`` runs the plant-free network. The
        inference-time stages ``tracking`` and ``correction_steps`` (:mod:`trc.models.tracking`,
        :mod:`trc.models.correction`) are always left out.
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

    def forward(self, current_state: torch.Tensor, target_state: torch.Tensor,
                steps_to_go: torch.Tensor | None = None) -> torch.Tensor:
        """Controls ``(B, horizon, control_dim)`` of states and targets ``(B, state_dim)`` (and,
        for a model with ``time_to_go``, the steps to go ``(B,)``)."""
        plant = self.rollout_plant if self.feedback else False
        return self.model(current_state, target_state, plant=plant, steps_to_go=steps_to_go)


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
    """Raise :class:`~dynamics.errors.ConfigError` if format ``fmt`` cannot represent ``model``
    (with its feedback rollouts if ``feedback``); see the module documentation."""
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


def _steps_check_for_export(self, steps_to_go, batch: int):
    """``TinyRecursiveControl._check_steps_to_go`` without its data-dependent range test (a program
    takes the steps to go as a float tensor ``(B,)``)."""
    return None if steps_to_go is None else torch.round(steps_to_go).long()


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

    def rms_norm(g, x, normalized_shape, weight, eps):
        shape = symbolic_helper._get_const(normalized_shape, "is", "normalized_shape")
        axes = list(range(-len(shape), 0))
        value = None if symbolic_helper._is_none(eps) else symbolic_helper._maybe_get_const(eps, "f")
        if value is None or not isinstance(value, float):
            value = float(torch.finfo(torch.float32).eps)  # nn.RMSNorm's default eps=None
        mean_square = g.op("ReduceMean", g.op("Mul", x, x), axes_i=axes, keepdims_i=1)
        rms = g.op("Sqrt", g.op("Add", mean_square, g.op("Constant", value_t=torch.tensor(value, dtype=torch.float32))))
        y = g.op("Div", x, rms)
        return y if symbolic_helper._is_none(weight) else g.op("Mul", y, weight)

    translations = {"aten::rms_norm": rms_norm}
    for name, fn in translations.items():
        torch.onnx.register_custom_op_symbolic(name, fn, ONNX_OPSET)
    try:
        yield
    finally:
        for name in translations:
            torch.onnx.unregister_custom_op_symbolic(name, ONNX_OPSET)


def _example_inputs(model, batch: int, seed: int) -> tuple[torch.Tensor, ...]:
    """States and targets ``(batch, state_dim)`` drawn uniformly in the model's state
    normalisation box (``state_center +- state_scale``), float32, CPU; for a model with
    ``time_to_go`` also steps to go ``(batch,)`` drawn from ``1..N`` (float32)."""
    g = torch.Generator().manual_seed(seed)
    c, s = model.state_center.detach().float().cpu(), model.state_scale.detach().float().cpu()
    x0 = c + s * (2 * torch.rand(batch, model.state_dim, generator=g) - 1)
    xt = c + s * (2 * torch.rand(batch, model.state_dim, generator=g) - 1)
    if not model.config.time_to_go:
        return x0, xt
    return x0, xt, torch.randint(1, model.horizon + 1, (batch,), generator=g).float()


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
        :class:`~dynamics.errors.DimensionError`). Up to
        :data:`~trc.export.inductor.LATENCY_BATCH`, every intermediate buffer then lives on the
        stack (:data:`~trc.export.inductor.AOTI_LATENCY_OPTIONS`), which makes a batch-1
        controller several times faster. Default: a free batch size.
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
    fmt = format or format_of(path)
    if fmt is None:
        raise ConfigError(f"cannot tell the export format from suffix {path.suffix!r}; "
                          f"pass format= one of {sorted(FORMATS)}")
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
    time_to_go = bool(cpu_model.config.time_to_go)
    if time_to_go:
        program.model._check_steps_to_go = types.MethodType(_steps_check_for_export, program.model)
    extra = {STATE_DIM_KEY: str(cpu_model.state_dim)}
    if time_to_go:
        extra[HORIZON_KEY] = str(cpu_model.horizon)
    names = ["current_state", "target_state"] + (["steps_to_go"] if time_to_go else [])
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
            torch.jit.save(traced, str(tmp), _extra_files=extra)
        elif fmt == "onnx":
            with _onnx_translations(), torch.no_grad():
                torch.onnx.export(
                    program, example, str(tmp), dynamo=False, opset_version=ONNX_OPSET,
                    input_names=names, output_names=["controls"],
                    dynamic_axes={name: {0: "batch"} for name in (*names, "controls")},
                )
        else:
            program.model._check_states = types.MethodType(_state_check_for_export, program.model)
            size = torch.export.Dim("batch", min=1, max=1 << 20)
            dynamic = None if batch is not None else tuple({0: size} for _ in names)
            with torch.no_grad():
                exported = torch.export.export(program, example, dynamic_shapes=dynamic, strict=False)
            buffer = io.BytesIO()  # both writers insist on a .pt2 name; the temporary file has none
            if fmt == "torch_export":
                torch.export.save(exported, buffer, extra_files=extra)
            else:
                rollout = program.rollout_plant
                _aoti_compile(exported, buffer, batch, state_dim=cpu_model.state_dim,
                              vector_field=rollout is not None and rollout.steps_vector_field,
                              time_to_go_horizon=cpu_model.horizon if time_to_go else None)
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
    ``(B, horizon, control_dim)`` that the float32 ``program`` gives on ``inputs`` (the same
    program run in float64)."""
    with torch.no_grad():
        reference = copy.deepcopy(program).double()(*(t.double() for t in inputs)).numpy()
    return float(np.abs(reference - expected).max())
