"""Generated data sets as torch tensors, one :class:`TrajectorySplit` per split, for training.

>>> data = load_dataset("datasets/double_integrator.h5")          # doctest: +SKIP
>>> data.problem.horizon, len(data.train), len(data.val)          # doctest: +SKIP
(15, 8000, 1000)
>>> for batch in data.train.batches(256, generator=torch.Generator().manual_seed(0)):  # doctest: +SKIP
...     batch["x0"].shape, batch["controls"].shape
((256, 2), (256, 15, 1))

Samples and batches are dicts with the keys of :data:`FIELDS`:

=============  ==============================  ===============================
key            one sample                      a batch
=============  ==============================  ===============================
``x0``         ``(state_dim,)``                ``(batch, state_dim)``
``target``     ``(state_dim,)``                ``(batch, state_dim)``
``states``     ``(horizon + 1, state_dim)``    ``(batch, horizon + 1, state_dim)``
``controls``   ``(horizon, control_dim)``      ``(batch, horizon, control_dim)``
``cost``       ``()``                          ``(batch,)``
=============  ==============================  ===============================

Data sets of shrinking-horizon plans (``steps_to_go`` in the file), and :func:`suffix_split`,
add ``steps_to_go`` (``()``; ``(batch,)``) for models that take the time remaining as an input.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch
from torch.utils.data import Dataset

from dynamics.errors import DimensionError

from .cost import trajectory_cost
from .generators.storage import GeneratedDataset, read_dataset

__all__ = ["FIELDS", "TrajectorySplit", "TrajectoryData", "load_dataset", "suffix_split"]

#: Keys of a sample or batch, and the data set array each comes from.
FIELDS = {
    "x0": "initial_states",
    "target": "target_states",
    "states": "states",
    "controls": "controls",
    "cost": "costs",
}


class TrajectorySplit(Dataset):
    """One split of a data set as tensors (a map-style :class:`torch.utils.data.Dataset`).

    Parameters
    ----------
    name : str
        ``"train"``, ``"val"`` or ``"test"``.
    tensors : dict of str to Tensor
        The keys of :data:`FIELDS`, all with the same first dimension.

    Notes
    -----
    ``split[i]`` returns one sample (works with :class:`torch.utils.data.DataLoader`);
    :meth:`batches` slices whole batches at once, which is much faster for data that fits in
    memory, as these data sets do.
    """

    def __init__(self, name: str, tensors: dict[str, torch.Tensor]):
        self.name = name
        self.tensors = tensors
        sizes = {k: v.shape[0] for k, v in tensors.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"split {name!r}: tensors differ in length: {sizes}")

    def __len__(self) -> int:
        return int(self.tensors["x0"].shape[0])

    def __getitem__(self, index) -> dict[str, torch.Tensor]:
        return {key: value[index] for key, value in self.tensors.items()}

    def __repr__(self) -> str:
        return f"TrajectorySplit({self.name!r}, samples={len(self)})"

    @property
    def x0(self) -> torch.Tensor:
        """Initial states ``(len, state_dim)``."""
        return self.tensors["x0"]

    @property
    def target(self) -> torch.Tensor:
        """Target states ``(len, state_dim)``."""
        return self.tensors["target"]

    @property
    def states(self) -> torch.Tensor:
        """Optimal trajectories ``(len, horizon + 1, state_dim)``."""
        return self.tensors["states"]

    @property
    def controls(self) -> torch.Tensor:
        """Optimal controls ``(len, horizon, control_dim)``."""
        return self.tensors["controls"]

    @property
    def cost(self) -> torch.Tensor:
        """Optimal costs ``(len,)``."""
        return self.tensors["cost"]

    def to(self, *args, **kwargs) -> "TrajectorySplit":
        """A copy with every tensor moved/cast by :meth:`torch.Tensor.to`."""
        return TrajectorySplit(self.name, {k: v.to(*args, **kwargs) for k, v in self.tensors.items()})

    def batches(
        self,
        batch_size: int,
        *,
        shuffle: bool = True,
        generator: torch.Generator | None = None,
        drop_last: bool = False,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """Iterate once over the split in batches (dicts of batch-first tensors).

        Parameters
        ----------
        batch_size : int
        shuffle : bool
            Random order from ``generator`` (seed it for reproducible epochs).
        generator : torch.Generator, optional
            A CPU generator; the permutation is moved to the tensors' device.
        drop_last : bool
            Skip the last batch if it is smaller than ``batch_size``.
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        n = len(self)
        device = self.tensors["x0"].device
        order = torch.randperm(n, generator=generator).to(device) if shuffle else torch.arange(n, device=device)
        stop = n - n % batch_size if drop_last else n
        for i in range(0, stop, batch_size):
            idx = order[i:i + batch_size]
            yield {key: value[idx] for key, value in self.tensors.items()}


@dataclass
class TrajectoryData:
    """A loaded data set: the problem, its metadata and the three splits as tensors.

    Attributes
    ----------
    path : pathlib.Path
    problem : trc.problem.Problem
        Rebuilt from the file's ``problem`` attribute.
    attrs : dict
        Every attribute of the file (solver, seed, dt, N, Q, R, Qf, creation info, ...).
    raw : trc.generators.storage.GeneratedDataset
        The NumPy arrays as read (float64), including solver status and failures.
    splits : dict of str to TrajectorySplit
        ``"train"``, ``"val"``, ``"test"``.
    """

    path: Path
    problem: object
    attrs: dict
    raw: GeneratedDataset
    splits: dict

    @property
    def train(self) -> TrajectorySplit:
        return self.splits["train"]

    @property
    def val(self) -> TrajectorySplit:
        return self.splits["val"]

    @property
    def test(self) -> TrajectorySplit:
        return self.splits["test"]

    @property
    def state_dim(self) -> int:
        return self.problem.state_dim

    @property
    def control_dim(self) -> int:
        return self.problem.control_dim

    @property
    def horizon(self) -> int:
        return self.problem.horizon

    def make_plant(self, dtype: torch.dtype = torch.float32):
        """The plant of the problem (for rollouts of predicted controls)."""
        return self.problem.make_plant(dtype)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items())
        return f"TrajectoryData({str(self.path)!r}, problem={self.problem.name!r}, solver={self.attrs.get('solver')!r}, {sizes})"


