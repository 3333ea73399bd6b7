"""Deployment: export a trained controller to TorchScript, ONNX, torch.export and AOTInductor.

:func:`trc.export.export_controller` writes the controller as a self-contained program
``(x0, x*) -> controls`` and checks it against the PyTorch model on fresh inputs;
:func:`trc.export.load_controller` runs it (TorchScript, ``torch.export``, AOTInductor or
onnxruntime) without the TRC code. The trajectory-error feedback (plant rollouts inside the
network) is part of every program; the plant-free network is exported too, for comparison
(see :mod:`trc.export`).

AOTInductor programs are compiled for a fixed batch size, one for batch 1 (a controller's) and
one for batch 1024 (a planner's); the batch-1024 rows also run in a
:class:`trc.export.ParallelController` of two processes, one per core, each planning 1024 of
2048 states (its row gives the time per 1024 plans at the pair's rate).

Figure: file sizes and CPU latencies (batch 1 and 1024) of the exported programs against the
PyTorch model.

    python examples/09_export.py [--quick]
"""

import numpy as np
import torch

from _common import CACHE, parse_args, plt, save, trained_model

from trc.evaluation import measure_latency
from trc.export import FORMATS, ParallelController, export_controller, load_controller


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
    x1n, t1n, xbn, tbn = (a.numpy() for a in (x1, t1, xb, tb))
    for fmt, feedback in exports:
        name = f"{fmt}{'' if feedback else ' (plant-free)'}"
        stem = folder / f"di_{'feedback' if feedback else 'plant_free'}"
        if fmt == "aoti":  # one program per batch size (fixed sizes are faster)
            paths = {b: stem.with_name(f"{stem.name}_{b}{FORMATS[fmt]}") for b in (1, 1024)}
            results = [export_controller(model, path, format=fmt, feedback=feedback, batch=b)
                       for b, path in paths.items()]
        else:  # one program for every batch size
            paths = dict.fromkeys((1, 1024), stem.with_suffix(FORMATS[fmt]))
            results = [export_controller(model, paths[1], format=fmt, feedback=feedback)]
        one, many = load_controller(paths[1]), load_controller(paths[1024])
        rows.append((name, results[-1].size_bytes, measure_latency(lambda: one(x1n, t1n), repeats),
                     measure_latency(lambda: many(xbn, tbn), repeats)))
        error = max(r.max_abs_error for r in results)
        print(f"{fmt:13s} feedback={feedback!s:5s} {results[-1].size_bytes / 1024:7.0f} KiB, "
              f"max |u_exported - u_torch| = {error:.1e}, {rows[-1][2]:.3f} ms (batch 1), "
              f"{rows[-1][3]:.1f} ms (batch 1024)")
        if fmt == "aoti" and feedback or args.quick and fmt == "onnx":  # on both cores (quick: the ONNX program)
            with ParallelController(paths[1024], processes=2) as planner:
                x2, t2 = np.concatenate([xbn, xbn]), np.concatenate([tbn, tbn])
                np.testing.assert_allclose(planner(x2, t2)[1024:], many(xbn, tbn), rtol=1e-5, atol=1e-6)
                ms = measure_latency(lambda: planner(x2, t2), repeats) / 2
            rows.append((f"{name}, 2 processes", None, None, ms))
            print(f"{name}, 2 processes: {ms:.1f} ms per 1024 plans ({1024e3 / ms:.3g} plans/s)")

    fig, ax = plt.subplots(1, 2, figsize=(12, 3.8))
    names = [r[0] for r in rows]
    y = np.arange(len(rows))
    ax[0].barh(y - 0.2, [np.nan if r[2] is None else r[2] for r in rows], 0.4, label="batch 1")
    ax[0].barh(y + 0.2, [r[3] for r in rows], 0.4, label="batch 1024")
    ax[0].set(yticks=y, yticklabels=names, xscale="log", xlabel="latency [ms] (CPU, median)",
              title="latency of the exported controller")
    ax[0].invert_yaxis()
    ax[0].legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2)  # below: clear of the bars
    sizes = [(n, s / 1024) for n, s, *_ in rows if s is not None]
    ax[1].barh(np.arange(len(sizes)), [s for _, s in sizes])
    ax[1].set(yticks=np.arange(len(sizes)), yticklabels=[n for n, _ in sizes], xlabel="file size [KiB]",
              title=f"file sizes ({model.get_parameter_count()} parameters)")
    ax[1].invert_yaxis()
    save(fig, args, "09_export")


if __name__ == "__main__":
    main()
