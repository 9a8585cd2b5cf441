"""Lesson 5: collaborative-filtering embeddings hide taste groups; mean shift finds them.

Lesson 5 fits a rating as the dot product of a user embedding and an item
embedding plus a user bias and an item bias, squashed into the rating range
with a sigmoid.  Here the ratings are generated (no download) so the truth is
known: every item belongs to one of several hidden taste groups, of unequal
sizes, and a user's rating of an item depends on how much that user likes the
item's group, plus the user's and the item's own biases and noise; only a
fraction of the user x item matrix is observed.  The model never sees the
groups.  Afterwards, ``meanshift_gpu.MeanShift`` clusters the learned item
embeddings *without being told how many groups there are*, and the script
reports how many it found and the adjusted Rand index (ARI) against the truth.

Run ``python -m examples.lesson5_collab_embeddings`` from the repository root
(seconds on a CPU); the figure goes to
``example_output/lesson5_collab_embeddings.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from torch import nn

from examples._common import fit_one_cycle, format_table, make_parser, pyplot, save_figure, seed_everything, stopwatch
from meanshift_gpu import MeanShift

RATING_RANGE = (0.5, 5.0)


def make_ratings(
    rng: np.random.Generator,
    n_users: int,
    n_items: int,
    n_groups: int,
    density: float,
    noise: float = 0.3,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Observed (user, item, rating) triples and each item's hidden group.

    Group sizes are drawn from a Dirichlet so they differ (no method gets to
    assume equal clusters); every group keeps at least 5% of the items.
    """
    while True:
        shares = rng.dirichlet(np.full(n_groups, 2.0))
        if shares.min() >= 0.05:
            break
    group = rng.choice(n_groups, size=n_items, p=shares)
    taste = rng.normal(0.0, 1.0, size=(n_users, n_groups))  # how much each user likes each group
    user_bias = rng.normal(0.0, 0.4, size=n_users)
    item_bias = rng.normal(0.0, 0.4, size=n_items)
    full = 3.0 + user_bias[:, None] + item_bias[None, :] + taste[:, group]
    full = np.clip(full + rng.normal(0.0, noise, size=full.shape), *RATING_RANGE)
    users, items = np.nonzero(rng.random((n_users, n_items)) < density)
    return np.stack([users, items], 1), full[users, items].astype(np.float32), group


class DotProductBias(nn.Module):
    """The lesson's model: ``sigmoid_range(u . v + b_u + b_i)``."""

    def __init__(self, n_users: int, n_items: int, n_factors: int, rating_range=RATING_RANGE):
        super().__init__()
        self.user_factors = nn.Embedding(n_users, n_factors)
        self.item_factors = nn.Embedding(n_items, n_factors)
        self.user_bias = nn.Embedding(n_users, 1)
        self.item_bias = nn.Embedding(n_items, 1)
        for table in (self.user_factors, self.item_factors):
            nn.init.normal_(table.weight, 0.0, 0.01)
        for table in (self.user_bias, self.item_bias):
            nn.init.zeros_(table.weight)
        low, high = rating_range
        # fast.ai stretches the range a little so the extremes are reachable.
        self.low, self.high = low - 0.25, high + 0.25

    def forward(self, pairs: torch.Tensor) -> torch.Tensor:
        users, items = pairs[:, 0], pairs[:, 1]
        score = (self.user_factors(users) * self.item_factors(items)).sum(1)
        score = score + self.user_bias(users)[:, 0] + self.item_bias(items)[:, 0]
        return torch.sigmoid(score) * (self.high - self.low) + self.low


