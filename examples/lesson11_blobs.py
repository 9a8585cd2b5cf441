"""Lesson 11: "k-means sucks, you must choose k" -- mean shift finds k by itself.

The fast.ai lesson draws 6 random centroids, 250 samples around each, and shows
that k-means needs the number of clusters up front while mean shift does not.
It then makes mean shift fast by *batching*: a per-point Python loop launches
one small operation per point, a minibatch of points against all data is one
big distance matrix, a Gaussian and a matrix product.

This script reproduces both halves:

1. k-means with a wrong k versus ``meanshift_gpu.MeanShift`` with no k, with a
   flat kernel (``bandwidth="auto"``: the bandwidth at which the clustering is
   most stable, chosen from the data) and a Gaussian kernel (the lesson's sigma
   of 2.5), scored by the adjusted Rand index (ARI) against the generating
   centroids;
2. a timing of the lesson's blurring mean shift (5 passes, Gaussian kernel,
   sigma 2.5) written as a per-point loop, as the batched torch loop, and as
   ``MeanShift(kernel="gaussian", algorithm="blurring")``.

Run ``python -m examples.lesson11_blobs`` from the repository root (about
5 seconds on a laptop CPU); the figure goes to ``example_output/lesson11_blobs.png``.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from sklearn.cluster import KMeans
from sklearn.metrics import adjusted_rand_score

from examples._common import format_table, make_parser, pyplot, save_figure, seed_everything, stopwatch
from meanshift_gpu import MeanShift

LESSON_SIGMA = 2.5
LESSON_PASSES = 5


def make_blobs(
    rng: np.random.Generator, n_clusters: int, n_per_cluster: int, min_separation: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The lesson's data: centroids uniform in [-35, 35]^2, samples with variance 5.

    Unlike the lesson, centroids are redrawn until every pair is at least
    ``min_separation`` apart, so that "6 clusters" is an unambiguous answer
    (two centroids drawn 2 units apart are one blob to any method).
    """
    while True:
        centroids = rng.uniform(-35.0, 35.0, size=(n_clusters, 2))
        gaps = np.linalg.norm(centroids[:, None] - centroids[None], axis=2)
        if gaps[np.triu_indices(n_clusters, 1)].min() >= min_separation:
            break
    labels = np.repeat(np.arange(n_clusters), n_per_cluster)
    points = centroids[labels] + rng.normal(scale=math.sqrt(5.0), size=(len(labels), 2))
    return points.astype(np.float32), labels, centroids


def gaussian(distance: torch.Tensor, sigma: float) -> torch.Tensor:
    # The normalising constant cancels in the weighted mean; kept as in the lesson.
    return torch.exp(-0.5 * (distance / sigma) ** 2) / (sigma * math.sqrt(2 * math.pi))


def blur_per_point(data: torch.Tensor, sigma: float, passes: int) -> torch.Tensor:
    """The lesson's first version: one point at a time, a Python loop.

    The lesson updates ``X`` in place; here each pass reads the previous pass's
    points, so that all three implementations compute the same (Jacobi)
    blurring steps and their outputs can be compared.
    """
    X = data.clone()
    for _ in range(passes):
        new = torch.empty_like(X)
        for i, x in enumerate(X):
            weight = gaussian(torch.sqrt(((x - X) ** 2).sum(1)), sigma)
            new[i] = (weight[:, None] * X).sum(0) / weight.sum()
        X = new
    return X


def blur_batched(data: torch.Tensor, sigma: float, passes: int, batch_size: int = 500) -> torch.Tensor:
    """The lesson's GPU version: a minibatch of points against all points at once."""
    X = data.clone()
    n = len(X)
    for _ in range(passes):
        new = torch.empty_like(X)
        for start in range(0, n, batch_size):
            batch = slice(start, min(n, start + batch_size))
            weight = gaussian(torch.cdist(X[batch], X), sigma)
            new[batch] = weight @ X / weight.sum(1, keepdim=True)
        X = new
    return X


