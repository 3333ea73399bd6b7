"""Swing-ups: pendulum and cart-pole, TRC against the optimal trajectories.

Two non-convex problems where the controller has to pump energy before it can balance:

* pendulum (``configs/pendulum.yaml``): a 1 kg, 1 m rod from hanging (``theta = 0``) to
  upright (``theta = pi``) in 3 s with a torque of at most 3 N m, below the 4.9 N m gravity
  torque, so a direct lift is impossible;
* cart-pole (``configs/cartpole.yaml``, Barto et al. 1983 parameters): the pole from hanging
  (``theta = pi``) to upright (``theta = 0``) with the cart back at the origin, ``|F| <= 10 N``.

The ``nonlinear`` generator (Gauss-Newton SQP with multiple shooting) provides the optimal
trajectories. Figure: angles and controls of TRC (solid) and the optimum (dashed) on test
instances.

    python examples/03_swing_up.py [--quick]
"""

import numpy as np

from _common import compare, parse_args, plt, save, stairs, trained_model


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    fig, ax = plt.subplots(2, 2, figsize=(11, 6.4), sharex="col")
    for col, (name, angle, target_angle) in enumerate((("pendulum", 0, np.pi), ("cartpole", 2, 0.0))):
        model, data = trained_model(name, args)
        problem = data.problem
        res = compare(model, data)
        print(f"{name}: test median cost gap {np.median(res['gap']):.2%}, success {res['success'].mean():.0%}")
        t = np.arange(problem.horizon + 1) * problem.dt
        for i in range(min(4, len(res["x0"]))):
            color = f"C{i}"
            ax[0, col].plot(t, res["opt_states"][i, :, angle], "--", color=color, lw=1)
            ax[0, col].plot(t, res["trc_states"][i, :, angle], color=color, lw=1.6)
            stairs(ax[1, col], problem.dt, res["opt_controls"][i, :, 0], ls="--", color=color, lw=1)
            stairs(ax[1, col], problem.dt, res["trc_controls"][i, :, 0], color=color, lw=1.6)
        ax[0, col].axhline(target_angle, color="k", lw=0.6)
        u_max = problem.plant["u_max"]
        for bound in (-u_max, u_max):
            ax[1, col].axhline(bound, color="k", lw=0.6)
        unit = "N m" if name == "pendulum" else "N"
        ax[0, col].set(ylabel="pole angle theta [rad]", title=f"{name}: test median cost gap {np.median(res['gap']):.1%}")
        ax[1, col].set(xlabel="time [s]", ylabel=f"{model.plant.control_names[0]} [{unit}]")
    fig.suptitle("Swing-ups: TRC (solid) vs optimal (dashed)")
    save(fig, args, "03_swing_up")


if __name__ == "__main__":
    main()
