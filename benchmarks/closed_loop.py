"""TRC as a feedback controller against the practitioner's alternatives, in one run per plant.

For each plant (the standard problems of ``configs/<plant>.yaml``) every controller runs on the
same initial states and the same seeded perturbations (:mod:`trc.closed_loop`):

* the trained TRC models given with ``--model plant=PATH`` (eager PyTorch), and their exported
  batch-1 programs (AOTInductor, ``--export aoti``; compiled here into a temporary folder);
* the saturated infinite-horizon LQR at the target (python-control ``dlqr``);
* nonlinear MPC with the problem's horizon, cost and bounds (CasADi + IPOPT, warm-started);
* the open-loop optimum from each initial state, the denominator of every cost ratio.

Cases: ``nominal`` (the nominal plant, no noise), ``perturbed`` (every physical parameter scaled
by a factor from [0.8, 1.2] per episode, process and measurement noise of 0.2 % of the state
scale), ``impulse`` (a kick of 10 % of the state scale at mid-episode). The plant is simulated by
scipy ``solve_ivp`` (DOP853, rtol 1e-9) on vector fields written independently of the training
plants. Then the goals of the closed-loop controller are checked, each printed as met or not:

* reach and hold >= 99 % nominal, >= 95 % perturbed and not below MPC's;
* cost (median ratio to the optimum) <= 1.01 x MPC's and below the LQR's (Van der Pol: within
  0.5 % of the LQR's or below);
* exported batch-1 step <= 0.1 ms and >= 100 x faster than the MPC step; eager step <= 5 ms.

    python benchmarks/closed_loop.py --plants van_der_pol double_integrator \\
        --model van_der_pol=runs/van_der_pol_closed_loop/model.pt --episodes 20 --out result.md
    python benchmarks/closed_loop.py --plants pendulum cartpole rocket --episodes 10   # baselines only
    python benchmarks/closed_loop.py --plants cartpole --episodes 200 --backend ray --address HEAD:6379

The episodes of a case run in tasks of 10 (:func:`trc.closed_loop.compare`): in this process, in
``--workers`` processes or on a Ray cluster (``--backend ray``), with the same arrays on each; the
time per step is measured in this process after the episodes.
"""

from __future__ import annotations

import argparse
import datetime
import sys
import tempfile
import time
from pathlib import Path

import torch

import trc
from trc import closed_loop as cl
from trc.backends import check_backend
from trc.cli import add_backend
from trc.experiment import load_experiment
from trc.export import export_controller, load_controller
from trc.version import source_commit

ROOT = Path(__file__).resolve().parents[1]
PLANTS = ("double_integrator", "van_der_pol", "pendulum", "cartpole", "rocket")
CASES = ("nominal", "perturbed", "impulse")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plants", nargs="+", default=list(PLANTS), choices=PLANTS)
    p.add_argument("--model", action="append", default=[], metavar="PLANT=PATH",
                   help="a trained TRC model file for a plant (repeatable)")
    p.add_argument("--export", choices=("aoti", "torchscript", "none"), default="aoti",
                   help="export the models to this batch-1 format and run the programs too (default aoti)")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--cases", nargs="+", default=list(CASES), choices=sorted(cl.PERTURBATIONS))
    p.add_argument("--replan-every", type=int, default=1)
    p.add_argument("--no-mpc", action="store_true", help="leave MPC out (it dominates the run time)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1: a control loop's core)")
    p.add_argument("--out", type=Path, help="also write the markdown to this file")
    p.add_argument("--workers", type=int, help="local: processes (default 1: this one); ray: most tasks at once")
    add_backend(p, "one task per batch of episodes")
    args = p.parse_args(argv)
    check_backend(args.backend, args.address)
    return args


def models_by_plant(specs: list[str]) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for spec in specs:
        plant, sep, path = spec.partition("=")
        if not sep or plant not in PLANTS:
            raise SystemExit(f"--model takes PLANT=PATH with PLANT one of {PLANTS}; got {spec!r}")
        out.setdefault(plant, []).append(Path(path))
    return out


def controllers_for(problem, paths: list[Path], export: str, folder: Path) -> list[cl.Controller]:
    out: list[cl.Controller] = []
    for path in paths:
        model = trc.load(path)
        name = f"trc {path.parent.name}"
        out.append(cl.TRCController(model, name=name))
        if export != "none":
            suffix = ".aoti.pt2" if export == "aoti" else ".ts"
            target = folder / f"{path.parent.name}{suffix}"
            export_controller(model, target, batch=1 if export == "aoti" else None)
            out.append(cl.ExportedTRCController(load_controller(target), name=f"{name} ({export})"))
    return out


