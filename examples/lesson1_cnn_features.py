"""Lesson 1 (+ lessons 5 and 7): cluster a small CNN's features without being told k.

Lesson 1 trains an image classifier; lessons 5 and 7 add batch norm, ResNet
blocks and global average pooling.  Here a small network with exactly those
parts is trained on scikit-learn's bundled 8x8 digits images (no download),
and its penultimate features -- the globally pooled activations that the final
linear layer reads -- are clustered on held-out images with
``meanshift_gpu.MeanShift`` with an *automatic* bandwidth, i.e. without being
told that there are 10 digits.  The adjusted Rand index (ARI) against the true
digits is printed next to k-means, which is given the true k = 10.

Run ``python -m examples.lesson1_cnn_features`` from the repository root (well
under a minute on a CPU); the figure goes to
``example_output/lesson1_cnn_features.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.metrics import adjusted_rand_score
from sklearn.model_selection import train_test_split
from torch import nn

from examples._common import fit_one_cycle, format_table, make_parser, pyplot, save_figure, seed_everything, stopwatch
from meanshift_gpu import MeanShift, estimate_bandwidth


def conv_bn(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU: the building block of lessons 5 and 7."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ResBlock(nn.Module):
    """Two conv + batch-norm layers whose output is added to the block's input."""

    def __init__(self, channels: int):
        super().__init__()
        self.body = nn.Sequential(
            conv_bn(channels, channels),
            nn.Conv2d(channels, channels, 3, padding=1, bias=False),
            nn.BatchNorm2d(channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class DigitsNet(nn.Module):
    """conv + BN -> ResNet block -> strided conv -> ResNet block -> global average pool -> linear."""

    def __init__(self, width: int = 16, n_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(1, width),
            ResBlock(width),
            conv_bn(width, 2 * width, stride=2),  # 8x8 -> 4x4
            ResBlock(2 * width),
            nn.AdaptiveAvgPool2d(1),  # global average pooling (lesson 7)
            nn.Flatten(),
        )
        self.classifier = nn.Linear(2 * width, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def train(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, epochs: int, batch_size: int = 64) -> list[float]:
    """Adam with a one-cycle learning-rate schedule (the fast.ai default); returns epoch losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, weight_decay=1e-4)
    return fit_one_cycle(
        model, images, labels, nn.CrossEntropyLoss(), optimizer, epochs=epochs, batch_size=batch_size, max_lr=1e-2
    )


@torch.no_grad()
def penultimate_features(model: DigitsNet, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Pooled features and class predictions, in evaluation mode (running BN statistics)."""
    model.eval()
    features = model.features(images)
    return features.numpy(), model.classifier(features).argmax(1).numpy()


def main(argv: list[str] | None = None) -> dict:
    """Run the example; return its metrics (also printed).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``sys.argv[1:]`` when None); see ``--help``.

    Returns
    -------
    dict
        ``test_accuracy``, ``n_clusters_meanshift``, ``ari_meanshift``,
        ``ari_kmeans``, ``bandwidth``, timings and the figure path.
    """
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=8, help="training epochs")
    parser.add_argument("--width", type=int, default=16, help="channels of the first block")
    parser.add_argument("--pca", type=int, default=8, help="PCA components before clustering (0: none; then use --min-bin-freq 1)")
    parser.add_argument(
        "--quantile",
        type=float,
        default=0.05,
        help="estimate_bandwidth quantile: the smallest share of the images we would still "
        "call a group (a window reaching the 5%% nearest images spans about one such group)",
    )
    parser.add_argument(
        "--min-bin-freq",
        type=int,
        default=5,
        help="bin seeding: only grid cells holding this many images seed a cluster, so a few "
        "stray images do not become clusters of their own (they still get the nearest label)",
    )
    args = parser.parse_args(argv)
    if args.small:
        args.epochs = min(args.epochs, 4)
        args.width = min(args.width, 8)
    seed_everything(args.seed)

    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    train_x, test_x, train_y, test_y = train_test_split(
        images, digits.target, test_size=0.4, stratify=digits.target, random_state=args.seed
    )
    mean, std = train_x.mean(), train_x.std()
    as_batch = lambda x: torch.from_numpy((x - mean) / std)[:, None]  # noqa: E731 (N, 1, 8, 8)

    model = DigitsNet(args.width)
    with stopwatch() as train_time:
        losses = train(model, as_batch(train_x), torch.from_numpy(train_y), args.epochs)
    features, predicted = penultimate_features(model, as_batch(test_x))
    accuracy = float((predicted == test_y).mean())

    # Standardise, then keep the leading principal components: the pooled ReLU
    # features are partly redundant, and in 32 dimensions every grid cell of the
    # bin seeding would hold a single image, leaving no dense cell to seed from.
    standardised = (features - features.mean(0)) / (features.std(0) + 1e-6)
    embedded = PCA(n_components=args.pca, random_state=args.seed).fit_transform(standardised) if args.pca else standardised
    bandwidth = float(estimate_bandwidth(embedded, quantile=args.quantile))
    with stopwatch() as cluster_time:
        meanshift = MeanShift(bandwidth=bandwidth, bin_seeding=True, min_bin_freq=args.min_bin_freq).fit(embedded)
    kmeans = KMeans(n_clusters=10, n_init=10, random_state=args.seed).fit(embedded)
    ari_meanshift = adjusted_rand_score(test_y, meanshift.labels_)
    ari_kmeans = adjusted_rand_score(test_y, kmeans.labels_)
    sizes = np.sort(meanshift.cluster_sizes_)[::-1]

    print(f"trained on {len(train_x)} digits for {args.epochs} epochs in {train_time[0]:.1f} s "
          f"(final loss {losses[-1]:.3f}); held-out accuracy {accuracy:.3f}")
    print(f"clustering {len(test_x)} held-out images: {features.shape[1]} pooled features"
          + (f" -> {args.pca} principal components" if args.pca else "")
          + f"; bandwidth {bandwidth:.3f} (estimate_bandwidth, quantile {args.quantile}), "
          f"bin seeding with min_bin_freq={args.min_bin_freq}")
    print(format_table([
        ["method", "told k?", "clusters", "ARI vs digits"],
        ["MeanShift (automatic bandwidth)", "no", len(meanshift.cluster_centers_), f"{ari_meanshift:.3f}"],
        ["k-means", "yes (k=10)", 10, f"{ari_kmeans:.3f}"],
    ]))
    print(f"mean-shift cluster sizes: {sizes.tolist()} ({cluster_time[0]:.2f} s)")

    figure = None
    if not args.no_figure:
        plt = pyplot()
        view = PCA(n_components=2, random_state=args.seed).fit_transform(embedded)
        fig, axes = plt.subplots(1, 3, figsize=(16, 5))
        for ax, labels, title in zip(
            axes,
            [test_y, meanshift.labels_, kmeans.labels_],
            ["true digit",
             f"MeanShift, no k: {len(meanshift.cluster_centers_)} clusters, ARI {ari_meanshift:.2f}",
             f"k-means, k=10 given: ARI {ari_kmeans:.2f}"],
        ):
            ax.scatter(view[:, 0], view[:, 1], c=labels, s=6, cmap="tab10" if labels.max() < 10 else "tab20")
            ax.set_title(title)
            ax.set_xlabel("PC 1")
            ax.set_ylabel("PC 2")
        for digit in range(10):
            centre = view[test_y == digit].mean(0)
            axes[0].annotate(str(digit), centre, fontsize=14, weight="bold", ha="center", va="center")
        fig.suptitle("penultimate CNN features of held-out digits (first 2 principal components)")
        fig.tight_layout()
        figure = str(save_figure(fig, args.out, "lesson1_cnn_features.png"))
        print(f"figure: {figure}")

    return {
        "test_accuracy": accuracy,
        "n_clusters_meanshift": len(meanshift.cluster_centers_),
        "cluster_sizes": sizes.tolist(),
        "ari_meanshift": float(ari_meanshift),
        "ari_kmeans": float(ari_kmeans),
        "bandwidth": bandwidth,
        "train_seconds": train_time[0],
        "cluster_seconds": cluster_time[0],
        "figure": figure,
    }


if __name__ == "__main__":
    main()
