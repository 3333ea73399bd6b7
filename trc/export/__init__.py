"""Deployment: export a trained TRC controller to TorchScript, ONNX, ``torch.export`` or AOTInductor.

>>> from trc.export import export_controller, load_controller
>>> export_controller(model, "ctrl.aoti.pt2", batch=1)          # doctest: +SKIP
>>> controller = load_controller("ctrl.aoti.pt2")                # doctest: +SKIP
>>> controls = controller(x0, target)   # (1, horizon, control_dim), float32  # doctest: +SKIP

Loading an AOTInductor or TorchScript file executes code from it: only load files you trust
(:mod:`trc.export.controller`).

One module per concern:

=====================================  ===================================================
:mod:`trc.export.formats`              :func:`export_controller`, :data:`FORMATS`, what
                                       each format captures and the check of the exported
                                       program against the model
:mod:`trc.export.inductor`             AOTInductor compilation: TorchInductor options and
                                       patches
:mod:`trc.export.controller`           the loader: :func:`load_controller`,
                                       :class:`ExportedController`, :func:`planner_inputs`
:mod:`trc.export.parallel`             :class:`ParallelController`: one exported program in
                                       several processes, each on a share of the batch
:mod:`trc.export.cli`                  ``python -m trc.export`` (console script
                                       ``trc-export``): sizes and latencies of the exports
:mod:`trc.export.files`                the formats' suffixes and the metadata stored with a
                                       program
=====================================  ===================================================

The exported programs' plant rollouts are :class:`dynamics.interval.IntervalRollout`.
"""

from .controller import ExportedController, load_controller, planner_inputs
from .formats import FORMATS, ExportResult, export_controller
from .parallel import ParallelController

__all__ = [
    "FORMATS",
    "export_controller",
    "ExportResult",
    "ExportedController",
    "load_controller",
    "planner_inputs",
    "ParallelController",
]