def load_dataset(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
) -> TrajectoryData:
    """Load a generated data set for training.

    Parameters
    ----------
    path : str or PathLike
        An HDF5 file written by ``python -m trc.generate``.
    dtype : torch.dtype
        Floating dtype of the tensors (the file stores float64).
    device : str or torch.device, optional
        Where to put the tensors; default CPU.

    Returns
    -------
    TrajectoryData

    Raises
    ------
    DatasetError
        If the file is missing, truncated, corrupt or does not follow the schema
        (see :func:`trc.generators.storage.read_dataset`).
    """
    raw = read_dataset(path)
    splits = {}
    for name, idx in raw.splits.items():
        tensors = {
            key: torch.as_tensor(getattr(raw, array)[idx]).to(device=device, dtype=dtype)
            for key, array in FIELDS.items()
        }
        if raw.steps_to_go is not None:
            tensors["steps_to_go"] = torch.as_tensor(raw.steps_to_go[idx]).to(device=device, dtype=dtype)
        splits[name] = TrajectorySplit(name, tensors)
    return TrajectoryData(path=Path(path), problem=raw.problem, attrs=raw.attrs, raw=raw, splits=splits)


def suffix_split(split: TrajectorySplit, problem) -> TrajectorySplit:
    """Every suffix of every optimal plan, as samples with the steps to go.

    By Bellman's principle of optimality the tail ``u_j .. u_{k-1}`` of a plan optimal for ``k``
    steps is optimal from ``x_j`` for the ``k - j`` steps left (same path constraints and
    terminal condition); this turns ``B`` plans into up to ``B N`` shrinking-horizon samples
    without a solver call (Bellman, *Dynamic Programming*, 1957, Ch. III.3).

    Parameters
    ----------
    split : TrajectorySplit
        Optimal plans: ``states`` ``(B, N + 1, n)``, ``controls`` ``(B, N, m)``, and optionally
        ``steps_to_go`` ``(B,)`` (plans of ``k <= N`` steps padded to ``N``; default ``N``).
    problem : trc.Problem
        Their problem (for the cost of each suffix, :func:`trc.cost.trajectory_cost`).

    Returns
    -------
    TrajectorySplit
        The ``sum_i k_i`` suffixes, plan-major (plan ``i``'s suffixes in order ``j = 0 .. k_i - 1``):
        ``x0 = x_j``; ``controls`` ``u_j .. u_{k-1}``, padded to ``N`` with ``u_{k-1}``;
        ``states`` ``x_j .. x_k``, padded with ``x_k``; ``cost`` the suffix's ``J``;
        ``steps_to_go`` ``k - j`` (the split's float dtype).

    Raises
    ------
    DimensionError
        If the split's horizon is not the problem's.
    """
    X, U = split.states, split.controls
    B, N = U.shape[0], U.shape[1]
    if N != problem.horizon:
        raise DimensionError(f"the split has horizon {N} but the problem {problem.horizon}")
    device = U.device
    k = split.tensors.get("steps_to_go")
    k = torch.full((B,), N, device=device) if k is None else torch.round(k).long().to(device)
    j = torch.arange(N, device=device)
    t = torch.arange(N + 1, device=device)
    start = j[None, :, None] + t[None, None, :]                                   # (1, N, N + 1)
    state_index = torch.minimum(start, k[:, None, None])                          # (B, N, N + 1)
    control_index = torch.minimum(start[..., :N], (k - 1)[:, None, None])         # (B, N, N)
    rows = torch.arange(B, device=device)[:, None, None]
    states, controls = X[rows, state_index], U[rows, control_index]
    # J of the suffix from step j, from the costs of the padded tails: C(j) - C(k) + T(k), where
    # C(i) is the cost of the padded arrays from step i and T(i) the terminal term at x_i alone.
    Xd, Ud, xt = X.double(), U.double(), split.target.double()
    C = torch.stack([trajectory_cost(problem, Xd[:, i:], Ud[:, i:], xt) for i in range(N + 1)], 1)
    T = torch.stack([trajectory_cost(problem, Xd[:, i:i + 1], Ud[:, i:i], xt) for i in range(N + 1)], 1)
    cost = C[:, :N] - (C.gather(1, k[:, None]) - T.gather(1, k[:, None]))
    valid = (j[None] < k[:, None]).reshape(-1)
    tensors = {
        "x0": X[:, :N].reshape(B * N, -1),
        "target": split.target.unsqueeze(1).expand(B, N, -1).reshape(B * N, -1),
        "states": states.reshape(B * N, N + 1, -1),
        "controls": controls.reshape(B * N, N, -1),
        "cost": cost.to(X.dtype).reshape(B * N),
        "steps_to_go": (k[:, None] - j[None]).to(X.dtype).reshape(B * N),
    }
    return TrajectorySplit(split.name, {key: value[valid] for key, value in tensors.items()})