def best_of(repeats: int, device: torch.device, fn, *args):
    """Fastest wall time over ``repeats`` calls, and the last result."""
    best, result = math.inf, None
    for _ in range(repeats):
        with stopwatch() as elapsed:
            result = fn(*args)
            if device.type == "cuda":  # kernels run asynchronously: wait for them
                torch.cuda.synchronize(device)
        best = min(best, elapsed[0])
    return best, result


def main(argv: list[str] | None = None) -> dict:
    """Run the example; return its metrics (also printed).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``sys.argv[1:]`` when None); see ``--help``.

    Returns
    -------
    dict
        ``n_clusters_flat``, ``n_clusters_gaussian``, the ARIs of every method,
        the timings in seconds and the figure path.
    """
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--clusters", type=int, default=6, help="number of true centroids")
    parser.add_argument("--per-cluster", type=int, default=250, help="samples per centroid")
    parser.add_argument("--wrong-k", type=int, nargs="+", default=[4, 8], help="k values for k-means")
    parser.add_argument(
        "--flat-bandwidth",
        default="auto",
        help='bandwidth of the flat kernel: a number or a MeanShift rule ("auto", "sklearn", '
        '"scott", ...). "sklearn" (a window over 30%% of the data) merges neighbouring blobs',
    )
    parser.add_argument(
        "--device", default="auto", help='torch device for the timing: "auto" (CUDA if available), "cpu", "cuda"'
    )
    args = parser.parse_args(argv)
    if args.small:
        args.per_cluster = min(args.per_cluster, 100)
    rng = seed_everything(args.seed)
    X, truth, centroids = make_blobs(rng, args.clusters, args.per_cluster, min_separation=12.0)

    scores: dict[str, float] = {}
    kmeans_labels = {}
    for k in args.wrong_k:
        labels = KMeans(n_clusters=k, n_init=10, random_state=args.seed).fit_predict(X)
        kmeans_labels[k] = labels
        scores[f"k-means k={k}"] = adjusted_rand_score(truth, labels)

    try:
        flat_bandwidth: float | str = float(args.flat_bandwidth)
    except ValueError:
        flat_bandwidth = args.flat_bandwidth
    with stopwatch() as flat_time:
        flat = MeanShift(bandwidth=flat_bandwidth, bin_seeding=True).fit(X)
    bandwidth = float(np.mean(flat.bandwidth_))  # the value the rule chose
    with stopwatch() as gauss_time:
        gauss = MeanShift(bandwidth=LESSON_SIGMA, kernel="gaussian", bin_seeding=True).fit(X)
    scores["MeanShift flat"] = adjusted_rand_score(truth, flat.labels_)
    scores["MeanShift gaussian"] = adjusted_rand_score(truth, gauss.labels_)

    # Batching: the same 5 blurring passes three ways (fastest of a few runs).
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    data = torch.from_numpy(X).to(device)
    repeats = 1 if args.small else 3
    blur_batched(data, LESSON_SIGMA, 1)  # warm-up: first-call costs (CUDA context, allocator)
    loop_time, loop_out = best_of(1, device, blur_per_point, data, LESSON_SIGMA, LESSON_PASSES)
    batched_time, batched_out = best_of(repeats, device, blur_batched, data, LESSON_SIGMA, LESSON_PASSES)
    # max_iter counts like scikit-learn's: the first pass is free, so 4 -> 5 passes;
    # tol=0 stops it from finishing early, to time exactly the lesson's work.
    blurring = MeanShift(
        bandwidth=LESSON_SIGMA, kernel="gaussian", algorithm="blurring", max_iter=LESSON_PASSES - 1, tol=0.0
    )
    library_time, _ = best_of(repeats, device, blurring.fit, data)
    scores["MeanShift blurring (5 passes)"] = adjusted_rand_score(truth, blurring.labels_)
    loops_agree = float((loop_out - batched_out).abs().max())

    timings = {
        "per-point loop": loop_time,
        "batched torch loop": batched_time,
        "meanshift_gpu blurring": library_time,
    }
    n = len(X)
    print(f"{n} points around {args.clusters} centroids; flat bandwidth {bandwidth:.2f} "
          f"(bandwidth={args.flat_bandwidth!r}), Gaussian sigma {LESSON_SIGMA}")
    print(format_table(
        [["method", "clusters", "ARI vs truth"]]
        + [[f"k-means k={k}", k, f"{scores[f'k-means k={k}']:.3f}"] for k in args.wrong_k]
        + [["MeanShift flat (no k)", len(flat.cluster_centers_), f"{scores['MeanShift flat']:.3f}"],
           ["MeanShift gaussian (no k)", len(gauss.cluster_centers_), f"{scores['MeanShift gaussian']:.3f}"],
           ["MeanShift blurring, 5 passes", len(blurring.cluster_centers_),
            f"{scores['MeanShift blurring (5 passes)']:.3f}"]]
    ))
    print()
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"{LESSON_PASSES} blurring passes over {n} points, Gaussian sigma {LESSON_SIGMA} ({where}):")
    print(format_table(
        [["implementation", "seconds", "speed-up vs loop"]]
        + [[name, f"{t:.4f}", f"{loop_time / t:.1f}x"] for name, t in timings.items()]
    ))
    print(f"(per-point and batched loops agree to {loops_agree:.2e})")
    print(f"standard fits: flat {flat_time[0]:.3f} s, gaussian {gauss_time[0]:.3f} s")

    figure = None
    if not args.no_figure:
        plt = pyplot()
        fig, axes = plt.subplots(2, 3, figsize=(14, 9))
        panels = [("truth", truth, centroids)]
        panels += [(f"k-means, k={k} (wrong)\nARI {scores[f'k-means k={k}']:.2f}", kmeans_labels[k], None)
                   for k in args.wrong_k[:2]]
        panels += [
            (f"MeanShift flat, no k: {len(flat.cluster_centers_)} clusters\n"
             f"ARI {scores['MeanShift flat']:.2f}", flat.labels_, flat.cluster_centers_),
            (f"MeanShift gaussian, no k: {len(gauss.cluster_centers_)} clusters\n"
             f"ARI {scores['MeanShift gaussian']:.2f}", gauss.labels_, gauss.cluster_centers_),
        ]
        for ax, (title, labels, centers) in zip(axes.flat, panels):
            ax.scatter(X[:, 0], X[:, 1], c=labels, s=4, cmap="tab10")
            if centers is not None:
                ax.scatter(centers[:, 0], centers[:, 1], marker="*", s=250, c="k", edgecolors="w")
            ax.set_title(title)
            ax.set_aspect("equal")
        for ax in list(axes.flat)[len(panels):-1]:
            ax.axis("off")
        ax = axes.flat[-1]
        ax.barh(list(timings), list(timings.values()), color=["tab:red", "tab:orange", "tab:green"])
        ax.set_xscale("log")
        ax.set_xlabel("seconds (log scale)")
        ax.set_title(f"{LESSON_PASSES} blurring passes, {n} points ({device.type})")
        fig.tight_layout()
        figure = str(save_figure(fig, args.out, "lesson11_blobs.png"))
        print(f"figure: {figure}")

    return {
        "n_points": n,
        "n_true_clusters": args.clusters,
        "n_clusters_flat": len(flat.cluster_centers_),
        "n_clusters_gaussian": len(gauss.cluster_centers_),
        "n_clusters_blurring": len(blurring.cluster_centers_),
        "bandwidth_flat": bandwidth,
        "ari": scores,
        "timings": timings,
        "device": str(device),
        "loops_max_difference": loops_agree,
        "figure": figure,
    }


if __name__ == "__main__":
    main()
