"""Run an exported controller: :func:`load_controller` reads any format of :mod:`trc.export`.

The loaded program is a NumPy-in, NumPy-out callable, ``controller(x0, target) -> controls``
(``controller(x0, target, steps_to_go)`` for a model with ``time_to_go``),
that checks the inputs' shapes (the state dimension is stored with every program; an
AOTInductor program would take any width) and needs none of the TRC code that wrote it.

.. warning::

   Loading an AOTInductor (``.aoti.pt2``) or TorchScript (``.ts``, ``.pt``) file executes code
   from it: an AOTInductor package is a compiled shared library that is loaded into this
   process, and a TorchScript archive holds code that runs when it is loaded and called. As
   with ``torch.load(weights_only=False)``, only load files you trust.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import numpy as np
import torch
import torch._inductor

from dynamics.errors import ConfigError, DimensionError

from .files import BATCH_KEY, FORMATS, HORIZON_KEY, STATE_DIM_KEY, format_of, is_aoti_package

__all__ = ["ExportedController", "load_controller", "planner_inputs"]


class ExportedController:
    """An exported controller loaded for inference: ``controller(x0, target) -> controls``.

    Loading an AOTInductor or TorchScript file executes code from it (the package's compiled
    shared library, the archive's TorchScript code), as ``torch.load(weights_only=False)``
    does with a pickle: only load files you trust.

    Parameters
    ----------
    path : str or PathLike
        A file written by :func:`trc.export.export_controller`.
    format : str, optional
        Default from the suffix; a ``.pt2`` archive that holds an AOTInductor package loads as
        ``aoti``.

    Attributes
    ----------
    path : pathlib.Path
    format : str
        One of :data:`~trc.export.files.FORMATS`.
    batch : int or None
        The program's fixed batch size (AOTInductor programs compiled with ``batch=``), else None.
    state_dim : int or None
        The state dimension the inputs must have (None for files written before it was stored).
    time_to_go_horizon : int or None
        For a program that takes the steps to go (a model with ``time_to_go``), its horizon
        ``N``; else None.

    Raises
    ------
    ConfigError
        On an unknown format or suffix.
    FileNotFoundError
        If the file does not exist.

    Notes
    -----
    Every format runs with ``torch.get_num_threads()`` intra-op threads (for ONNX, the number
    at load time).
    """

    def __init__(self, path: str | os.PathLike, format: str | None = None):
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"exported controller {str(path)!r} does not exist")
        fmt = format or format_of(path)
        if fmt == "torch_export" and format is None and is_aoti_package(path):
            fmt = "aoti"  # an AOTInductor package saved as plain .pt2 (export_controller(format="aoti"))
        if fmt not in FORMATS:
            raise ConfigError(f"unknown export format {fmt!r} (file {str(path)!r}); choose one of {sorted(FORMATS)}")
        self.path, self.format = path, fmt
        self.batch: int | None = None
        extra = {STATE_DIM_KEY: "", HORIZON_KEY: ""}  # filled in by the TorchScript and torch.export loaders
        if fmt == "onnx":
            import onnxruntime as ort  # optional dependency (extra "export")

            options = ort.SessionOptions()
            options.log_severity_level = 3
            options.intra_op_num_threads = torch.get_num_threads()  # as the torch formats; its default: every core
            options.inter_op_num_threads = 1
            self._session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
            inputs = self._session.get_inputs()
            extra[STATE_DIM_KEY] = inputs[0].shape[1]
            if len(inputs) == 3:
                extra[HORIZON_KEY] = self._session.get_outputs()[0].shape[1]
            names = [i.name for i in inputs]
            self._run = lambda *args: self._session.run(None, dict(zip(names, args)))[0]
        elif fmt == "aoti":
            module = torch._inductor.aoti_load_package(io.BytesIO(path.read_bytes()))
            metadata = module.get_metadata()
            fixed = metadata.get(BATCH_KEY)
            self.batch = None if fixed is None else int(fixed)
            extra[STATE_DIM_KEY] = metadata.get(STATE_DIM_KEY, "")
            extra[HORIZON_KEY] = metadata.get(HORIZON_KEY, "")
            loader = module.loader  # called directly: the package's Python wrapper re-parses its call spec per call
            self._module = module
            # the runner reuses its output buffer on the next call: copy, so earlier results stay valid
            self._run = lambda *args: loader.run([torch.from_numpy(a) for a in args])[0].numpy().copy()
        else:
            if fmt == "torchscript":
                with warnings.catch_warnings():  # TorchScript is deprecated upstream, still supported
                    warnings.simplefilter("ignore", DeprecationWarning)
                    module = torch.jit.load(str(path), _extra_files=extra)
            else:
                module = torch.export.load(io.BytesIO(path.read_bytes()), extra_files=extra).module()

            def run(*args):
                with torch.no_grad():
                    return module(*(torch.from_numpy(a) for a in args)).numpy()

            self._module = module
            self._run = run
        self.state_dim: int | None = _number(extra[STATE_DIM_KEY])
        self.time_to_go_horizon: int | None = _number(extra[HORIZON_KEY])

    def __reduce__(self):
        # A loaded program is native code and cannot be pickled: another process (a worker)
        # loads it again from its file.
        return (type(self), (self.path, self.format))

    def __call__(self, current_state, target_state, steps_to_go=None) -> np.ndarray:
        """Controls ``(B, horizon, control_dim)`` (float32) of ``(B, state_dim)`` states and targets.

        ``steps_to_go`` (a scalar or ``(B,)``, whole numbers in ``[1, N]``; default ``N``) is the
        third input of a program with :attr:`time_to_go_horizon`.

        Raises
        ------
        DimensionError
            If the inputs are not 2-D arrays of equal shape, their width is not the program's
            state dimension, or their batch size is not the program's fixed one.
        ConfigError
            If ``steps_to_go`` is given to a program without that input, or is outside ``[1, N]``
            or not whole.
        """
        x0, xt = planner_inputs(current_state, target_state)
        args = (x0, xt)
        N = self.time_to_go_horizon
        if N is None and steps_to_go is not None:
            raise ConfigError(f"{self.path.name} plans a fixed horizon; it takes no steps_to_go")
        if N is not None:
            k = np.broadcast_to(np.asarray(N if steps_to_go is None else steps_to_go, dtype=np.float32),
                                (x0.shape[0],))
            if not ((k >= 1) & (k <= N) & (k == np.round(k))).all():
                raise ConfigError(f"steps_to_go must be whole numbers in [1, {N}], got {k.tolist()}")
            args = (x0, xt, np.ascontiguousarray(k))
        if self.state_dim is not None and x0.shape[1] != self.state_dim:
            raise DimensionError(f"{self.path.name} plans for {self.state_dim} states; "
                                 f"got states of width {x0.shape[1]}")
        if self.batch is not None and x0.shape[0] != self.batch:
            raise DimensionError(f"{self.path.name} was compiled for batch {self.batch}; got batch {x0.shape[0]}")
        return self._run(*args)


def _number(value) -> int | None:
    """A stored metadata number (str, bytes or int), or None when absent."""
    value = value.decode() if isinstance(value, bytes) else str(value)
    return int(value) if value.isdigit() else None


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
    """Load a file written by :func:`trc.export.export_controller`; see :class:`ExportedController`.

    Loading an AOTInductor or TorchScript file executes code from it (the package's compiled
    shared library, the archive's TorchScript code), as ``torch.load(weights_only=False)``
    does with a pickle: only load files you trust.

    Parameters
    ----------
    path : str or PathLike
        The exported file.
    format : str, optional
        One of :data:`~trc.export.files.FORMATS`; default from the suffix (and, for ``.pt2``,
        the archive's content).

    Returns
    -------
    ExportedController

    Raises
    ------
    ConfigError
        On an unknown format or suffix.
    FileNotFoundError
        If the file does not exist.
    """
    return ExportedController(path, format)
