"""Deployment: export a trained controller to TorchScript, ONNX, torch.export and AOTInductor.

:func:`trc.export.export_controller` writes the controller as a self-contained program
``(x0, x*) -> controls`` and checks it against the PyTorch model on fresh inputs;
:func:`trc.export.load_controller` runs it (TorchScript, ``torch.export``, AOTInductor or
onnxruntime) without the TRC code. The trajectory-error feedback (plant rollouts inside the
network) is part of every program; the plant-free network is exported too, for comparison
(see :mod:`trc.export`).

Figure: file sizes and CPU latencies (batch 1 and 1024) of the exported programs against the
PyTorch model.

    python examples/09_export.py [--quick]
"""

import numpy as np
import torch

from _common import CACHE, parse_args, plt, save, trained_model

from trc.evaluation import measure_latency
from trc.export import FORMATS, export_controller, load_controller


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    model, data = trained_model("double_integrator", args)
    folder = (args.out / ".cache" if args.quick else CACHE) / "export"
    repeats = 2 if args.quick else 30
    x1, t1 = data.test.x0[:1], data.test.target[:1]
    xb, tb = data.test.x0.repeat(1024 // len(data.test) + 1, 1)[:1024], data.test.target.repeat(1024 // len(data.test) + 1, 1)[:1024]
    rows = []
    with torch.no_grad():
        for feedback in (True, False):
            rows.append((f"PyTorch{'' if feedback else ' (plant-free)'}", None,
                         measure_latency(lambda: model(x1, t1, plant=None if feedback else False), repeats),
                         measure_latency(lambda: model(xb, tb, plant=None if feedback else False), repeats)))
    exports = [("torchscript", True), ("onnx", True), ("torch_export", True), ("aoti", True), ("onnx", False),
               ("aoti", False)]
    if args.quick:  # the plant-free exports take seconds; the others are tested in tests/test_export.py
        exports = [("torchscript", False), ("onnx", False)]
    for fmt, feedback in exports:
        path = folder / f"di_{'feedback' if feedback else 'plant_free'}{FORMATS[fmt]}"
        result = export_controller(model, path, format=fmt, feedback=feedback)
        ctrl = load_controller(path)
        x1n, t1n, xbn, tbn = (a.numpy() for a in (x1, t1, xb, tb))
        rows.append((f"{fmt}{'' if feedback else ' (plant-free)'}", result.size_bytes,
                     measure_latency(lambda: ctrl(x1n, t1n), repeats), measure_latency(lambda: ctrl(xbn, tbn), repeats)))
        print(f"{fmt:13s} feedback={feedback!s:5s} {result.size_bytes / 1024:7.0f} KiB, max |u_exported - u_torch| = "
              f"{result.max_abs_error:.1e}, {rows[-1][2]:.2f} ms (batch 1), {rows[-1][3]:.1f} ms (batch 1024)")

    fig, ax = plt.subplots(1, 2, figsize=(12, 3.8))
    names = [r[0] for r in rows]
    y = np.arange(len(rows))
    ax[0].barh(y - 0.2, [r[2] for r in rows], 0.4, label="batch 1")
    ax[0].barh(y + 0.2, [r[3] for r in rows], 0.4, label="batch 1024")
    ax[0].set(yticks=y, yticklabels=names, xscale="log", xlabel="latency [ms] (CPU, median)",
              title="latency of the exported controller")
    ax[0].invert_yaxis()
    ax[0].legend(fontsize=8)
    sizes = [(n, s / 1024) for n, s, *_ in rows if s is not None]
    ax[1].barh(np.arange(len(sizes)), [s for _, s in sizes])
    ax[1].set(yticks=np.arange(len(sizes)), yticklabels=[n for n, _ in sizes], xlabel="file size [KiB]",
              title=f"file sizes ({model.get_parameter_count()} parameters)")
    ax[1].invert_yaxis()
    save(fig, args, "09_export")


if __name__ == "__main__":
    main()
