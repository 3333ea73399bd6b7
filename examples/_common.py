"""Shared plumbing of the example scripts: command line, cached data and models, figures.

Every example runs in two modes:

* default ("full"): the standard configuration's problem, model and training settings
  (``configs/<problem>.yaml``) on a modest data set (a few hundred to 2000 optimal
  trajectories) with a training budget of at most 8 minutes per problem, cached in
  ``runs/examples/<problem>-<hash>/`` so later examples reuse the model;
* ``--quick``: a few dozen samples of a shortened problem and one or two epochs, so the test
  suite (``tests/test_examples.py``) can run every example in seconds. The figures of a quick
  run show that the code works, not what TRC can do.

Data sets are generated and models trained through the public pipeline
(:func:`trc.train.train`, which calls :func:`trc.generators.pipeline.generate`), exactly what
``python -m trc.train --config ...`` does.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # the project is run from the repository, not installed
    sys.path.insert(0, str(ROOT))

import matplotlib  # noqa: E402

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import trc.generators.nonlinear  # noqa: E402,F401  (registers the "nonlinear" solver)
from trc.config import load_yaml  # noqa: E402

#: Default folder of the figures (the ones shown in examples/README.md).
FIGURES = ROOT / "examples" / "figures"
#: Cache of the data sets and models of full runs.
CACHE = ROOT / "runs" / "examples"

# Changes of each standard problem (configs/<name>.yaml) in quick mode: shorter horizons so
# that the optimal solvers produce a data set in seconds.
_QUICK_PROBLEM = {
    "double_integrator": {},
    "van_der_pol": {"horizon": 25, "dt": 0.2},
    "pendulum": {"horizon": 30, "dt": 0.1},
    "cartpole": {"horizon": 30, "dt": 0.1},
    "rocket": {"horizon": 20, "dt": 3.6},
}
_QUICK = {
    "samples": {"double_integrator": 64, "cartpole": 16, "rocket": 16},
    "default_samples": 32,
    "model": {"latent_dim": 16, "hidden_dim": 32, "num_layers": 1, "H_cycles": 2, "L_cycles": 1,
              "feedback_channels": 8},
    "training": {"epochs": 1, "batch_size": 32, "lr": 3e-3, "val_every": 1, "max_minutes": None},
}
# Full mode: the configuration's own model and training sections, on a modest data set (the
# configurations' sizes take hours of solver time on a laptop) with batches and a time budget
# to match.
_FULL = {
    "samples": {"double_integrator": 2000, "van_der_pol": 400, "pendulum": 300, "cartpole": 200, "rocket": 200},
    # Small data sets: many short epochs, an EMA that follows within ~200 steps, and the time budget as the limit.
    "training": {"epochs": 600, "batch_size": 32, "ema_decay": 0.995, "val_every": 10, "early_stopping_patience": 10,
                 "max_minutes": 8.0},
    "epochs": {"double_integrator": 60},
}


def parse_args(description: str, argv=None) -> argparse.Namespace:
    """The common command line: ``--quick``, ``--out``, ``--seed``, ``--threads``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true", help="tiny data and 1-2 epochs (what the tests run)")
    p.add_argument("--out", type=Path, default=FIGURES, help=f"folder of the figure (default {FIGURES})")
    p.add_argument("--seed", type=int, default=0, help="seed of data, weights and test instances")
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    return args


