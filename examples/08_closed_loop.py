"""Closed loop: TRC as a feedback controller on Van der Pol, against the saturated LQR and MPC.

A trained TRC model plans ``N`` controls from a state; used in feedback it re-plans at every
step from the *measured* state and applies the first control (receding horizon). Here the
closed-loop harness :mod:`trc.closed_loop` runs it for ``2 N`` steps, so it has to reach the
unstable origin of the Van der Pol oscillator and then hold it, under the harness's
``perturbed`` case: every physical parameter of the simulated plant off by up to ±20 %
(drawn per episode), process and measurement noise. The plant is the textbook vector field
integrated by ``solve_ivp``, not the network's own differentiable plant. The baselines meet the
same episodes and perturbations: the saturated infinite-horizon LQR at the origin and nonlinear
MPC (CasADi + IPOPT, the problem's horizon, cost and bound on the nominal model).

The same TRC policy also runs in a Gymnasium environment: ``ClosedLoopEnv`` is the harness's
plant and perturbations behind the ``PlantEnv`` interface, and
:class:`trc.policy.RecedingHorizonPolicy` turns the model into ``policy(observation) -> action``.

Figure: the phase plane, the controls and the distance to the origin of every controller.

    python examples/08_closed_loop.py [--quick]
"""

import time

import numpy as np

from _common import parse_args, plt, save, stairs, trained_model

from trc import closed_loop as cl
from trc.policy import RecedingHorizonPolicy, run_episode

COLORS = {"trc": "C0", "lqr": "C1", "mpc": "C2"}


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    model, data = trained_model("van_der_pol", args)
    problem = data.problem
    config = cl.ClosedLoopConfig(episodes=2 if args.quick else 10, perturbation="perturbed", seed=args.seed,
                                 timing_repeats=5 if args.quick else 30)
    controllers = [cl.TRCController(model, name="trc")] + cl.baselines(problem)  # + LQR, MPC
    t0 = time.perf_counter()
    results = cl.compare(problem, controllers, config)
    print(cl.summary_table(results, f"{problem.name}, perturbed: {config.episodes} episodes of "
                                    f"{2 * problem.horizon} steps (2 N), re-planned every step"))
    print(f"({time.perf_counter() - t0:.0f} s)")

    # The same policy in a Gymnasium environment with the harness's plant and perturbations.
    steps = 2 * problem.horizon
    env = cl.ClosedLoopEnv.from_problem(problem, perturbation="perturbed", horizon=steps, terminate_at_target=False)
    episode = run_episode(env, RecedingHorizonPolicy(model, env), seed=args.seed)
    gym_err = np.linalg.norm(episode.states - episode.target, axis=1)
    print(f"gymnasium ClosedLoopEnv: {len(episode)} steps, return {episode.total_reward:.1f}, "
          f"final ||x - x*|| = {gym_err[-1]:.3f} (tolerance {problem.tolerance})")

    target = np.broadcast_to(np.asarray(problem.target_state.low, float), (config.episodes, problem.state_dim))
    names = [name for name in COLORS if name in results and results[name].error is None]
    dt, N = float(problem.dt), problem.horizon
    fig, ax = plt.subplots(1, 3, figsize=(14, 4))
    x = np.linspace(-3, 3, 25)
    X, V = np.meshgrid(x, x)
    mu = problem.plant.get("mu", 1.0)
    ax[0].streamplot(X, V, V, mu * (1 - X ** 2) * V - X, color="0.85", density=0.8, linewidth=0.6)
    for name in names:
        r = results[name]
        for i in range(len(r.states)):
            ax[0].plot(*r.states[i].T, color=COLORS[name], lw=1.2 if i == 0 else 0.6, alpha=1 if i == 0 else 0.5,
                       label=name if i == 0 else None)
        stairs(ax[1], dt, r.controls[0, :, 0], color=COLORS[name], lw=1.2, label=name)
        d = cl.target_error(problem, r.states, target[:, None])
        t = np.arange(d.shape[1]) * dt
        ax[2].semilogy(t, d.T, color=COLORS[name], lw=0.7, alpha=0.6)
        s = r.summary()
        ax[2].plot([], [], color=COLORS[name],
                   label=f"{name}: {s['success_rate']:.0%} held, cost {s['cost_ratio_median']:.3f} x opt")
    ax[0].plot(*results["optimum"].states[0].T, "k--", lw=0.8, label="optimum (open loop, nominal)")
    start = results[names[0]].states[:, 0]
    ax[0].plot(*start.T, "ko", ms=3)
    ax[0].plot(0, 0, "k*", ms=10)
    ax[0].set(xlim=(-3, 3), ylim=(-3, 3), xlabel="position x", ylabel="velocity x'",
              title=f"{config.episodes} perturbed episode(s) (bold: the first)")
    ax[0].legend(fontsize=8, loc="upper left")
    u_max = problem.plant["u_max"]
    for bound in (-u_max, u_max):
        ax[1].axhline(bound, color="k", lw=0.6)
    ax[1].set(xlabel="time [s]", ylabel="control u", title="controls of the first episode")
    ax[1].legend(fontsize=8)
    ax[2].axhline(problem.tolerance, color="k", lw=0.6, ls="--")
    ax[2].axvspan((1 - 0.1) * 2 * N * dt, 2 * N * dt, color="0.9", zorder=0)  # the last 10 %: must stay below
    ax[2].set(xlabel="time [s]", ylabel="||x - x*||", title="distance to the origin (hold: grey span)",
              ylim=(1e-4, 10))
    ax[2].legend(fontsize=7, loc="lower left")
    for a in ax[1:]:
        a.axvline(N * dt, color="0.6", ls=":", lw=0.8)
    fig.suptitle(f"Van der Pol in closed loop, ±20 % parameters and noise, {2 * N} steps (N = {N}, dotted)")
    save(fig, args, "08_closed_loop")


if __name__ == "__main__":
    main()
