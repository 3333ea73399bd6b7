"""The README's preset table gives the parameter counts the presets really have."""

import re
from pathlib import Path

import pytest

from trc.models import presets

README = Path(__file__).resolve().parents[1] / "README.md"
ROW = re.compile(r"^\| `(\w+)` \| (\w+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| (\d+) \| ([\d,]+) \|$")


def _readme_rows() -> dict[str, tuple]:
    rows = {}
    for line in README.read_text().splitlines():
        match = ROW.match(line.strip())
        if match:
            rows[match.group(1)] = match.groups()[1:]
    return rows


def test_readme_lists_every_preset():
    assert set(_readme_rows()) == set(presets.preset_names())


@pytest.mark.parametrize("name", presets.preset_names())
def test_readme_parameter_count_is_measured(name):
    mode, latent, hidden, layers, H, L, count = _readme_rows()[name]
    model = getattr(presets, f"create_{name}")(state_dim=2, control_dim=1, horizon=15)
    assert model.get_parameter_count() == int(count.replace(",", ""))
    cfg = model.config
    assert (cfg.mode, cfg.latent_dim, cfg.hidden_dim, cfg.num_layers, cfg.H_cycles, cfg.L_cycles) == (
        mode, int(latent), int(hidden), int(layers), int(H), int(L)
    )