def experiment(name: str, quick: bool, seed: int = 0) -> dict:
    """The configuration of standard problem ``name`` (``configs/<name>.yaml``) for an example.

    Full mode keeps the file's problem, model and training settings (with a modest data set,
    a matching batch size and a time budget); quick mode shortens the problem and shrinks
    everything.
    """
    cfg = load_yaml(ROOT / "configs" / f"{name}.yaml")
    cfg.pop("evaluation", None)  # the examples evaluate themselves
    settings = _QUICK if quick else _FULL
    if quick:
        cfg["problem"].update(_QUICK_PROBLEM[name])
        # smaller sizes, the configuration's own switches (state head, tracking, correction)
        cfg["model"] = {**cfg.get("model", {}), **settings["model"]}
    samples = settings["samples"].get(name, settings.get("default_samples"))
    cfg["generator"].update(num_samples=samples, seed=seed, chunk_size=max(16, samples // 4))
    training = {**cfg.get("training", {}), **settings["training"]}
    training.update(seed=seed, tensorboard=False, num_threads=torch.get_num_threads())
    if name in settings.get("epochs", {}):
        training["epochs"] = settings["epochs"][name]
    cfg["training"] = training
    return cfg


def _folder(name: str, cfg: dict, args) -> Path:
    # The cache key: what defines the data and the network. A change of the training settings
    # alone keeps the cached model (the examples illustrate; they do not tune).
    key = {k: cfg.get(k) for k in ("problem", "generator", "model")}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:8]
    base = args.out / ".cache" if args.quick else CACHE
    return base / f"{name}-{digest}"


def trained_model(name: str, args, cfg: dict | None = None):
    """A model trained on standard problem ``name``, and its data set; cached.

    Returns
    -------
    model : trc.models.TinyRecursiveControl
        Loaded with :func:`trc.load` (eval mode).
    data : trc.data.TrajectoryData
    """
    import trc
    from trc.data import load_dataset
    from trc.train import train

    cfg = copy.deepcopy(cfg or experiment(name, args.quick, args.seed))
    folder = _folder(name, cfg, args)
    cfg["generator"]["out"] = str(folder / "data.h5")
    model_file = folder / "run" / "model.pt"
    if not model_file.exists():
        print(f"[{name}] generating {cfg['generator']['num_samples']} optimal trajectories and training "
              f"({cfg['training']['epochs']} epochs) in {folder}", file=sys.stderr)
        train(cfg, out=folder / "run", overwrite=True, progress=False, evaluate=False, verbose=False, workers=1)
    return trc.load(model_file), load_dataset(folder / "data.h5")


def save(fig, args, name: str) -> Path:
    """Save ``fig`` as ``<out>/<name>.png`` at 100 dpi (small enough to commit) and close it."""
    from trc.io import atomic_path

    args.out.mkdir(parents=True, exist_ok=True)
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    path = args.out / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=100, bbox_inches="tight", format="png")
    plt.close(fig)
    print(f"wrote {path}")
    return path


def compare(model, data, split: str = "test", count: int | None = None) -> dict:
    """TRC against the optimal solutions of a data split, re-simulated in float64.

    Returns
    -------
    dict
        ``x0``, ``target`` ``(B, n)``; ``opt_states``, ``trc_states`` ``(B, N + 1, n)``;
        ``opt_controls``, ``trc_controls`` ``(B, N, m)``; ``opt_cost``, ``trc_cost``, ``gap``
        (``J_trc / J_opt - 1``), ``success`` (TRC reaches the tolerance) ``(B,)``; NumPy arrays.
    """
    from trc.evaluation import rollout_metrics

    part = data.splits[split]
    sl = slice(None) if count is None else slice(0, count)
    x0, target = part.x0[sl].double(), part.target[sl].double()
    with torch.no_grad():
        controls = model(x0.float(), target.float()).double()
        plant = data.problem.make_plant(torch.float64)
        m = rollout_metrics(data.problem, plant, x0, target, controls, part.cost[sl].double())
    return {
        "x0": x0.numpy(), "target": target.numpy(),
        "opt_states": part.states[sl].double().numpy(), "opt_controls": part.controls[sl].double().numpy(),
        "opt_cost": part.cost[sl].double().numpy(),
        "trc_states": m["states"].numpy(), "trc_controls": controls.numpy(), "trc_cost": m["cost"].numpy(),
        "gap": m["gap"].numpy(), "success": m["success"].numpy(),
    }


def stairs(ax, dt: float, u, **kwargs):
    """Plot a zero-order-hold control sequence ``u`` ``(N,)`` as steps over ``[0, N dt]``."""
    import numpy as np

    u = np.asarray(u)
    return ax.stairs(u, np.arange(u.size + 1) * dt, baseline=None, **kwargs)
