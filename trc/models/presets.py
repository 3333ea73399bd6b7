"""Named model sizes: ``small``, ``medium``, ``large``, in single-latent and two-level mode, and
``fast``, the single-latent preset with the fewest operations per plan (for compiled controllers),
and ``fast_tiny``, ``fast`` at half its widths.

Each preset is a partial :class:`~trc.models.TRCConfig`; :func:`create` builds a model from one
with the problem sizes and any overrides. :func:`preset_table` measures the parameter counts
(they depend slightly on the problem sizes through the input and output layers), so documented
numbers are always the measured ones::

    >>> from trc.models.presets import preset_table
    >>> [(row["preset"], row["parameters"]) for row in preset_table(2, 1, 15)]  # doctest: +SKIP
"""

from __future__ import annotations

import inspect

from dynamics.errors import UnknownNameError

from .config import TRCConfig
from .trc import TinyRecursiveControl

__all__ = [
    "PRESETS",
    "preset_names",
    "preset_config",
    "create",
    "create_small",
    "create_medium",
    "create_large",
    "create_two_level_small",
    "create_two_level_medium",
    "create_two_level_large",
    "create_fast",
    "create_fast_tiny",
    "preset_table",
]

_SIZES = {
    "small": dict(latent_dim=64, hidden_dim=256, num_layers=2),
    "medium": dict(latent_dim=128, hidden_dim=512, num_layers=2),
    "large": dict(latent_dim=256, hidden_dim=1024, num_layers=3),
}

#: Preset name -> config fields. Single-latent presets run ``H_cycles`` outer cycles of
#: ``L_cycles`` updates of one latent; two-level presets ``H_cycles`` cycles of ``L_cycles``
#: ``z_L`` updates and one ``z_H`` update (arXiv 2510.04871).
PRESETS: dict[str, dict] = {
    **{name: dict(mode="single_latent", H_cycles=3, L_cycles=4, **size) for name, size in _SIZES.items()},
    **{f"two_level_{name}": dict(mode="two_level", H_cycles=3, L_cycles=4, **size) for name, size in _SIZES.items()},
    # The fewest operations per plan: one block, 2 x 2 applications of it, 2 feedback rollouts
    # (instead of 12 and 3 for ``small``), and the error sequence pooled before the encoder's
    # convolutions, for compiled controllers (AOTInductor at batch 1 and for throughput).
    "fast": dict(mode="single_latent", latent_dim=64, hidden_dim=256, num_layers=1, H_cycles=2, L_cycles=2,
                 feedback_channels=16, feedback_pool_first=True),
    # ``fast`` at half its widths, for problems with long control and state sequences (the
    # rocket's N m = 150 outputs and N n = 350 errors), where the matrix products dominate.
    "fast_tiny": dict(mode="single_latent", latent_dim=32, hidden_dim=128, num_layers=1, H_cycles=2, L_cycles=2,
                      feedback_channels=16, feedback_pool_first=True),
}

# Keyword arguments of the model constructor (everything else in overrides is a config field).
_MODEL_KWARGS = set(inspect.signature(TinyRecursiveControl.__init__).parameters) - {"self", "config"}


def preset_names() -> list[str]:
    """Names of the presets."""
    return list(PRESETS)


def preset_config(name: str, **overrides) -> TRCConfig:
    """The :class:`TRCConfig` of preset ``name`` with ``overrides`` (config fields) applied.

    Raises
    ------
    UnknownNameError
        If ``name`` is not a preset; the message lists them.
    ConfigError
        On unknown or invalid overrides.
    """
    if name not in PRESETS:
        raise UnknownNameError(f"unknown model preset {name!r}; choose one of {preset_names()}")
    return TRCConfig().replace(**{**PRESETS[name], **overrides})