def train(
    model: nn.Module, pairs: torch.Tensor, ratings: torch.Tensor, epochs: int, batch_size: int = 1024,
    weight_decay: float = 0.1,
) -> list[float]:
    """AdamW with a one-cycle schedule and weight decay, as lesson 5 trains it; returns epoch MSEs."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3, weight_decay=weight_decay)
    return fit_one_cycle(
        model, pairs, ratings, nn.functional.mse_loss, optimizer, epochs=epochs, batch_size=batch_size, max_lr=5e-2
    )


def main(argv: list[str] | None = None) -> dict:
    """Run the example; return its metrics (also printed).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``sys.argv[1:]`` when None); see ``--help``.

    Returns
    -------
    dict
        ``n_groups``, ``n_clusters_found``, ``ari``, ``valid_rmse`` and more.
    """
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=800)
    parser.add_argument("--items", type=int, default=500)
    parser.add_argument("--groups", type=int, default=6, help="hidden taste groups of items")
    parser.add_argument("--density", type=float, default=0.1, help="fraction of ratings observed")
    parser.add_argument("--factors", type=int, default=10, help="embedding size")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--bandwidth", default="auto",
        help='MeanShift bandwidth: a number or a rule; "auto" (default) picks the most stable '
        "clustering. scikit-learn's rule (a window over 30%% of the items) can span several groups",
    )
    args = parser.parse_args(argv)
    if args.small:
        # Fewer users means fewer ratings per item: observe more of them so that
        # the embeddings are still learned, not noise.
        args.users, args.items = min(args.users, 400), min(args.items, 250)
        args.density = max(args.density, 0.2)
        args.epochs = min(args.epochs, 12)
    rng = seed_everything(args.seed)
    pairs, ratings, group = make_ratings(rng, args.users, args.items, args.groups, args.density)

    # Hold out 10% of the ratings to show the model learned something real.
    held_out = rng.random(len(pairs)) < 0.1
    pairs_t, ratings_t = torch.from_numpy(pairs), torch.from_numpy(ratings)
    model = DotProductBias(args.users, args.items, args.factors)
    with stopwatch() as train_time:
        losses = train(model, pairs_t[~held_out], ratings_t[~held_out], args.epochs)
    with torch.no_grad():
        valid_rmse = float(((model(pairs_t[held_out]) - ratings_t[held_out]) ** 2).mean().sqrt())
    baseline_rmse = float(np.sqrt(((ratings[held_out] - ratings[~held_out].mean()) ** 2).mean()))

    embeddings = model.item_factors.weight.detach().numpy()
    try:
        bandwidth: float | str = float(args.bandwidth)
    except ValueError:
        bandwidth = args.bandwidth
    with stopwatch() as cluster_time:
        meanshift = MeanShift(bandwidth=bandwidth).fit(embeddings)
    found = len(meanshift.cluster_centers_)
    # For comparison, scikit-learn's default bandwidth (quantile 0.3).
    default = MeanShift().fit(embeddings)
    ari_default = float(adjusted_rand_score(group, default.labels_))
    ari = float(adjusted_rand_score(group, meanshift.labels_))
    true_sizes = np.bincount(group)

    print(f"{len(pairs)} ratings ({args.density:.0%} of {args.users} users x {args.items} items); "
          f"{args.groups} hidden item groups of sizes {sorted(true_sizes.tolist(), reverse=True)}")
    print(f"trained DotProductBias ({args.factors} factors) for {args.epochs} epochs in {train_time[0]:.1f} s: "
          f"held-out RMSE {valid_rmse:.3f} (predicting the mean: {baseline_rmse:.3f})")
    print(format_table([
        ["", "groups", "group sizes"],
        ["hidden truth", args.groups, sorted(true_sizes.tolist(), reverse=True)],
        [f"MeanShift, bandwidth={args.bandwidth!r}", found, meanshift.cluster_sizes_.tolist()],
        ["MeanShift, default bandwidth (quantile 0.3)", len(default.cluster_centers_),
         default.cluster_sizes_.tolist()],
    ]))
    print(f"ARI vs hidden groups: {ari:.3f} (default bandwidth: {ari_default:.3f}); bandwidth {float(np.mean(meanshift.bandwidth_)):.3f} "
          f"(bandwidth={args.bandwidth!r}), "
          f"{cluster_time[0]:.2f} s")

    figure = None
    if not args.no_figure:
        plt = pyplot()
        view = PCA(n_components=2, random_state=args.seed).fit_transform(embeddings)
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
        axes[0].plot(np.arange(1, len(losses) + 1), losses, marker="o")
        axes[0].axhline(valid_rmse**2, ls="--", c="k", label="held-out MSE")
        axes[0].set_xlabel("epoch")
        axes[0].set_ylabel("training MSE")
        axes[0].legend()
        axes[0].set_title("training the dot-product-with-bias model")
        centers = PCA(n_components=2, random_state=args.seed).fit(embeddings).transform(meanshift.cluster_centers_)
        for ax, labels, title in (
            (axes[1], group, f"hidden taste group ({args.groups})"),
            (axes[2], meanshift.labels_, f"MeanShift, no k: {found} clusters, ARI {ari:.2f}"),
        ):
            ax.scatter(view[:, 0], view[:, 1], c=labels, s=8, cmap="tab10")
            ax.set_title(title)
            ax.set_xlabel("PC 1 of item embeddings")
            ax.set_ylabel("PC 2")
        axes[2].scatter(centers[:, 0], centers[:, 1], marker="*", s=250, c="k", edgecolors="w")
        fig.tight_layout()
        figure = str(save_figure(fig, args.out, "lesson5_collab_embeddings.png"))
        print(f"figure: {figure}")

    return {
        "n_groups": args.groups,
        "n_clusters_found": found,
        "ari": ari,
        "n_clusters_default_bandwidth": len(default.cluster_centers_),
        "ari_default_bandwidth": ari_default,
        "valid_rmse": valid_rmse,
        "baseline_rmse": baseline_rmse,
        "bandwidth": float(np.mean(meanshift.bandwidth_)),
        "train_seconds": train_time[0],
        "figure": figure,
    }


if __name__ == "__main__":
    main()