def goals(plant: str, results: dict[str, dict[str, cl.ClosedLoopResult]]) -> list[str]:
    """The issue's goals for every TRC controller of the plant, each met or not."""
    nominal = {k: r.summary() for k, r in results["nominal"].items()}
    perturbed = {k: r.summary() for k, r in results.get("perturbed", {}).items()}
    mpc, lqr = nominal.get("mpc", {}), nominal.get("lqr", {})
    lines = []
    for name, s in nominal.items():
        if not name.startswith("trc"):
            continue
        if "error" in s:
            lines.append(f"- {name}: cannot run ({s['error']}): every goal NOT MET")
            continue
        checks = [("reach and hold nominal >= 99 %", s["success_rate"] >= 0.99, f"{100 * s['success_rate']:.1f} %")]
        if name in perturbed and "error" not in perturbed[name]:
            p = perturbed[name]["success_rate"]
            p_mpc = perturbed.get("mpc", {}).get("success_rate", -1)
            checks.append(("perturbed >= 95 % and >= MPC", p >= 0.95 and p >= p_mpc,
                           f"{100 * p:.1f} % (MPC {100 * p_mpc:.1f} %)" if p_mpc >= 0 else f"{100 * p:.1f} %"))
        c = s["cost_ratio_median"]
        if "cost_ratio_median" in mpc:
            checks.append(("cost <= 1.01 x MPC", c <= 1.01 * mpc["cost_ratio_median"],
                           f"{c:.4f} vs MPC {mpc['cost_ratio_median']:.4f}"))
        if "cost_ratio_median" in lqr:
            limit = 1.005 * lqr["cost_ratio_median"] if plant == "van_der_pol" else lqr["cost_ratio_median"]
            checks.append(("cost below the LQR's" + (" (+0.5 %)" if plant == "van_der_pol" else ""), c <= limit,
                           f"{c:.4f} vs LQR {lqr['cost_ratio_median']:.4f}"))
        ms = s["ms_per_step"]
        if "(" in name:  # an exported program
            checks.append(("exported step <= 0.1 ms", ms <= 0.1, f"{ms:.4f} ms"))
            if "ms_per_step" in mpc:
                checks.append(("exported >= 100 x faster than MPC", mpc["ms_per_step"] / ms >= 100,
                               f"{mpc['ms_per_step'] / ms:.0f} x"))
        else:
            checks.append(("eager step <= 5 ms", ms <= 5.0, f"{ms:.3f} ms"))
        for what, ok, value in checks:
            lines.append(f"- {name}: {what}: {value}: {'met' if ok else 'NOT MET'}")
    return lines


def main(argv=None) -> int:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    models = models_by_plant(args.model)
    commit = source_commit(ROOT)
    out = [f"# Closed-loop benchmark, {datetime.date.today()}, commit {commit}", "",
           f"Command: `python benchmarks/closed_loop.py {' '.join(sys.argv[1:] if argv is None else argv)}`", "",
           f"{args.episodes} episodes per case, seed {args.seed}, re-plan every {args.replan_every} step(s), "
           f"{args.threads} torch thread(s); cost = J of the first N steps + terminal term, over the open-loop "
           f"optimum; ms per step = median batch-1 control step.", ""]
    start = 0
    with tempfile.TemporaryDirectory() as tmp:
        for plant in args.plants:
            problem = load_experiment(ROOT / "configs" / f"{plant}.yaml").problem
            t0 = time.perf_counter()
            controllers = controllers_for(problem, models.get(plant, []), args.export, Path(tmp))
            results = {}
            for case in args.cases:
                config = cl.ClosedLoopConfig(episodes=args.episodes, perturbation=case, seed=args.seed,
                                             replan_every=args.replan_every)
                results[case] = cl.compare(problem, controllers + cl.baselines(problem, mpc=not args.no_mpc), config,
                                           backend=args.backend, address=args.address, workers=args.workers)
            out += [f"## {plant}", ""]
            if problem.cost != "quadratic":
                out += [f"No LQR: the {problem.cost} cost has no quadratic form and the problem no equilibrium "
                        "to regulate (a landing at a fixed final time).", ""]
            elif plant in ("pendulum", "cartpole"):
                out += ["The LQR of the upright linearisation cannot swing up from hanging (shown as measured).", ""]
            for case, res in results.items():
                out += [cl.summary_table(res, f"{plant}, {case}"), ""]
            lines = goals(plant, results)
            out += (["Goals:", ""] + lines if lines else ["No TRC model given for this plant: goals not measured."])
            out += ["", f"({time.perf_counter() - t0:.0f} s)", ""]
            print("\n".join(out[start:]), flush=True)
            start = len(out)
    text = "\n".join(out)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
