"""Export of trained controllers (trc.export): the exported programs give the model's controls.

Every format is loaded back with its own runtime (TorchScript, torch.export, AOTInductor,
onnxruntime) and
compared with the PyTorch model on inputs of another batch size than the trace's.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import dynamics
import trc
from dynamics.errors import ConfigError, DimensionError, TRCError
from dynamics.interval import IntervalRollout
from trc.export import ExportedController, export_controller, load_controller
from trc.export.cli import main
from trc.export.formats import _onnx_translations
from trc.models import TinyRecursiveControl, TRCConfig, TrajectoryErrorEncoder, trajectory_error
from trc.problem import Problem


def problem(plant=None) -> Problem:
    return Problem(
        name="vdp_export", plant=plant or {"name": "van_der_pol", "u_min": -2.0, "u_max": 2.0},
        dt=0.1, horizon=5, Q=[10.0, 5.0], R=[0.1], initial_state={"low": [-2.0, -2.0], "high": [2.0, 2.0]},
        target_state={"low": [0.0, 0.0], "high": [0.0, 0.0]},
    )


def tiny(prob=None, **cfg) -> TinyRecursiveControl:
    torch.manual_seed(0)
    config = TRCConfig(latent_dim=16, hidden_dim=32, num_layers=1, H_cycles=2, L_cycles=1, feedback_channels=8)
    return TinyRecursiveControl.from_problem(prob or problem(), config.replace(**cfg)).eval()


@pytest.fixture(scope="module")
def model():
    return tiny()


@pytest.mark.parametrize(
    "fmt, feedback, suffix",
    [("torchscript", True, ".ts"), ("onnx", True, ".onnx"), ("torchscript", False, ".ts"), ("onnx", False, ".onnx"),
     ("aoti", True, ".aoti.pt2"),  # compiled to C++ by AOTInductor, feedback rollouts included (~30 s)
     pytest.param("torch_export", True, ".pt2", marks=pytest.mark.slow),  # torch.export alone takes ~10 s of CPU
     pytest.param("torch_export", False, ".pt2", marks=pytest.mark.slow)],
)
def test_exported_program_gives_the_models_controls(model, tmp_path, fmt, feedback, suffix):
    path = tmp_path / f"ctrl{suffix}"
    result = export_controller(model, path, feedback=feedback)
    assert result.format == fmt and result.feedback == feedback
    assert path.is_file() and result.size_bytes == path.stat().st_size > 1000
    assert result.max_abs_error <= 1e-4
    ctrl = load_controller(path)
    gen = torch.Generator().manual_seed(5)
    for batch in (1, 7):
        x0 = 4 * torch.rand(batch, 2, generator=gen) - 2
        xt = 4 * torch.rand(batch, 2, generator=gen) - 2
        with torch.no_grad():
            expected = model(x0, xt, plant=None if feedback else False).numpy()
        got = ctrl(x0.numpy(), xt.numpy())
        assert got.shape == (batch, 5, 1)
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    if feedback:  # the feedback really is in the program: without it the controls differ
        with torch.no_grad():
            plant_free = model(x0, xt, plant=False).numpy()
        assert np.abs(plant_free - got).max() > 1e-4
    assert ctrl.state_dim == 2  # stored with (or, ONNX, in) the program, and checked on every call
    with pytest.raises(DimensionError, match="plans for 2 states; got states of width 3"):
        ctrl(np.zeros((1, 3), np.float32), np.zeros((1, 3), np.float32))


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning")
@pytest.mark.parametrize("pool_first", [False, True])
def test_onnx_translations_match_torch(tmp_path, pool_first):
    """The added ONNX translation (rms_norm), the error sequence (its written-out asinh, the
    clipping) and the encoder's uneven pooling on a long horizon, before or after its convolutions."""
    import onnxruntime as ort

    torch.manual_seed(0)
    encoder = TrajectoryErrorEncoder(state_dim=2, horizon=23, latent_dim=8, channels=4, pool_first=pool_first)
    net = torch.nn.Sequential(encoder, torch.nn.RMSNorm(8)).eval()
    scale = torch.tensor([0.5, 2.0])

    class Program(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, states, target):
            return self.net(trajectory_error(states, target, scale))

    states, target = torch.randn(3, 24, 2), torch.randn(3, 2)
    with _onnx_translations(), torch.no_grad():
        torch.onnx.export(Program().eval(), (states, target), str(tmp_path / "enc.onnx"), dynamo=False,
                          opset_version=17, input_names=["states", "target"],
                          dynamic_axes={"states": {0: "batch"}, "target": {0: "batch"}})
    states, target = 3.0 * torch.randn(5, 24, 2), torch.randn(5, 2)
    states[0, 5, 1] = 1e30  # clipped, in the program too
    session = ort.InferenceSession(str(tmp_path / "enc.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"states": states.numpy(), "target": target.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, Program()(states, target).numpy(), rtol=1e-5, atol=1e-5)


def test_interval_rollout_equals_plant_rollout():
    for plant in (dynamics.make("van_der_pol", dt=0.1, substeps=3), dynamics.make("pendulum", dt=0.05, method="euler")):
        plant = plant.double()
        x0 = torch.randn(4, 2, dtype=torch.float64)
        u = torch.randn(4, 6, 1, dtype=torch.float64)
        np.testing.assert_allclose(IntervalRollout(plant).rollout(x0, u).numpy(), plant.rollout(x0, u).numpy(),
                                   rtol=1e-12, atol=1e-12)
        assert IntervalRollout(plant).steps_vector_field
    assert not IntervalRollout(dynamics.make("double_integrator", method="exact"), horizon=3).steps_vector_field
    assert not IntervalRollout(dynamics.make("maze")).steps_vector_field  # a discrete plant


def test_interval_rollout_refuses_adaptive_methods():
    with pytest.raises(ConfigError, match="method 'dopri5' is adaptive"):
        IntervalRollout(dynamics.make("van_der_pol", method="dopri5"))
    assert dynamics.IntervalRollout is IntervalRollout  # a public name of dynamics


@pytest.mark.slow  # torch.export alone takes ~10 s of CPU
def test_torch_export_captures_the_exact_linear_rollouts(tmp_path):
    di = tiny(problem({"name": "double_integrator", "u_min": -4.0, "u_max": 4.0}))
    assert di.plant.method == "exact"
    result = export_controller(di, tmp_path / "di.pt2", feedback=True)
    assert result.feedback and result.max_abs_error <= 1e-5
    x0, xt = torch.tensor([[1.0, -0.5]]), torch.tensor([[0.0, 0.0]])
    with torch.no_grad():
        np.testing.assert_allclose(load_controller(tmp_path / "di.pt2")(x0.numpy(), xt.numpy()), di(x0, xt).numpy(),
                                   rtol=1e-5, atol=1e-5)


def test_export_leaves_the_inference_time_stages_out(tmp_path):
    staged = tiny(state_head=True, tracking=True, correction_steps=2)
    export_controller(staged, tmp_path / "s.onnx", feedback=True)
    x0, xt = torch.tensor([[1.0, -0.5]]), torch.tensor([[0.0, 0.0]])
    plain = TinyRecursiveControl.from_problem(problem(), staged.config.replace(tracking=False, correction_steps=0))
    plain.load_state_dict(staged.state_dict())
    with torch.no_grad():
        expected = plain.eval()(x0, xt).numpy()
        with_stages = staged(x0, xt).numpy()
    got = load_controller(tmp_path / "s.onnx")(x0.numpy(), xt.numpy())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
    assert np.abs(with_stages - got).max() > 1e-6  # the PyTorch model itself does run them


def test_unexportable_models_are_refused(model, tmp_path):
    adams = tiny(problem({"name": "van_der_pol", "u_min": -2.0, "u_max": 2.0, "method": "explicit_adams"}))
    for suffix in (".pt2", ".aoti.pt2"):
        with pytest.raises(ConfigError, match="captures the feedback rollouts of continuous plants"):
            export_controller(adams, tmp_path / f"c{suffix}")
    with pytest.raises(ConfigError, match="suffix"):
        export_controller(model, tmp_path / "c.bin")
    with pytest.raises(ConfigError, match="unknown export format"):
        export_controller(model, tmp_path / "c.bin", format="tflite")
    with pytest.raises(ConfigError, match="adaptive halting"):
        export_controller(tiny(act=True), tmp_path / "c.ts")
    adaptive = tiny(problem({"name": "van_der_pol", "u_min": -2.0, "u_max": 2.0, "method": "dopri5"}))
    with pytest.raises(ConfigError, match="adaptive method"):
        export_controller(adaptive, tmp_path / "c.onnx")
    export_controller(adaptive, tmp_path / "c.onnx", feedback=False)  # the plant-free network is fine
    assert not any((tmp_path / f"c{suffix}").exists() for suffix in (".ts", ".pt2", ".aoti.pt2"))
    with pytest.raises(FileNotFoundError):
        load_controller(tmp_path / "missing.onnx")
    ctrl = ExportedController(tmp_path / "c.onnx")
    with pytest.raises(DimensionError):
        ctrl(np.zeros((2, 2)), np.zeros((3, 2)))


def test_fixed_batch_aoti_program_keeps_its_buffers_on_the_stack(tmp_path):
    """``batch=1``: the controls of the model, batch checked on load, and no tensor allocated
    per intermediate buffer (the reason a fixed batch is faster), with every part of the
    ``fast`` preset's encoder (the error sequence pooled first: 17 steps to 16 positions)."""
    import dataclasses
    import zipfile

    model = tiny(dataclasses.replace(problem(), horizon=17), feedback_pool_first=True)
    assert model.error_encoder.positions < model.horizon
    path = tmp_path / "b1.aoti.pt2"
    result = export_controller(model, path, batch=1)
    assert result.batch == 1 and result.max_abs_error <= 1e-4
    ctrl = load_controller(path)
    assert ctrl.batch == 1
    x0, xt = np.array([[1.5, -0.5]], np.float32), np.array([[0.0, 0.0]], np.float32)
    with torch.no_grad():
        expected = model(torch.from_numpy(x0), torch.from_numpy(xt)).numpy()
    first = ctrl(x0, xt)
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)
    ctrl(-x0, xt)  # the runner reuses its output buffer: an earlier result must not change
    np.testing.assert_allclose(first, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(DimensionError, match="compiled for batch 1"):
        ctrl(np.zeros((3, 2)), np.zeros((3, 2)))
    assert ctrl.state_dim == 2  # from the package's metadata: the program itself would take any width
    with pytest.raises(DimensionError, match="plans for 2 states; got states of width 3"):
        ctrl(np.zeros((1, 3)), np.zeros((1, 3)))
    with zipfile.ZipFile(path) as archive:
        wrapper = next(archive.read(n).decode() for n in archive.namelist() if n.endswith(".wrapper.cpp"))
    assert "ArrayRefTensor" in wrapper, "AOTInductor did not stack-allocate the buffers"
    assert "aoti_torch_empty_strided" not in wrapper, "an intermediate buffer is allocated per call"
    # saved under a plain .pt2 name, the package is still recognised as AOTInductor by its content
    plain = tmp_path / "b1.pt2"
    plain.write_bytes(path.read_bytes())
    assert load_controller(plain).format == "aoti" and load_controller(plain).batch == 1
    with pytest.raises(ConfigError, match="AOTInductor option"):
        export_controller(model, tmp_path / "c.onnx", batch=1)
    with pytest.raises(ConfigError, match="positive integer"):
        export_controller(model, tmp_path / "c.aoti.pt2", batch=0)


def test_command_line(model, tmp_path, capsys):
    path = tmp_path / "run" / "model.pt"
    path.parent.mkdir()
    trc.save(model, path)
    status = main(["--checkpoint", str(path), "--format", "onnx", "--no-feedback", "--out", str(tmp_path / "exp"),
                   "--repeats", "2", "--seed", "3"])
    out = capsys.readouterr().out
    assert status == 0 and (tmp_path / "exp" / "run.onnx").is_file()
    assert "pytorch (eager)" in out and "onnx" in out
    assert main(["--checkpoint", str(path), "--format", "onnx", "--no-feedback", "--out", str(tmp_path / "exp"),
                 "--repeats", "2", "--processes", "2"]) == 0
    assert "onnx, 2 processes (1024 plans each)" in capsys.readouterr().out
    with pytest.raises(SystemExit):  # argparse's usage error
        main(["--checkpoint", str(path), "--processes", "0"])
    assert main(["--checkpoint", str(tmp_path / "nope.pt"), "--out", str(tmp_path)]) == 1


def test_command_line_exit_statuses(tmp_path, capsys, monkeypatch):
    """The statuses of trc.cli: 2 for bad usage and for a single format that cannot represent
    the model (adaptive halting), 0 when ``--format all`` skips such formats, 2 for a policy
    that is not a continuous-control model."""
    from trc.export import cli

    path = tmp_path / "act" / "model.pt"
    path.parent.mkdir()
    trc.save(tiny(act=True), path)
    args = ["--checkpoint", str(path), "--out", str(tmp_path / "exp"), "--repeats", "1"]
    for bad in (["--batch", "0"], ["--repeats", "0"], ["--threads", "0"], ["--seed", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            main(args + bad)
        assert exit_info.value.code == 2, bad
    capsys.readouterr()
    assert main(args + ["--format", "onnx"]) == 2
    captured = capsys.readouterr()
    assert "onnx: not exported: the model uses adaptive halting" in captured.err
    assert "pytorch (eager)" in captured.out  # the table is still printed
    assert main(args) == 0  # --format all: every format refused, each with its message
    assert capsys.readouterr().err.count("not exported") == len(cli.FORMATS)
    assert not (tmp_path / "exp").exists()
    monkeypatch.setattr(cli, "load", lambda checkpoint: torch.nn.Linear(2, 2))
    assert main(args) == 2
    assert "holds a Linear policy" in capsys.readouterr().err


def test_python_dash_m_runs_the_command_line():
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-m", "trc.export", "--help"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.startswith("usage: python -m trc.export"), run.stderr[-2000:]
    assert "--processes" in run.stdout and "--checkpoint" in run.stdout


def test_export_modules_form_no_import_cycle():
    """The modules of trc.export import each other without a cycle (parallel imports the
    loader, not the package), and the exported rollouts (dynamics.interval) import nothing
    from trc."""
    import ast
    import graphlib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    graph = {}
    for path in (root / "trc" / "export").glob("*.py"):
        imported = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                if node.level == 1:
                    imported |= {node.module} if node.module else {a.name for a in node.names}
                elif node.level == 0 and (node.module or "").startswith("trc.export"):
                    imported.add(node.module.removeprefix("trc.export").lstrip(".") or "__init__")
            elif isinstance(node, ast.Import):
                imported |= {a.name.removeprefix("trc.export").lstrip(".") or "__init__"
                             for a in node.names if a.name.startswith("trc.export")}
        graph[path.stem] = imported - {path.stem}
    assert {"formats", "inductor", "controller", "parallel", "cli", "__init__", "__main__"} <= set(graph)
    assert "controller" in graph["parallel"] and "__init__" not in graph["parallel"]
    list(graphlib.TopologicalSorter(graph).static_order())  # raises CycleError on a cycle
    for node in ast.walk(ast.parse((root / "dynamics" / "interval.py").read_text())):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
        assert not any(n == "trc" or n.startswith("trc.") for n in names), names


@pytest.mark.slow  # one AOTInductor compilation per plant, ~1 min each
@pytest.mark.parametrize("name", ["pendulum", "cartpole", "rocket"])
def test_aoti_compiles_the_nonlinear_plants(name, tmp_path):
    """Every shipped continuous plant's rollouts compile (TorchInductor cannot lower some forms of f)."""
    import dataclasses

    from trc.config import load_yaml

    raw = load_yaml(f"configs/{name}.yaml")["problem"]
    prob = dataclasses.replace(Problem.from_dict(raw), horizon=4)
    model = tiny(prob)
    result = export_controller(model, tmp_path / f"{name}.aoti.pt2")  # raises if the controls differ
    scale = float(model.u_max.abs().max()) if torch.isfinite(model.u_max).all() else 1e4
    assert result.feedback and result.max_abs_error <= 1e-5 * scale


def test_onnx_session_uses_the_torch_thread_count(model, tmp_path, monkeypatch):
    """onnxruntime's default is every core; a loaded ONNX program uses as many threads as torch."""
    path = tmp_path / "c.onnx"
    export_controller(model, path, feedback=False)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 1)
    options = load_controller(path)._session.get_session_options()
    assert (options.intra_op_num_threads, options.inter_op_num_threads) == (1, 1)


@pytest.mark.slow
def test_large_batch_aoti_program_vectorises_the_vector_field(tmp_path):
    """Batch 32: the cart-pole's sin and cos in the fused rollout loops are vector instructions
    (``at::vec``), not a ``std::sin`` call per element (~60 s)."""
    import zipfile

    cartpole = Problem(name="cp", plant={"name": "cartpole", "u_max": 10.0}, dt=0.05, horizon=5,
                       initial_state={"low": [-0.1, 0.0, 3.0, 0.0], "high": [0.1, 0.0, 3.2, 0.0]},
                       target_state={"low": [0.0] * 4, "high": [0.0] * 4})
    model = tiny(cartpole, H_cycles=1, feedback_channels=4)
    path = tmp_path / "cp.aoti.pt2"
    assert export_controller(model, path, batch=32).max_abs_error <= 1e-4
    with zipfile.ZipFile(path) as archive:
        kernels = "".join(archive.read(n).decode() for n in archive.namelist() if n.endswith(".kernel.cpp"))
    assert kernels.count(".sin()") > 0 and "std::sin" not in kernels


def test_aoti_compile_retries_without_memory_planning(monkeypatch):
    """Inductor's memory planner overflows the stack on long unrolled rollouts: compiled without it."""
    import io

    import torch._inductor
    from torch._inductor.exc import InductorError

    from trc.export import inductor as export_module

    calls = []

    def fake_compile(exported, package_path, inductor_configs):
        calls.append(dict(inductor_configs))
        assert inductor_configs["max_autotune"]
        package_path.write(b"partial" if inductor_configs["memory_planning"] else b"package")
        if inductor_configs["memory_planning"]:
            raise InductorError(RecursionError("maximum recursion depth exceeded"), None)

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fake_compile)
    buffer = io.BytesIO()
    export_module._aoti_compile(object(), buffer)
    assert [c["memory_planning"] for c in calls] == [True, False] and buffer.getvalue() == b"package"
    calls.clear()  # a fixed batch: stack allocation instead of the planner, and the batch in the metadata
    export_module._aoti_compile(object(), io.BytesIO(), batch=4, state_dim=2)
    assert len(calls) == 1 and calls[0]["aot_inductor.allow_stack_allocation"] and not calls[0]["memory_planning"]
    assert calls[0]["aot_inductor.metadata"] == {"trc_batch": "4", "trc_state_dim": "2"}
    calls.clear()  # a latency program with a product that CPP cannot compile: again with ATEN's GEMMs too

    class NoValidChoicesError(RuntimeError):
        pass

    class LoweringException(RuntimeError):
        pass

    def no_cpp_kernel(exported, package_path, inductor_configs):
        calls.append(dict(inductor_configs))
        if inductor_configs["max_autotune_gemm_backends"] == "CPP":
            # as Inductor raises it: the selection error inside the lowering error of one node
            try:
                raise LoweringException("mm") from NoValidChoicesError("no choices")
            except LoweringException as lowering:
                raise InductorError(lowering, None) from lowering
        package_path.write(b"package")

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", no_cpp_kernel)
    buffer = io.BytesIO()
    export_module._aoti_compile(object(), buffer, batch=1)
    assert [c["max_autotune_gemm_backends"] for c in calls] == ["CPP", "CPP,ATEN"] and buffer.getvalue() == b"package"
    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", fake_compile)
    calls.clear()  # a large fixed batch: the options of a free batch size
    buffer = io.BytesIO()
    export_module._aoti_compile(object(), buffer, batch=1024)
    assert [c["memory_planning"] for c in calls] == [True, False] and buffer.getvalue() == b"package"
    assert "aot_inductor.allow_stack_allocation" not in calls[0]
    assert calls[0]["aot_inductor.metadata"] == {"trc_batch": "1024"}
    assert "cpp.enable_tiling_heuristics" not in calls[0]  # lifted or discrete rollouts: Inductor's heuristics
    calls.clear()  # rollouts of a vector field: every loop vectorised at a large batch size, not at batch 1
    export_module._aoti_compile(object(), io.BytesIO(), batch=1024, vector_field=True)
    assert calls[0]["cpp.enable_tiling_heuristics"] is False
    calls.clear()
    export_module._aoti_compile(object(), io.BytesIO(), batch=1, vector_field=True)
    assert "cpp.enable_tiling_heuristics" not in calls[0]

    def other_failure(exported, package_path, inductor_configs):
        raise InductorError(ValueError("lowering failed"), None)

    monkeypatch.setattr(torch._inductor, "aoti_compile_and_package", other_failure)
    with pytest.raises(InductorError, match="lowering failed"):
        export_module._aoti_compile(object(), io.BytesIO())


def test_large_batch_aoti_programs_compute_the_convolutions_as_shifted_sums(model, tmp_path, monkeypatch):
    """The copy compiled for a large or free batch size, with external GEMMs, gets the
    encoder's shifted-sum convolutions; a batch-1 program (CPP GEMMs only) and the caller's
    model keep im2col."""
    from trc.export import formats as export_module
    from trc.models import feedback

    used, shifted_sum = [], feedback._conv_shifted_sum
    monkeypatch.setattr(feedback, "_conv_shifted_sum", lambda *args: used.append(True) or shifted_sum(*args))

    class Compiled(Exception):
        pass

    def stop(*args, **kwargs):
        raise Compiled

    monkeypatch.setattr(export_module, "_aoti_compile", stop)
    for batch, expected in ((1, False), (64, True), (None, True)):
        used.clear()
        with pytest.raises(Compiled):
            export_controller(model, tmp_path / "c.aoti.pt2", batch=batch)
        assert bool(used) == expected, batch
    assert not model.error_encoder.shifted_sum


@pytest.fixture
def shifted_programs(monkeypatch):
    """Exported programs, as the export check loads them, give controls shifted by 1e-3."""
    from trc.export import formats as export_module

    class Shifted(export_module.ExportedController):
        def __call__(self, x0, target):
            return super().__call__(x0, target) + 1e-3

    monkeypatch.setattr(export_module, "ExportedController", Shifted)
    return export_module


def test_export_check_rejects_a_program_with_other_controls(model, tmp_path, shifted_programs):
    """A program whose controls differ from PyTorch's by more than the tolerance and than the
    model's float32 rounding is refused, and no file is written."""
    with pytest.raises(TRCError, match="differs from the PyTorch model by up to 0.001"):
        export_controller(model, tmp_path / "c.ts")
    assert not (tmp_path / "c.ts").exists()


def test_export_check_accepts_differences_within_the_models_float32_rounding(model, tmp_path, shifted_programs,
                                                                            monkeypatch):
    """The same shifted program is accepted when the model's own float32 rounding is larger
    than the shift (as the untrained rocket's is, up to 1.9 N), and its file is written."""
    monkeypatch.setattr(shifted_programs, "_float32_rounding", lambda program, inputs, expected: 2e-3)
    result = export_controller(model, tmp_path / "c.ts")
    assert (tmp_path / "c.ts").exists()
    assert result.max_abs_error == pytest.approx(1e-3, rel=1e-3)


def test_float32_rounding_is_the_distance_to_the_float64_program():
    """``(x + 1e4) - 1e4`` in float32 loses x's low bits; in float64 it is x (numpy reference)."""
    from trc.export.formats import _float32_rounding

    class Cancelling(torch.nn.Module):
        def forward(self, x):
            return (x + 1e4) - 1e4

    x = torch.linspace(-1.0, 1.0, 101).view(-1, 1)
    with torch.no_grad():
        expected = Cancelling()(x).numpy()
    exact = ((x.numpy() + np.float32(1e4)) - np.float32(1e4)).astype(np.float64)  # x is float32
    reference = np.abs(x.numpy().astype(np.float64) - exact).max()
    assert reference > 1e-5  # float32 really rounds here
    assert _float32_rounding(Cancelling(), (x,), expected) == pytest.approx(reference, rel=1e-6)
