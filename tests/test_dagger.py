"""Dataset aggregation for closed-loop control (trc.training.dagger).

References: the saturated LQR's closed loop on the double integrator against the recursion
``x_{k+1} = (A - B K) x_k`` with ``K`` from scipy's discrete algebraic Riccati equation and the
exact zero-order hold; the per-episode plant against separately built plants; the cost against
a hand-written sum.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.linalg
import torch
import yaml

import dynamics
import trc
from dynamics.errors import CheckpointError, ConfigError, DimensionError, UnknownNameError
from trc.experiment import experiment_from_dict
from trc.generators.storage import read_dataset
from trc.models import TinyRecursiveControl, TRCConfig
from trc.training.dagger import (
    DaggerConfig,
    closed_loop,
    episode_metrics,
    main,
    model_policy,
    perturbed_plant,
    run_dagger,
    sample_parameter_scales,
    saturated_lqr_policy,
)

# A double integrator with a short horizon, targets at rest and wide bounds (the lqr solver
# ignores bounds; its checks drop the labels that exceed them).
TINY = {
    "problem": {"task": "double_integrator", "name": "di_tiny", "horizon": 6,
                "plant": {"u_min": -50.0, "u_max": 50.0},
                "target_state": {"low": [-1.0, 0.0], "high": [1.0, 0.0]}},
    "generator": {"solver": "lqr", "num_samples": 10, "out": "unused.h5"},
    "model": {"latent_dim": 16, "hidden_dim": 32, "H_cycles": 1, "L_cycles": 1, "num_layers": 1},
    "training": {"batch_size": 64, "lr": 3e-3, "num_threads": 1, "val_every": 1, "ema_decay": None},
}

FAST = dict(episodes=5, epochs=2, eval_episodes=4, labels_per_round=20, process_noise=0.01,
            measurement_noise=0.01)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_experiment(**problem):
    cfg = json.loads(json.dumps(TINY))
    cfg["problem"].update(problem)
    return experiment_from_dict(cfg)


def tiny_model(exp, seed: int = 0) -> TinyRecursiveControl:
    torch.manual_seed(seed)
    return TinyRecursiveControl.from_problem(exp.problem, exp.parse("model", TRCConfig))


def weights(model) -> dict:
    return {k: v.clone() for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------- closed loop against references
def test_saturated_lqr_closed_loop_matches_the_riccati_recursion():
    exp = tiny_experiment()
    problem = exp.problem
    dt = problem.dt
    A = np.array([[1.0, dt], [0.0, 1.0]])  # exact ZOH of x'' = u (Franklin, Powell & Workman, sec. 4.3)
    B = np.array([[dt**2 / 2], [dt]])
    Q, R, Qf = problem.weights
    P = scipy.linalg.solve_discrete_are(A, B, Q * dt, R * dt)
    K = np.linalg.solve(R * dt + B.T @ P @ B, B.T @ P @ A)
    x0 = np.array([[0.5, -0.3], [-0.8, 0.2], [0.1, 0.4]])
    target = np.array([[0.2, 0.0], [-0.5, 0.0], [0.0, 0.0]])
    steps = 12
    xt_t = torch.as_tensor(target)
    X, U, div = closed_loop(saturated_lqr_policy(problem, xt_t), perturbed_plant(problem), torch.as_tensor(x0), xt_t,
                            steps)
    ref = [x0 - target]
    for _ in range(steps):
        ref.append(ref[-1] @ (A - B @ K).T)
    ref = np.stack(ref, 1) + target[:, None]
    assert not div.any()
    np.testing.assert_allclose(X.numpy(), ref, atol=1e-10)
    # cost of the first N steps plus the terminal term, by hand
    N = problem.horizon
    e = ref[:, :N + 1] - target[:, None]
    u = -np.einsum("mn,ekn->ekm", K, e[:, :N])
    J = dt * (np.einsum("ekn,nm,ekm->e", e[:, :N], Q, e[:, :N]) + np.einsum("ekm,ml,ekl->e", u, R, u)) \
        + np.einsum("en,nm,em->e", e[:, N], Qf, e[:, N])
    m = episode_metrics(problem, perturbed_plant(problem), X, U, xt_t, torch.as_tensor(J / 2.0), div)
    np.testing.assert_allclose(m["cost"], J, rtol=1e-10)
    np.testing.assert_allclose(m["cost_ratio"], 2.0, rtol=1e-10)


def test_success_needs_the_whole_final_tenth_within_tolerance():
    problem = tiny_experiment().problem
    plant = perturbed_plant(problem)
    steps = 20  # the last 10 %: the final 2 states
    X = torch.zeros(3, steps + 1, 2, dtype=torch.float64)
    X[1, -2, 0] = 0.5  # leaves the tolerance (0.1) one step before the end
    X[2, -3, 0] = 0.5  # outside only before the last 10 %
    U = torch.zeros(3, steps, 1, dtype=torch.float64)
    m = episode_metrics(problem, plant, X, U, torch.zeros(3, 2, dtype=torch.float64))
    assert m["success"].tolist() == [True, False, True]
    np.testing.assert_allclose(m["steady_state_error"], [0.0, 0.25, 0.0])
    assert np.isnan(m["cost_ratio"]).all()  # no optimal costs given


def test_perturbed_plant_steps_each_episode_with_its_own_parameters():
    problem = experiment_from_dict({"problem": {"task": "van_der_pol"}}).problem
    rng = np.random.default_rng(3)
    scales = sample_parameter_scales(["mu"], 5, 0.8, 1.2, rng)
    assert ((scales["mu"] >= 0.8) & (scales["mu"] <= 1.2)).all() and np.ptp(scales["mu"]) > 0
    batched = perturbed_plant(problem, scales)
    x = torch.as_tensor(rng.uniform(-2, 2, (5, 2)))
    u = torch.as_tensor(rng.uniform(-2, 2, (5, 1)))
    got = batched.step(x, u)
    for i, factor in enumerate(scales["mu"]):
        single = dynamics.make("van_der_pol", dtype=torch.float64, mu=float(factor), dt=problem.dt, u_min=-2.0,
                               u_max=2.0)
        torch.testing.assert_close(got[i:i + 1], single.step(x[i:i + 1], u[i:i + 1]), rtol=0, atol=1e-14)


def test_unit_factors_give_the_nominal_plant_of_a_scalar_parameter_plant():
    # The pendulum's constructor takes scalar parameters only: param_scale [1, 1] must still run
    # (the nominal plant), and real factors must raise a ConfigError that says so.
    problem = experiment_from_dict({"problem": {"task": "pendulum"}}).problem
    rng = np.random.default_rng(5)
    names = ["I", "m"]
    unit = sample_parameter_scales(names, 4, 1.0, 1.0, rng)
    assert all((v == 1.0).all() for v in unit.values())
    plant = perturbed_plant(problem, unit)
    x = torch.as_tensor(rng.uniform(-3, 3, (4, 2)))
    u = torch.as_tensor(rng.uniform(-3, 3, (4, 1)))
    reference = dynamics.make("pendulum", dtype=torch.float64, m=1.0, l=1.0, b=0.0, u_max=3.0, dt=problem.dt)
    torch.testing.assert_close(plant.step(x, u), reference.step(x, u), rtol=0, atol=0)
    with pytest.raises(ConfigError, match=r"'pendulum' does not take one value of \['I', 'm'\].*param-scale 1 1"):
        perturbed_plant(problem, sample_parameter_scales(names, 4, 0.8, 1.2, rng))


def test_noise_is_reproducible_from_the_generator():
    exp = tiny_experiment()
    problem = exp.problem
    x0 = torch.tensor([[0.5, 0.0], [-0.5, 0.1]], dtype=torch.float64)
    xt = torch.zeros(2, 2, dtype=torch.float64)
    policy = model_policy(tiny_model(exp))

    def run(seed):
        return closed_loop(policy, perturbed_plant(problem), x0, xt, 8, process_noise=0.05,
                           measurement_noise=[0.01, 0.02], generator=torch.Generator().manual_seed(seed))[0]

    torch.testing.assert_close(run(1), run(1), rtol=0, atol=0)
    assert not torch.equal(run(1), run(2))


# ---------------------------------------------------------------------------- aggregation rounds
def test_a_tiny_aggregation_round(tmp_path):
    exp = tiny_experiment()
    model = tiny_model(exp)
    before = weights(model)
    result = run_dagger(exp, model, DaggerConfig(rounds=1, **FAST), tmp_path / "run")
    out = tmp_path / "run"
    for name in ("dagger.json", "heldout.npz", "model.pt", "round_0/metrics.json", "round_1/labels.h5",
                 "round_1/model.pt", "round_1/metrics.json", "round_1/checkpoint.pt"):
        assert (out / name).is_file(), name
    r1 = result.rounds[1]
    labels = read_dataset(out / "round_1" / "labels.h5")
    counts = r1["labels"]
    assert counts["requested"] == 20 and counts["visited"] == 5 * 12
    assert counts["solved"] + counts["failed"] == counts["requested"]
    assert labels.num_samples == counts["solved"] == sum(r1["dataset_size"].values())
    assert len(labels.failures["status"]) == counts["failed"]
    # the labels are the lqr solver's optima from the visited states
    np.testing.assert_allclose(labels.states[:, 0], labels.initial_states, atol=1e-12)
    for mode in ("nominal", "perturbed"):
        for who in (r1["heldout"], result.lqr, result.rounds[0]["heldout"]):
            assert 0.0 <= who[mode]["success_rate"] <= 1.0
    assert result.lqr["nominal"]["success_rate"] == 1.0  # the target LQR reaches and holds
    # the model was fine-tuned, the given one untouched, and the file loads as a TRC model
    assert any(not torch.equal(before[k], v) for k, v in result.model.state_dict().items())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    loaded = trc.load(out / "model.pt")
    x0 = torch.tensor([[0.3, -0.2]])
    torch.testing.assert_close(loaded(x0, torch.zeros(1, 2)), result.model(x0, torch.zeros(1, 2)))
    summary = json.loads((out / "dagger.json").read_text())
    assert [r["round"] for r in summary["rounds"]] == [0, 1]


def test_the_same_seed_gives_the_same_labels_and_weights(tmp_path):
    exp = tiny_experiment()
    runs = {}
    for name in ("a", "b"):
        res = run_dagger(exp, tiny_model(exp), DaggerConfig(rounds=1, seed=4, **FAST), tmp_path / name)
        runs[name] = (read_dataset(tmp_path / name / "round_1" / "labels.h5"), weights(res.model))
    (la, wa), (lb, wb) = runs["a"], runs["b"]
    np.testing.assert_array_equal(la.initial_states, lb.initial_states)
    np.testing.assert_array_equal(la.controls, lb.controls)
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for name in ("a", "b"):  # held-out states and perturbations too
        with np.load(tmp_path / name / "heldout.npz") as f:
            runs[name] = {k: f[k] for k in f.files if k != "solve_seconds"}
    assert runs["a"].keys() == runs["b"].keys()
    assert all(np.array_equal(runs["a"][k], runs["b"][k], equal_nan=True) for k in runs["a"])


def test_resume_continues_and_matches_an_uninterrupted_run(tmp_path):
    exp = tiny_experiment()
    straight = run_dagger(exp, tiny_model(exp), DaggerConfig(rounds=2, **FAST), tmp_path / "straight")
    out = tmp_path / "resumed"
    run_dagger(exp, tiny_model(exp), DaggerConfig(rounds=1, **FAST), out)
    stamp = (out / "round_1" / "labels.h5").stat().st_mtime_ns
    # an interruption after round 2's labels: its fine-tuning and metrics are missing
    run_dagger(exp, tiny_model(exp), DaggerConfig(rounds=2, **FAST), out)
    (out / "round_2" / "metrics.json").unlink()
    (out / "round_2" / "model.pt").unlink()
    (out / "round_2" / "checkpoint.pt").unlink()
    resumed = run_dagger(exp, tiny_model(exp), DaggerConfig(rounds=2, **FAST), out)
    assert (out / "round_1" / "labels.h5").stat().st_mtime_ns == stamp  # round 1 was not redone
    ws, wr = weights(straight.model), weights(resumed.model)
    assert all(torch.equal(ws[k], wr[k]) for k in ws)
    for mode in ("nominal", "perturbed"):  # the same metrics but the compute time
        a, b = dict(resumed.rounds[2]["heldout"][mode]), dict(straight.rounds[2]["heldout"][mode])
        a.pop("ms_per_step"), b.pop("ms_per_step")
        assert a == b


def test_a_run_folder_with_other_settings_is_refused(tmp_path):
    exp = tiny_experiment()
    run_dagger(exp, tiny_model(exp), DaggerConfig(rounds=1, **FAST), tmp_path / "run")
    before = (tmp_path / "run" / "dagger.json").read_text()
    with pytest.raises(ConfigError, match="other settings"):
        run_dagger(exp, tiny_model(exp), DaggerConfig(rounds=1, **{**FAST, "episodes": 7}), tmp_path / "run")
    with pytest.raises(ConfigError, match="other settings"):
        run_dagger(exp, tiny_model(exp, seed=1), DaggerConfig(rounds=1, **FAST), tmp_path / "run")
    assert (tmp_path / "run" / "dagger.json").read_text() == before


# ---------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("changes, match", [
    ({"rounds": 0}, "dagger.rounds"),
    ({"rounds": True}, "dagger.rounds"),
    ({"episodes": 0}, "dagger.episodes"),
    ({"param_scale": [-0.2, 1.2]}, "positive scale"),
    ({"param_scale": [1.2, 0.8]}, "low <= high"),
    ({"param_scale": [0.8]}, "param_scale"),
    ({"process_noise": -0.1}, "dagger.process_noise"),
    ({"measurement_noise": math.nan}, "dagger.measurement_noise"),
    ({"near_target_fraction": 1.5}, "near_target_fraction"),
    ({"labels_per_round": 0}, "labels_per_round"),
    ({"epochs": 0}, "dagger.epochs"),
    ({"lr": -1e-3}, "dagger.lr"),
    ({"val_fraction": 0.9}, "val_fraction"),
    ({"seed": -1}, "dagger.seed"),
    ({"params": "mu"}, "dagger.params"),
])
def test_bad_settings_raise_config_error(changes, match):
    with pytest.raises(ConfigError, match=match):
        DaggerConfig(**changes)


def test_settings_that_do_not_fit_the_problem_are_refused_before_writing(tmp_path):
    vdp = experiment_from_dict({"problem": {"task": "van_der_pol", "horizon": 5},
                                "generator": {"solver": "nonlinear", "num_samples": 4}})
    model = TinyRecursiveControl.from_problem(vdp.problem, TRCConfig(latent_dim=8, hidden_dim=16, H_cycles=1,
                                                                     L_cycles=1, num_layers=1))
    out = tmp_path / "run"
    with pytest.raises(UnknownNameError, match="'m'.*mu"):
        run_dagger(vdp, model, DaggerConfig(params=["m"]), out)
    with pytest.raises(DimensionError, match="state_dim=2"):
        run_dagger(vdp, model, DaggerConfig(process_noise=[0.1, 0.1, 0.1]), out)
    with pytest.raises(ConfigError, match="at least the horizon"):
        run_dagger(vdp, model, DaggerConfig(steps=4), out)
    exp = tiny_experiment()
    with pytest.raises(CheckpointError, match="built for problem"):
        run_dagger(exp, model, DaggerConfig(), out)
    no_gen = experiment_from_dict({"problem": TINY["problem"]})
    with pytest.raises(ConfigError, match="no 'generator'"):
        run_dagger(no_gen, tiny_model(exp), DaggerConfig(), out)
    assert not out.exists()


def test_command_line(tmp_path, capsys):
    exp = tiny_experiment()
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(TINY))
    trc.save(tiny_model(exp), tmp_path / "m.pt")
    args = ["--config", str(config), "--model", str(tmp_path / "m.pt"), "--rounds", "1", "--out", str(tmp_path / "o"),
            "--seed", "3", "--episodes", "4", "--epochs", "1", "--eval-episodes", "4", "--labels-per-round", "20",
            "--quiet"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "TRC round 1" in printed and "saturated LQR" in printed
    assert isinstance(trc.load(tmp_path / "o" / "model.pt"), TinyRecursiveControl)
    assert main([*args[:7], str(tmp_path / "p"), "--param-scale", "-1", "1", "--quiet"]) == 2
    assert main([*args[:7], str(tmp_path / "p"), "--params", "mass", "--quiet"]) == 2
    assert not (tmp_path / "p").exists()
    with pytest.raises(SystemExit):
        main([*args[:4], "--rounds", "0", "--out", str(tmp_path / "q")])
