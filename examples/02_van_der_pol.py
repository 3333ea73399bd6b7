"""Van der Pol oscillator: phase portrait of TRC against the optimal trajectories.

The forced Van der Pol oscillator ``x'' - mu (1 - x^2) x' + x = u`` (``mu = 1``,
``|u| <= 2``) has an unstable origin surrounded by a limit cycle. The problem
(``configs/van_der_pol.yaml``) drives a random initial state to the origin in 5 s; the
``nonlinear`` generator (Gauss-Newton SQP) provides the optimal trajectories TRC learns from.

Figure: the unforced vector field (grey stream lines, the limit cycle shows), optimal
trajectories (dashed) and TRC's (solid) from test initial states (dots); right: the costs of
TRC against the optimal costs.

    python examples/02_van_der_pol.py [--quick]
"""

import numpy as np
import torch

from _common import compare, parse_args, plt, save, trained_model


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    model, data = trained_model("van_der_pol", args)
    res = compare(model, data)
    print(f"test split: median cost gap {np.median(res['gap']):.2%}, success {res['success'].mean():.0%}")

    # The unforced vector field f(x, 0) of the plant on a grid (one batched call).
    plant = data.problem.make_plant(torch.float64)
    p, v = np.meshgrid(np.linspace(-3, 3, 41), np.linspace(-3.5, 3.5, 41))
    grid = torch.as_tensor(np.stack([p.ravel(), v.ravel()], axis=1))
    with torch.no_grad():
        field = plant.f(grid, torch.zeros(grid.shape[0], 1, dtype=torch.float64)).numpy()

    fig, ax = plt.subplots(1, 2, figsize=(11, 4.4), gridspec_kw={"width_ratios": [1.4, 1]})
    ax[0].streamplot(p, v, field[:, 0].reshape(p.shape), field[:, 1].reshape(p.shape), color="0.8", density=1.1,
                     linewidth=0.7)
    for i in range(min(8, len(res["x0"]))):
        color = f"C{i}"
        ax[0].plot(*res["opt_states"][i].T, "--", color=color, lw=1)
        ax[0].plot(*res["trc_states"][i].T, color=color, lw=1.6)
        ax[0].plot(*res["x0"][i], "o", color=color, ms=4)
    ax[0].plot(0, 0, "k*", ms=10)
    ax[0].set(xlim=(-3, 3), ylim=(-3.5, 3.5), xlabel="position x", ylabel="velocity x'",
              title="TRC (solid) vs optimal (dashed), u = 0 stream lines")

    lim = [0, 1.05 * max(res["opt_cost"].max(), np.nanmax(np.where(np.isfinite(res["trc_cost"]), res["trc_cost"], 0)))]
    ax[1].plot(res["opt_cost"], res["trc_cost"], ".", alpha=0.7)
    ax[1].plot(lim, lim, "k-", lw=0.6)
    ax[1].set(xlim=lim, ylim=lim, xlabel="optimal cost J*", ylabel="TRC cost J",
              title=f"test split: median gap {np.median(res['gap']):.1%}")
    save(fig, args, "02_van_der_pol")


if __name__ == "__main__":
    main()
