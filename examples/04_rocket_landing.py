"""Mars powered descent: TRC's landing trajectories against the fuel-optimal ones, in 3-D.

The problem (``configs/rocket.yaml``, Açıkmeşe & Ploen 2007 vehicle): land at the origin at
rest after 72 s, using as little propellant as possible, with the thrust magnitude between
``rho1`` and ``rho2`` and a glide-slope cone. The ``rocket`` generator solves it exactly by
lossless convexification (an SOCP per instance); TRC learns the thrust profiles.

Figure: (left) 3-D trajectories of TRC (solid) and the optimum (dashed) from test initial
states; (right) thrust magnitudes with the bounds ``rho1``, ``rho2``, and the fuel used.

    python examples/04_rocket_landing.py [--quick]
"""

import numpy as np

from _common import compare, parse_args, plt, save, stairs, trained_model


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    model, data = trained_model("rocket", args)
    problem = data.problem
    res = compare(model, data)
    landing = np.linalg.norm(res["trc_states"][:, -1, :3] - res["target"][:, :3], axis=1)
    print(f"test split: median fuel gap {np.median(res['gap']):.2%}, median landing miss {np.median(landing):.1f} m")

    fig = plt.figure(figsize=(12, 4.8))
    ax3 = fig.add_subplot(1, 2, 1, projection="3d")
    ax = fig.add_subplot(1, 2, 2)
    for i in range(min(4, len(res["x0"]))):
        color = f"C{i}"
        ax3.plot(*res["opt_states"][i, :, :3].T, "--", color=color, lw=1)
        ax3.plot(*res["trc_states"][i, :, :3].T, color=color, lw=1.6)
        ax3.scatter(*res["x0"][i, :3], color=color, s=12)
        stairs(ax, problem.dt, np.linalg.norm(res["opt_controls"][i], axis=1) / 1e3, ls="--", color=color, lw=1)
        stairs(ax, problem.dt, np.linalg.norm(res["trc_controls"][i], axis=1) / 1e3, color=color, lw=1.6,
               label=f"fuel {res['trc_cost'][i]:.0f} kg (optimal {res['opt_cost'][i]:.0f} kg)")
    ax3.scatter(0, 0, 0, color="k", marker="x", s=40)
    ax3.set(xlabel="x [m]", ylabel="y [m]", zlabel="altitude z [m]", title="TRC (solid) vs fuel-optimal (dashed)")
    plant = model.plant
    for bound in (plant.rho1, plant.rho2):
        ax.axhline(bound / 1e3, color="k", lw=0.6)
    ax.set(xlabel="time [s]", ylabel="thrust ||T|| [kN]",
           title=f"thrust between rho1 and rho2; test median fuel gap {np.median(res['gap']):.1%}")
    ax.legend(fontsize=8, loc="center right")
    save(fig, args, "04_rocket_landing")


if __name__ == "__main__":
    main()
