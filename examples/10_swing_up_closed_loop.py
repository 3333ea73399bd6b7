"""Closed-loop swing-up: the pendulum from near hanging to upright, re-planned at every step.

The pendulum of ``configs/pendulum.yaml`` (a 1 kg, 1 m rod, torque at most 3 N m, below the
4.9 N m peak gravity torque, so it has to pump energy) in closed loop with the harness
:mod:`trc.closed_loop`: every controller re-plans from the measured state at every step for
``2 N`` steps (swing up, then balance), under the ``perturbed`` case (every physical parameter
off by up to ±20 % per episode, process and measurement noise) on the textbook vector field
integrated by ``solve_ivp``. Controllers on the same episodes:

* TRC: the trained model, its whole plan re-computed from every measured state;
* MPC: CasADi + IPOPT with the problem's horizon, cost and torque bound on the nominal model,
  warm-started from its previous solution;
* the saturated LQR at the upright equilibrium: a local controller, which cannot swing up.

For reference, TRC's first plan of each episode is also flown open loop on the nominal plant,
which is what the model is trained for (one plan from a state of the initial box).

Figure: angle, torque, distance to upright and the phase plane of every controller.

    python examples/10_swing_up_closed_loop.py [--quick]
"""

import time

import numpy as np

from _common import parse_args, plt, save, stairs, trained_model

from trc import closed_loop as cl

COLORS = {"trc": "C0", "mpc": "C2", "lqr": "C1"}


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    model, data = trained_model("pendulum", args)
    problem = data.problem
    # Quick mode: one short episode (each TRC plan runs the model's 10 terminal-correction steps).
    config = cl.ClosedLoopConfig(episodes=1 if args.quick else 8, steps=6 if args.quick else None,
                                 perturbation="perturbed", seed=args.seed, timing_repeats=1 if args.quick else 20)
    dt, N = float(problem.dt), problem.horizon
    steps = config.steps or 2 * N
    controllers = [cl.TRCController(model, name="trc"), cl.MPCController(problem), cl.LQRController(problem)]
    t0 = time.perf_counter()
    results = cl.compare(problem, controllers, config)
    print(cl.summary_table(results, f"{problem.name}, perturbed: {config.episodes} episodes of "
                                    f"{steps} steps, re-planned every step"))
    print(f"({time.perf_counter() - t0:.0f} s)")

    target = np.broadcast_to(np.asarray(problem.target_state.low, float), (config.episodes, problem.state_dim))
    # What the model was trained for: one plan from the initial state, flown open loop (nominal plant).
    x0 = results["trc"].states[:, 0]
    one_plan = cl.run(problem, cl.TRCController(model, name="trc, one plan"),
                      cl.ClosedLoopConfig(episodes=config.episodes, steps=N, replan_every=N, seed=args.seed),
                      x0=x0, target=target, timing=False)
    miss = cl.target_error(problem, one_plan.states, target[:, None])[:, -1]
    print(f"TRC's first plan flown open loop on the nominal plant: ||x_N - x*|| median {np.median(miss):.3f}, "
          f"{np.mean(miss < problem.tolerance):.0%} within {problem.tolerance}")
    fig, ax = plt.subplots(2, 2, figsize=(12, 7.5))
    for name, color in COLORS.items():
        r = results[name]
        if r.error is not None:
            continue
        s = r.summary()
        label = (f"{name}: {s['success_rate']:.0%} held, cost {s['cost_ratio_median']:.2f} x opt, "
                 f"{s['ms_per_step']:.3g} ms")
        t = np.arange(r.states.shape[1]) * dt
        for i in range(len(r.states)):
            kw = {"color": color, "lw": 1.5 if i == 0 else 0.6, "alpha": 1 if i == 0 else 0.5}
            ax[0, 0].plot(t, r.states[i, :, 0], label=label if i == 0 else None, **kw)
            ax[1, 1].plot(r.states[i, :, 0], r.states[i, :, 1], **kw)
        stairs(ax[0, 1], dt, r.controls[0, :, 0], color=color, lw=1.2, label=name)
        ax[1, 0].semilogy(t, cl.target_error(problem, r.states, target[:, None]).T, color=color, lw=0.7, alpha=0.7)
    ax[0, 0].plot(np.arange(N + 1) * dt, one_plan.states[0, :, 0], ":", color=COLORS["trc"], lw=1.5,
                  label=f"trc, first plan flown open loop (nominal): miss {miss[0]:.2f}")
    ax[1, 1].plot(one_plan.states[0, :, 0], one_plan.states[0, :, 1], ":", color=COLORS["trc"], lw=1.5)
    opt = results["optimum"].states[0]
    ax[0, 0].plot(np.arange(len(opt)) * dt, opt[:, 0], "k--", lw=0.8, label="optimum (open loop, nominal)")
    ax[1, 1].plot(opt[:, 0], opt[:, 1], "k--", lw=0.8)
    ax[0, 0].axhline(np.pi, color="k", lw=0.6)
    ax[0, 0].set(xlabel="time [s]", ylabel="angle theta [rad] (upright: pi)",
                 title=f"{config.episodes} perturbed episode(s) (bold: the first)")
    ax[0, 0].legend(fontsize=7, loc="lower right")
    u_max = problem.plant["u_max"]
    for bound in (-u_max, u_max):
        ax[0, 1].axhline(bound, color="k", lw=0.6)
    ax[0, 1].set(xlabel="time [s]", ylabel="torque u [N m]", title="torque of the first episode")
    ax[0, 1].legend(fontsize=8)
    ax[1, 0].axhline(problem.tolerance, color="k", lw=0.6, ls="--")
    ax[1, 0].axvspan(0.9 * steps * dt, steps * dt, color="0.9", zorder=0)  # the last 10 %: must stay below
    ax[1, 0].set(xlabel="time [s]", ylabel="||x - x*||", ylim=(1e-4, 20),
                 title="distance to upright (tolerance dashed; hold: grey span)")
    if steps > N:
        for a in (ax[0, 0], ax[0, 1], ax[1, 0]):
            a.axvline(N * dt, color="0.6", ls=":", lw=0.8)
    ax[1, 1].plot(np.pi, 0, "k*", ms=10)
    ax[1, 1].set(xlabel="angle theta [rad]", ylabel="rate theta' [rad/s]", title="phase plane")
    fig.suptitle(f"Pendulum swing-up in closed loop, ±20 % parameters and noise, {steps} steps (N = {N}, dotted)")
    save(fig, args, "10_swing_up_closed_loop")


if __name__ == "__main__":
    main()
