"""Command line: evaluate a trained TRC model on a data set and write a report.

Usage::

    python -m trc.evaluate --checkpoint runs/NAME/model.pt [--data PATH] [--out DIR]
                           [--split test] [--latency-repeats R] [--threads T] [--seed S]

Without ``--data`` the data set the model was trained on (recorded in ``model.pt``) is used.
The report (``report.json``, ``report.md``, ``figures/``) goes to ``--out`` (default
``<checkpoint folder>/evaluation``) and its summary to stdout. A model made for another plant
or other dimensions than the data set is refused with
:class:`~dynamics.errors.CheckpointError`.

Exit status: 0 success, 1 unreadable or mismatched checkpoint or data set, 2 bad usage.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "evaluate_checkpoint", "check_compatible"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m trc.evaluate``."""
    p = argparse.ArgumentParser(
        prog="python -m trc.evaluate",
        description="Evaluate a trained TRC model against the optimal solutions of a data set.",
        epilog="Example: python -m trc.evaluate --checkpoint runs/double_integrator/model.pt",
    )
    p.add_argument("--checkpoint", required=True, metavar="PATH", help="model file written by trc.train (model.pt)")
    p.add_argument("--data", metavar="PATH", help="HDF5 data set (default: the one the model was trained on)")
    p.add_argument("--out", metavar="DIR", help="report folder (default: <checkpoint folder>/evaluation)")
    p.add_argument("--split", choices=("train", "val", "test"),
                   help="split to evaluate (default: evaluation.split, test)")
    p.add_argument("--latency-repeats", type=int, metavar="R", help="timed batch-1 passes (default 200)")
    p.add_argument("--threads", type=int, metavar="T", help="torch intra-op threads (default: PyTorch's choice)")
    p.add_argument("--seed", type=int, default=0, metavar="S",
                   help="seed of torch's generator (evaluation is deterministic)")
    return p


def check_compatible(model_problem, data_problem, checkpoint: str, data: str) -> None:
    """Refuse a model whose plant, dimensions, horizon, ``dt`` or cost differ from the data set's.

    Raises
    ------
    CheckpointError
        Naming every mismatching property with both values.
    """
    from dynamics.errors import CheckpointError

    props = {
        "plant": lambda p: p.plant.get("name"),
        "state_dim": lambda p: p.state_dim,
        "control_dim": lambda p: p.control_dim,
        "horizon": lambda p: p.horizon,
        "dt": lambda p: float(p.dt),
        "cost": lambda p: p.cost,
    }
    wrong = [(k, f(model_problem), f(data_problem)) for k, f in props.items() if f(model_problem) != f(data_problem)]
    if wrong:
        detail = ", ".join(f"{k}: model {a!r} vs data {b!r}" for k, a, b in wrong)
        raise CheckpointError(f"model {checkpoint!r} does not match data set {data!r}: {detail}")


def evaluate_checkpoint(
    checkpoint: str | os.PathLike,
    *,
    data: str | os.PathLike | None = None,
    out: str | os.PathLike | None = None,
    split: str | None = None,
    latency_repeats: int | None = None,
    verbose: bool = True,
) -> dict:
    """Evaluate a model file and write its report (see the module documentation).

    Returns
    -------
    dict
        The metrics written to ``report.json``.

    Raises
    ------
    CheckpointError
        Unreadable, foreign or mismatched model file.
    DatasetError
        Unreadable data set.
    ConfigError
        No ``--data`` and the model file does not record its data set.
    """
    import json

    from dynamics.errors import ConfigError

    from .data import load_dataset
    from .loading import load
    from .train import evaluate_run
    from .training import EvaluationConfig

    model = load(checkpoint)
    meta = model.metadata or {}
    data_path = data if data is not None else meta.get("dataset")
    if data_path is None:
        raise ConfigError(f"model file {str(checkpoint)!r} does not record its data set; pass --data")
    dataset = load_dataset(data_path)
    check_compatible(model.problem, dataset.problem, str(checkpoint), str(data_path))
    eval_section = ((meta.get("config") or {}).get("evaluation")) or {}
    eval_cfg = EvaluationConfig.from_dict(eval_section)
    if latency_repeats is not None:
        eval_cfg = EvaluationConfig.from_dict({**eval_cfg.to_dict(), "latency_repeats": latency_repeats})
    out_dir = Path(out) if out is not None else Path(checkpoint).resolve().parent / "evaluation"
    history = None
    metrics_file = Path(checkpoint).resolve().parent / "metrics.jsonl"
    if metrics_file.is_file():
        history = [json.loads(line) for line in metrics_file.read_text().splitlines() if line.strip()]
    extra = {"checkpoint": str(checkpoint), "dataset": str(data_path)}
    extra.update({k: v for k, v in (meta.get("training") or {}).items()})
    metrics = evaluate_run(model, dataset.problem, dataset, eval_cfg, out_dir, history=history, extra=extra,
                           split=split)
    if verbose:
        from .report import summary_text

        print(summary_text(metrics))
        print(f"report: {out_dir / 'report.md'}")
    return metrics


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0 success, 1 failure, 2 bad usage)."""
    from . import evaluation_libero  # visuomotor (LIBERO) checkpoints: closed loop in simulation

    if evaluation_libero.is_libero_checkpoint(argv):
        return evaluation_libero.main(argv)
    args = build_parser().parse_args(argv)
    import torch

    from dynamics.errors import ConfigError, TRCError

    torch.manual_seed(args.seed)
    if args.threads is not None:
        if args.threads < 1:
            print(f"error: --threads must be a positive integer, got {args.threads}", file=sys.stderr)
            return 2
        torch.set_num_threads(args.threads)
    try:
        evaluate_checkpoint(args.checkpoint, data=args.data, out=args.out, split=args.split,
                            latency_repeats=args.latency_repeats)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except TRCError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
