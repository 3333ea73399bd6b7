"""python-control: a TRC controller in a python-control closed loop, next to LQR and MPC.

The plant is written directly in python-control (a continuous-time double integrator,
``ct.ss``) and sampled with a zero-order hold (:func:`trc.iosys.sample_system`). Three
controllers move it from 1.5 m to -1 m at rest, each as a python-control system:

* TRC: ``model.to_iosys()``, a discrete-time receding-horizon controller (the network plans
  15 steps, the first control is applied, repeat), connected with ``ct.interconnect``;
* LQR: ``ct.dlqr`` gains on the same weights, ``ct.create_statefbk_iosystem`` (unconstrained,
  so it may exceed the bound ``|u| <= 4``);
* MPC: ``control.optimal.create_mpc_iosystem`` with the same horizon, cost and input bound
  (scipy's SLSQP at every step, hence slow).

The closed loops are simulated with ``ct.input_output_response``.

    python examples/06_python_control.py [--quick]
"""

import time

import control as ct
import control.optimal as opt
import numpy as np

from _common import parse_args, plt, save, trained_model

from trc.iosys import sample_system


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    model, data = trained_model("double_integrator", args)
    problem = data.problem
    dt, N = problem.dt, problem.horizon
    Q, R, Qf = problem.weights
    u_max = problem.plant["u_max"]
    steps = 6 if args.quick else 25
    T = np.arange(steps) * dt
    x0, xd = np.array([1.5, 0.0]), np.array([-1.0, 0.0])

    # The plant, written in python-control, sampled at the controller's dt.
    plant_c = ct.ss([[0, 1], [0, 0]], [[0], [1]], np.eye(2), 0, inputs="acceleration",
                    outputs=["position", "velocity"], name="double_integrator")
    plant = sample_system(plant_c, dt, name="plant")
    results = {}

    # TRC: measured state + target in, first planned control out; connected by signal names.
    trc_ctrl = model.to_iosys(name="trc")
    loop = ct.interconnect([plant, trc_ctrl], inplist=["xd[0]", "xd[1]"], outlist=["position", "velocity", "acceleration"])
    start = time.perf_counter()
    resp = ct.input_output_response(loop, T, np.tile(xd[:, None], steps), X0=x0)
    results["TRC (receding horizon)"] = (resp, time.perf_counter() - start)

    # LQR: infinite-horizon discrete LQR with the problem's per-step weights dt Q, dt R.
    K, _, _ = ct.dlqr(plant, dt * Q, dt * R)
    _, lqr_loop = ct.create_statefbk_iosystem(plant, K, name="lqr")
    start = time.perf_counter()
    resp = ct.input_output_response(lqr_loop, T, np.vstack([np.tile(xd[:, None], steps), np.zeros((1, steps))]), X0=x0)
    results["LQR (ct.dlqr, unconstrained)"] = (resp, time.perf_counter() - start)

    # MPC: python-control's optimisation-based controller, same horizon, cost and bound.
    horizon = 4 if args.quick else N
    mpc = opt.create_mpc_iosystem(
        plant, np.arange(horizon) * dt, opt.quadratic_cost(plant, dt * Q, dt * R, x0=xd),
        [opt.input_range_constraint(plant, [-u_max], [u_max])],
        terminal_cost=opt.quadratic_cost(plant, Qf, None, x0=xd), inputs=["position", "velocity"], name="mpc",
    )
    mpc_loop = ct.interconnect([plant, mpc], inputs=0, outlist=["position", "velocity", "acceleration"])
    start = time.perf_counter()
    resp = ct.input_output_response(mpc_loop, T, 0, X0=np.concatenate([x0, np.zeros(mpc.nstates)]))
    results[f"MPC (create_mpc_iosystem, N={horizon})"] = (resp, time.perf_counter() - start)

    fig, ax = plt.subplots(1, 3, figsize=(13, 3.6))
    for (label, (resp, seconds)), style in zip(results.items(), ("-", "--", ":")):
        y = resp.outputs
        print(f"{label}: {1e3 * seconds / steps:.1f} ms per step, final state {np.round(y[:2, -1], 3)}")
        ax[0].plot(T, y[0], style, lw=1.6, label=label)
        ax[1].plot(T, y[1], style, lw=1.6, label=label)
        ax[2].step(T, y[2], style, where="post", lw=1.6, label=f"{label}: {1e3 * seconds / steps:.0f} ms/step")
    ax[0].axhline(xd[0], color="k", lw=0.6)
    for bound in (-u_max, u_max):
        ax[2].axhline(bound, color="k", lw=0.6)
    ax[0].set(xlabel="time [s]", ylabel="position [m]", title="closed loops in python-control")
    ax[1].set(xlabel="time [s]", ylabel="velocity [m/s]")
    ax[2].set(xlabel="time [s]", ylabel="acceleration u [m/s$^2$]", title="controls (and time per step)")
    ax[0].legend(fontsize=8)
    ax[2].legend(fontsize=7)
    save(fig, args, "06_python_control")


if __name__ == "__main__":
    main()
