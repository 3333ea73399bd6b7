"""Every example of the gallery runs in quick mode and writes its figure (so none of them rots).

The examples run in this process (imports are shared, which saves most of the time), in one
temporary folder, in file order: later examples reuse the data sets and models the earlier
ones cached there (``<out>/.cache``), as they do in a full run.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import matplotlib
import pytest
import torch

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPTS = sorted(p for p in EXAMPLES.glob("[0-9]*.py"))


def _load(path: Path):
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    spec = importlib.util.spec_from_file_location(f"example_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def out_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("examples")


def test_gallery_is_complete():
    """At least eight examples, each documented with its figure in examples/README.md."""
    assert len(SCRIPTS) >= 8, [p.name for p in SCRIPTS]
    readme = (EXAMPLES / "README.md").read_text()
    for script in SCRIPTS:
        assert script.name in readme, f"{script.name} is not in examples/README.md"
        assert f"figures/{script.stem}.png" in readme, f"the figure of {script.name} is not in examples/README.md"


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_example_runs_in_quick_mode(script, out_dir):
    matplotlib.use("Agg")
    threads = torch.get_num_threads()
    try:
        _load(script).main(["--quick", "--out", str(out_dir), "--threads", "1"])
    finally:
        torch.set_num_threads(threads)
    figure = out_dir / f"{script.stem}.png"
    assert figure.is_file() and figure.stat().st_size > 10_000, f"{script.name} wrote no figure"
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
