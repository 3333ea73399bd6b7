"""Certified mode: TRC proposes, the optimal solver certifies, faster than solving from scratch.

:class:`trc.certified.CertifiedSolver` plans every instance with TRC, checks the plan (bounds,
dynamics residual, cost no worse than doing nothing), warm-starts the problem's optimal solver
from the plans that pass and solves the others from the solver's default guess. The answer is
always the solver's (its optimum, its checks); the plan only shortens the way there.

* double integrator, ``qp`` solver: the plan predicts which control bounds are active; a
  primal-dual active-set method confirms the optimum with one KKT solve where the prediction
  is right (the cold solver runs Clarabel's interior-point method);
* Van der Pol, ``nonlinear`` solver: the SQP starts from the plan instead of a straight line.

Figure: solver iterations and time per instance, cold against certified (TRC's time
included), and the cost difference between the two answers.

    python examples/07_certified_mode.py [--quick]
"""

import time

import numpy as np

from _common import experiment, parse_args, plt, save, trained_model

from trc.certified import CertifiedSolver
from trc.generators import make_solver


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    count = 4 if args.quick else 50
    rows = []
    for name in ("double_integrator", "van_der_pol"):
        model, data = trained_model(name, args)
        problem = data.problem
        gen = experiment(name, args.quick, args.seed)["generator"]
        solver = make_solver(gen["solver"], problem, **gen.get("options", {}))
        x0, target = problem.sample(count, seed=args.seed + 1000)  # instances outside the data set

        start = time.perf_counter()
        cold = solver.solve(x0, target)
        cold_s = time.perf_counter() - start
        certified = CertifiedSolver(model, solver).solve(x0, target)
        both = cold.success & certified.solution.success
        gap = np.abs(certified.solution.costs - cold.costs)[both] / np.abs(cold.costs[both])
        rows.append(dict(
            name=f"{name}\n({gen['solver']})", cold_it=cold.iterations.mean(), cert_it=certified.solution.iterations.mean(),
            cold_ms=1e3 * cold_s / count, cert_ms=1e3 * certified.seconds / count, trc_ms=1e3 * certified.plan.seconds / count,
            warm=certified.warm_started.mean(), gap=gap.max(initial=0.0),
        ))
        r = rows[-1]
        print(f"{name}: iterations {r['cold_it']:.1f} cold -> {r['cert_it']:.1f} certified; {r['cold_ms']:.1f} -> "
              f"{r['cert_ms']:.1f} ms per instance (TRC {r['trc_ms']:.2f} ms); {r['warm']:.0%} warm-started; "
              f"max relative cost difference {r['gap']:.1e}")

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.6))
    x = np.arange(len(rows))
    for axis, key, label in ((ax[0], "it", "solver iterations per instance"), (ax[1], "ms", "time per instance [ms]")):
        axis.bar(x - 0.2, [r[f"cold_{key}"] for r in rows], 0.4, label="cold solver")
        axis.bar(x + 0.2, [r[f"cert_{key}"] for r in rows], 0.4, label="certified (TRC warm start)")
        axis.set(xticks=x, xticklabels=[r["name"] for r in rows], ylabel=label)
    for i, r in enumerate(rows):
        ax[0].annotate(f"{r['warm']:.0%} warm", (i + 0.2, r["cert_it"]), ha="center", va="bottom", fontsize=8)
        ax[1].annotate(f"|dJ|/J <= {r['gap']:.0e}", (i, max(r["cold_ms"], r["cert_ms"])), ha="center", va="bottom", fontsize=8)
    ax[0].legend(fontsize=8)
    ax[1].set_title("same optimum, found faster", fontsize=10)
    save(fig, args, "07_certified_mode")


if __name__ == "__main__":
    main()
