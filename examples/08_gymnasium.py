"""Gymnasium: a TRC controller acting in a Gymnasium environment, in closed loop.

Every TRC plant is a Gymnasium environment (``dynamics.make_env``, ids ``trc/<Name>-v0``):
the observation is ``(x, x*)``, the action the control, the reward minus the stage cost. A
:class:`trc.policy.RecedingHorizonPolicy` turns a trained model into a policy: at every step
it plans the whole horizon from the observed state and applies the first control.

Here the environment of the Van der Pol problem (``PlantEnv.from_problem``: regulation to the
origin from a random state), 1.5 times longer than the plan's horizon, so the policy must also
hold the unstable origin once it is there; the same policy also drives 16 episodes at once in
the batched vector environment.

Figure: one episode in the phase plane and its control; the distance to the origin of the 16
batched episodes.

    python examples/08_gymnasium.py [--quick]
"""

import numpy as np

from _common import parse_args, plt, save, trained_model

from dynamics.env import PlantEnv, PlantVectorEnv
from trc.policy import RecedingHorizonPolicy, run_episode


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    model, data = trained_model("van_der_pol", args)
    problem = data.problem
    steps = 8 if args.quick else 3 * problem.horizon // 2  # reach the origin, then stay there
    env = PlantEnv.from_problem(problem, horizon=steps, terminate_at_target=False)
    policy = RecedingHorizonPolicy(model, env)
    episode = run_episode(env, policy, seed=args.seed)
    err = np.linalg.norm(episode.states - episode.target, axis=1)
    print(f"episode: {len(episode)} steps, return {episode.total_reward:.1f}, final ||x - x*|| = {err[-1]:.3f}")

    # The same policy on a batch of episodes: one network pass per step for all of them.
    batch = 2 if args.quick else 16
    envs = PlantVectorEnv.from_problem(problem, num_envs=batch, horizon=steps, terminate_at_target=False)
    obs, info = envs.reset(seed=args.seed)
    returns, distance = np.zeros(batch), []
    for _ in range(steps):
        obs, reward, terminated, truncated, info = envs.step(policy(obs))
        returns += reward
        distance.append(np.linalg.norm(info["state"] - info["target"], axis=1))
    final = distance[-1]
    print(f"{batch} episodes: mean return {returns.mean():.1f}, "
          f"{np.mean(final < problem.tolerance):.0%} end within {problem.tolerance} of the origin")

    t = np.arange(len(episode) + 1) * problem.dt
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    ax[0].plot(*episode.states.T)
    ax[0].plot(*episode.states[0], "o", ms=4)
    ax[0].plot(*episode.target, "k*", ms=9)
    ax[0].set(xlabel="position x", ylabel="velocity x'",
              title=f"one episode, return {episode.total_reward:.1f}")
    ax[1].step(t[:-1], episode.actions[:, 0], where="post")
    if steps > problem.horizon:
        ax[1].axvline(problem.horizon * problem.dt, color="0.6", ls=":", label="one plan horizon")
        ax[1].legend(fontsize=8)
    ax[1].set(xlabel="time [s]", ylabel="control u", title="actions (re-planned every step)")
    ax[2].semilogy(t[1:], np.array(distance))
    ax[2].axhline(problem.tolerance, color="k", lw=0.6)
    ax[2].set(xlabel="time [s]", ylabel="||x - x*||",
              title=f"batch of {batch}: {np.mean(final < problem.tolerance):.0%} within {problem.tolerance} at the end")
    save(fig, args, "08_gymnasium")


if __name__ == "__main__":
    main()
