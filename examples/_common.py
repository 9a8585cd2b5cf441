"""Helpers shared by the example scripts: arguments, seeding, training, figures, scoring.

Kept deliberately small so that each example reads on its own; nothing here is
part of the ``meanshift_gpu`` API.
"""

from __future__ import annotations

import argparse
import random
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch

DEFAULT_OUT = Path("example_output")


def make_parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the flags every example accepts."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument(
        "--out",
        type=Path,
        default=DEFAULT_OUT,
        help=f"folder for the figure (created if missing; default: ./{DEFAULT_OUT}/)",
    )
    parser.add_argument(
        "--small",
        "--quick",
        dest="small",
        action="store_true",
        help="reduced size for a quick smoke test (seconds instead of a minute)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of every random generator")
    parser.add_argument(
        "--no-figure", action="store_true", help="skip drawing and saving the figure"
    )
    return parser


def seed_everything(seed: int) -> np.random.Generator:
    """Seed Python, numpy and torch; return a numpy generator for the example's data."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return np.random.default_rng(seed)


def fit_one_cycle(
    model: torch.nn.Module,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss_fn,
    optimizer: torch.optim.Optimizer,
    *,
    epochs: int,
    batch_size: int,
    max_lr: float,
) -> list[float]:
    """Mini-batch training with a one-cycle learning-rate schedule (the fast.ai default).

    Returns the mean loss of each epoch.
    """
    steps_per_epoch = -(-len(inputs) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=max_lr, epochs=epochs, steps_per_epoch=steps_per_epoch
    )
    losses = []
    model.train()
    for _ in range(epochs):
        order = torch.randperm(len(inputs))
        total = 0.0
        for start in range(0, len(inputs), batch_size):
            batch = order[start : start + batch_size]
            loss = loss_fn(model(inputs[batch]), targets[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total += loss.item() * len(batch)
        losses.append(total / len(inputs))
    return losses


def pyplot():
    """matplotlib's pyplot on the non-interactive Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, out: Path, name: str) -> Path:
    """Save ``fig`` as ``out/name`` and close it; return the path."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    fig.savefig(path, dpi=110, bbox_inches="tight")
    fig.clf()
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


@contextmanager
def stopwatch() -> Iterator[list]:
    """``with stopwatch() as t: ...`` leaves the elapsed seconds in ``t[0]``."""
    elapsed = [0.0]
    start = time.perf_counter()
    try:
        yield elapsed
    finally:
        elapsed[0] = time.perf_counter() - start


def match_points(
    found: np.ndarray, truth: np.ndarray, max_distance: float
) -> tuple[int, np.ndarray]:
    """Match detections to true positions one to one (Hungarian, on distance).

    Returns the number of matched pairs closer than ``max_distance`` and, for
    each true position, whether it was found.
    """
    from scipy.optimize import linear_sum_assignment

    found_truth = np.zeros(len(truth), dtype=bool)
    if len(found) == 0 or len(truth) == 0:
        return 0, found_truth
    distance = np.linalg.norm(found[:, None, :] - truth[None, :, :], axis=2)
    # Pairs that are too far apart must never be chosen over leaving both unmatched.
    cost = np.where(distance <= max_distance, distance, 1e6)
    rows, cols = linear_sum_assignment(cost)
    good = distance[rows, cols] <= max_distance
    found_truth[cols[good]] = True
    return int(good.sum()), found_truth


def format_table(rows: Sequence[Sequence[object]]) -> str:
    """Left-aligned plain-text table, first row as the header."""
    text = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in text) for i in range(len(text[0]))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)) for row in text]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)
