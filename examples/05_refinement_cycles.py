"""Refinement cycles: how each recursive cycle of TRC shrinks the cost gap.

TRC decodes a first guess of the whole control sequence, then refines it ``H_cycles`` times:
each cycle rolls the current controls out through the plant, encodes the trajectory error and
updates the latent state with the shared recursion core, which decodes a correction. With
``return_all_iterations=True`` the model returns the controls and costs after every cycle.

Figure (Van der Pol problem): (left) the cost gap ``J_k / J* - 1`` after each cycle ``k`` on
the test split (median and quartiles); (right) the phase-plane trajectory of one instance
after each cycle, converging towards the optimal one (black, dashed).

    python examples/05_refinement_cycles.py [--quick]
"""

import numpy as np
import torch

from _common import parse_args, plt, save, trained_model


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    model, data = trained_model("van_der_pol", args)
    test = data.test
    with torch.no_grad():
        out = model(test.x0, test.target, return_all_iterations=True)
    # all_costs: (cycles + 1, batch), the problem's cost of the controls after each cycle
    gap = (out.all_costs.double() / test.cost.double() - 1).numpy()
    q25, q50, q75 = np.nanpercentile(gap, [25, 50, 75], axis=1)
    for k, g in enumerate(q50):
        print(f"cycle {k}: median cost gap {g:.2%}")

    fig, ax = plt.subplots(1, 2, figsize=(11, 3.8))
    cycles = np.arange(gap.shape[0])
    ax[0].fill_between(cycles, q25, q75, alpha=0.3, label="quartiles")
    ax[0].plot(cycles, q50, "o-", label="median")
    ax[0].set_yscale("log")
    ax[0].set(xlabel="refinement cycle k (0 = initial decode)", ylabel="cost gap J_k / J* - 1",
              title=f"test split ({len(test)} instances)", xticks=cycles)
    ax[0].legend()

    # all_states: (cycles + 1, batch, N + 1, n), the plant rollouts of each cycle's controls
    i = int(np.argmax(test.cost.numpy()))  # the instance with the longest way to go
    colors = plt.cm.viridis(np.linspace(0, 0.9, gap.shape[0]))
    for k, color in enumerate(colors):
        ax[1].plot(*out.all_states[k, i].numpy().T, color=color, lw=1.4, label=f"cycle {k}: gap {gap[k, i]:.0%}")
    ax[1].plot(*test.states[i].numpy().T, "k--", lw=1.2, label="optimal")
    ax[1].plot(*test.x0[i].numpy(), "ko", ms=4)
    ax[1].plot(0, 0, "k*", ms=9)
    ax[1].set(xlabel="position x", ylabel="velocity x'", title="one test instance: trajectory after each cycle")
    ax[1].legend(fontsize=8)
    save(fig, args, "05_refinement_cycles")


if __name__ == "__main__":
    main()
