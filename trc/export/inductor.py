"""AOTInductor compilation of exported controllers: the TorchInductor options and patches.

The ``aoti`` format compiles the :func:`torch.export.export` program of a controller ahead of
time to C++ with TorchInductor (:func:`torch._inductor.aoti_compile_and_package`; needs a C++
compiler at export time, not at run time): the plant steps fuse into a few loops and the
per-operator dispatch of eager PyTorch (10-20 us per operator on a small CPU) disappears. A
program compiled for a fixed small batch size (``batch=1``, a controller's) goes further: every
intermediate buffer lives on the stack (:data:`AOTI_LATENCY_OPTIONS`), so a plan with feedback
rollouts takes about 0.1 ms with the ``fast`` preset. Compiling takes minutes for long
horizons (the rollouts are unrolled, and the matrix products are autotuned).

:func:`_aoti_compile` chooses the options from the batch size and the kind of rollouts, works
around Inductor's failures on long unrolled rollouts, and registers Inductor's
stack-allocating C++ wrapper for the compilations that need it
(:func:`_stack_allocating_wrapper`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import io

import torch
import torch._inductor
import torch._inductor.exc
from torch._inductor.codegen import common as _codegen_common
from torch._inductor.codegen.cpp_wrapper_cpu_array_ref import CppWrapperCpuArrayRef

from .files import BATCH_KEY, HORIZON_KEY, STATE_DIM_KEY

__all__ = [
    "AOTI_OPTIONS",
    "AOTI_DYNAMIC_OPTIONS",
    "AOTI_LATENCY_OPTIONS",
    "AOTI_VECTOR_FIELD_OPTIONS",
    "LATENCY_BATCH",
]

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


def _aoti_compile(exported, buffer: io.BytesIO, batch: int | None = None, vector_field: bool = False,
                 state_dim: int | None = None, time_to_go_horizon: int | None = None) -> None:
    """Compile an exported program into an AOTInductor package.

    Parameters
    ----------
    exported : torch.export.ExportedProgram
        The program (:func:`torch.export.export`).
    buffer : io.BytesIO
        Receives the package (emptied first).
    batch : int, optional
        The program's fixed batch size, or None for a free one. Up to :data:`LATENCY_BATCH`
        the options are :data:`AOTI_OPTIONS` with :data:`AOTI_LATENCY_OPTIONS`, otherwise with
        :data:`AOTI_DYNAMIC_OPTIONS`.
    vector_field : bool
        The program's rollouts step a vector field: :data:`AOTI_VECTOR_FIELD_OPTIONS` as well
        (not for a latency batch).
    state_dim : int, optional
        Stored in the package's metadata (``trc_state_dim``), as a fixed batch size is
        (``trc_batch``).
    time_to_go_horizon : int, optional
        The horizon of a program with a steps-to-go input (``trc_time_to_go_horizon``).

    Raises
    ------
    torch._inductor.exc.InductorError
        If Inductor fails for another reason than those handled below.

    Notes
    -----
    Inductor's memory planner recurses over the buffers' live ranges and overflows Python's
    stack on the longest unrolled rollouts (the rocket's 7 states x 50 steps); the program is
    then compiled without it (correct, somewhat slower at batch 1). A latency program in which
    a matrix product has no CPP kernel is compiled again with ATEN's as well.
    """
    latency = _is_latency_batch(batch)
    options = {**AOTI_OPTIONS, **(AOTI_LATENCY_OPTIONS if latency else AOTI_DYNAMIC_OPTIONS)}
    if vector_field and not latency:
        options.update(AOTI_VECTOR_FIELD_OPTIONS)
    metadata = {BATCH_KEY: batch, STATE_DIM_KEY: state_dim, HORIZON_KEY: time_to_go_horizon}
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
    _codegen_common.init_backend_registration()
    registered = _codegen_common.device_codegens["cpu"]
    _codegen_common.device_codegens["cpu"] = dataclasses.replace(registered, cpp_wrapper_codegen=CppWrapperCpuArrayRef)
    try:
        yield
    finally:
        _codegen_common.device_codegens["cpu"] = registered