def create(name: str, state_dim: int, control_dim: int, horizon: int, **overrides) -> TinyRecursiveControl:
    """Build preset ``name`` for ``state_dim`` states, ``control_dim`` controls and ``horizon`` steps.

    Parameters
    ----------
    name : str
        One of :func:`preset_names`.
    state_dim, control_dim, horizon : int
        ``n``, ``m``, ``N``.
    **overrides
        Config fields (``H_cycles=4``, ``act=True`` ...) and/or keyword arguments of
        :class:`TinyRecursiveControl` (``u_min``, ``u_max``, ``plant``, ``Q`` ...).

    Raises
    ------
    UnknownNameError, ConfigError
        On an unknown preset or invalid overrides.
    """
    model_kwargs = {k: overrides.pop(k) for k in list(overrides) if k in _MODEL_KWARGS}
    config = preset_config(name, state_dim=state_dim, control_dim=control_dim, horizon=horizon, **overrides)
    return TinyRecursiveControl(config, **model_kwargs)


def create_small(state_dim: int, control_dim: int, horizon: int, **overrides) -> TinyRecursiveControl:
    """Single-latent preset ``small``; see :func:`create` and :func:`preset_table`."""
    return create("small", state_dim, control_dim, horizon, **overrides)


def create_medium(state_dim: int, control_dim: int, horizon: int, **overrides) -> TinyRecursiveControl:
    """Single-latent preset ``medium``; see :func:`create` and :func:`preset_table`."""
    return create("medium", state_dim, control_dim, horizon, **overrides)


def create_large(state_dim: int, control_dim: int, horizon: int, **overrides) -> TinyRecursiveControl:
    """Single-latent preset ``large``; see :func:`create` and :func:`preset_table`."""
    return create("large", state_dim, control_dim, horizon, **overrides)


def create_two_level_small(state_dim: int, control_dim: int, horizon: int, **overrides) -> TinyRecursiveControl:
    """Two-level preset ``two_level_small``; see :func:`create` and :func:`preset_table`."""
    return create("two_level_small", state_dim, control_dim, horizon, **overrides)


def create_two_level_medium(state_dim: int, control_dim: int, horizon: int, **overrides) -> TinyRecursiveControl:
    """Two-level preset ``two_level_medium``; see :func:`create` and :func:`preset_table`."""
    return create("two_level_medium", state_dim, control_dim, horizon, **overrides)


def create_two_level_large(state_dim: int, control_dim: int, horizon: int, **overrides) -> TinyRecursiveControl:
    """Two-level preset ``two_level_large``; see :func:`create` and :func:`preset_table`."""
    return create("two_level_large", state_dim, control_dim, horizon, **overrides)


def create_fast(state_dim: int, control_dim: int, horizon: int, **overrides) -> TinyRecursiveControl:
    """Single-latent preset ``fast`` (fewest operations per plan); see :func:`create`."""
    return create("fast", state_dim, control_dim, horizon, **overrides)


def create_fast_tiny(state_dim: int, control_dim: int, horizon: int, **overrides) -> TinyRecursiveControl:
    """Single-latent preset ``fast_tiny`` (``fast`` at half its widths); see :func:`create`."""
    return create("fast_tiny", state_dim, control_dim, horizon, **overrides)


def preset_table(state_dim: int = 2, control_dim: int = 1, horizon: int = 15) -> list[dict]:
    """Measured size of every preset for the given problem sizes.

    Returns
    -------
    list of dict
        One row per preset with ``preset``, ``mode``, ``latent_dim``, ``hidden_dim``,
        ``num_layers``, ``H_cycles``, ``L_cycles`` and ``parameters`` (trainable parameters of
        the model with trajectory-error feedback, as built by :func:`create`).
    """
    rows = []
    for name in PRESETS:
        model = create(name, state_dim, control_dim, horizon)
        cfg = model.config
        rows.append(
            dict(
                preset=name, mode=cfg.mode, latent_dim=cfg.latent_dim, hidden_dim=cfg.hidden_dim,
                num_layers=cfg.num_layers, H_cycles=cfg.H_cycles, L_cycles=cfg.L_cycles,
                parameters=model.get_parameter_count(),
            )
        )
    return rows
