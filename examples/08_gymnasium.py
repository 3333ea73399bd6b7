"""Gymnasium: a TRC controller acting in a Gymnasium environment, in closed loop.

Every TRC plant is a Gymnasium environment (``dynamics.make_env``, ids ``trc/<Name>-v0``):
the observation is ``(x, x*)``, the action the control, the reward minus the stage cost. A
:class:`trc.policy.RecedingHorizonPolicy` turns a trained model into a policy: at every step
it plans the whole horizon from the observed state and applies the first control.

Here the environment of the pendulum swing-up problem (``PlantEnv.from_problem``), longer than
the plan's horizon so the policy has to balance after the swing-up; the same policy also
drives 16 episodes at once in the batched vector environment.

Figure: angle, torque and cumulative reward of one episode; the success rate of the batch.

    python examples/08_gymnasium.py [--quick]
"""

import numpy as np

from _common import parse_args, plt, save, trained_model

from dynamics.env import PlantEnv, PlantVectorEnv
from trc.policy import RecedingHorizonPolicy, run_episode


def main(argv=None):
    args = parse_args(__doc__.splitlines()[0], argv)
    model, data = trained_model("pendulum", args)
    problem = data.problem
    steps = 8 if args.quick else 2 * problem.horizon  # swing up, then keep it up
    env = PlantEnv.from_problem(problem, horizon=steps, terminate_at_target=False)
    policy = RecedingHorizonPolicy(model, env)
    episode = run_episode(env, policy, seed=args.seed)
    err = np.abs(episode.states[:, 0] - episode.target[0])
    print(f"episode: {len(episode)} steps, return {episode.total_reward:.1f}, final |theta - pi| = {err[-1]:.3f} rad")

    # The same policy on a batch of episodes: one network pass per step for all of them.
    batch = 2 if args.quick else 16
    envs = PlantVectorEnv.from_problem(problem, num_envs=batch, horizon=steps, terminate_at_target=False)
    obs, info = envs.reset(seed=args.seed)
    returns = np.zeros(batch)
    for _ in range(steps):
        obs, reward, terminated, truncated, info = envs.step(policy(obs))
        returns += reward
    final = np.abs(info["state"][:, 0] - info["target"][:, 0])
    print(f"{batch} episodes: mean return {returns.mean():.1f}, "
          f"{np.mean(final < problem.tolerance):.0%} end within {problem.tolerance} rad of upright")

    t = np.arange(len(episode) + 1) * problem.dt
    fig, ax = plt.subplots(1, 3, figsize=(13, 3.5))
    ax[0].plot(t, episode.states[:, 0], label="theta")
    ax[0].axhline(episode.target[0], color="k", lw=0.6)
    if steps > problem.horizon:
        ax[0].axvline(problem.horizon * problem.dt, color="0.6", ls=":", label="one plan horizon")
    ax[0].set(xlabel="time [s]", ylabel="theta [rad]", title="pendulum env, receding-horizon TRC policy")
    ax[0].legend(fontsize=8)
    ax[1].step(t[:-1], episode.actions[:, 0], where="post")
    ax[1].set(xlabel="time [s]", ylabel="torque [N m]", title="actions")
    ax[2].plot(t[1:], np.cumsum(episode.rewards))
    ax[2].set(xlabel="time [s]", ylabel="cumulative reward (= -cost)",
              title=f"batch of {batch}: {np.mean(final < problem.tolerance):.0%} upright at the end")
    save(fig, args, "08_gymnasium")


if __name__ == "__main__":
    main()
