"""Double integrator: the optimal data set and the controller TRC learns from it.

The problem (``configs/double_integrator.yaml``): a unit mass, ``x'' = u`` with
``|u| <= 4 m/s^2``, must go from a random state to a random target state in 15 steps of
0.33 s, minimising ``J = dt sum (x - x*)' Q (x - x*) + u' R u + terminal``. The ``qp``
generator solves it exactly (finite-horizon LQR where the bounds are inactive, a QP where
they bind). TRC learns the map ``(x0, x*) -> u_0 .. u_14`` from those solutions.

Figure: (left) part of the data set in the phase plane; (middle, right) positions and
controls of TRC (solid) and the optimum (dashed) on test instances TRC never saw.

    python examples/01_double_integrator.py [--quick]
"""

import numpy as np

from _common import compare, parse_args, plt, save, stairs, trained_model


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    model, data = trained_model("double_integrator", args)
    problem = data.problem
    res = compare(model, data)
    print(f"test split: median cost gap {np.median(res['gap']):.2%}, success {res['success'].mean():.0%} "
          f"(||x_N - x*|| < {problem.tolerance})")

    t = np.arange(problem.horizon + 1) * problem.dt
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    # (a) the data set: optimal trajectories in the phase plane, targets as dots
    train = data.train
    for i in range(min(40, len(train))):
        s = train.states[i].numpy()
        ax[0].plot(s[:, 0], s[:, 1], color="tab:blue", alpha=0.35, lw=0.8)
        ax[0].plot(*train.target[i].numpy(), ".", color="tab:red", ms=4)
    ax[0].set(xlabel="position [m]", ylabel="velocity [m/s]", title=f"optimal data set ({len(train)} train samples)")

    # (b, c) TRC against the optimum on test instances
    for i in range(min(4, len(res["x0"]))):
        color = f"C{i}"
        ax[1].plot(t, res["opt_states"][i, :, 0], "--", color=color, lw=1)
        ax[1].plot(t, res["trc_states"][i, :, 0], color=color, lw=1.5)
        ax[1].axhline(res["target"][i, 0], color=color, lw=0.5, ls=":")
        stairs(ax[2], problem.dt, res["opt_controls"][i, :, 0], ls="--", color=color, lw=1)
        stairs(ax[2], problem.dt, res["trc_controls"][i, :, 0], color=color, lw=1.5)
    for bound in (problem.plant["u_min"], problem.plant["u_max"]):
        ax[2].axhline(bound, color="k", lw=0.6)
    ax[1].set(xlabel="time [s]", ylabel="position [m]", title="TRC (solid) vs optimal (dashed)")
    ax[2].set(xlabel="time [s]", ylabel="control u [m/s$^2$]",
              title=f"controls; test median cost gap {np.median(res['gap']):.1%}")
    save(fig, args, "01_double_integrator")


if __name__ == "__main__":
    main()
