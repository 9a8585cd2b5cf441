"""The ``meanshift-gpu`` console command.

``meanshift-gpu demo``
    Cluster an embedded data set (Gaussian blobs generated from a fixed seed,
    no download) with meanshift_gpu and scikit-learn, print a comparison
    table, and save a plot when matplotlib is installed.
``meanshift-gpu cluster DATA``
    Cluster a ``.npy`` or ``.csv`` file (rows = points) and write the labels
    and centers.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


def _bandwidth_arg(text: str):
    if text in ("sklearn", "knn", "scott", "silverman", "auto", "adaptive"):
        return text
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bandwidth must be a number, comma-separated numbers (one per feature) or a rule "
            f"name (sklearn, knn, scott, silverman, auto, adaptive), got {text!r}"
        ) from None
    return values[0] if len(values) == 1 else np.array(values)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meanshift-gpu",
        description="Fast, scikit-learn compatible mean-shift clustering on GPU and CPU.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p):
        p.add_argument("--bandwidth", type=_bandwidth_arg, default=None,
                       help="number, per-feature list 'h1,h2,...', or rule name (default: sklearn's estimate)")
        p.add_argument("--kernel", choices=["flat", "gaussian", "epanechnikov"], default="flat")
        p.add_argument("--neighbors", choices=["auto", "dense", "grid", "lsh", "faiss"], default="auto")
        p.add_argument("--bin-seeding", action="store_true", help="seed from grid cells (sklearn's bin_seeding)")
        p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
        p.add_argument("--verbose", action="store_true")

    demo = sub.add_parser("demo", help="cluster an embedded data set and compare with scikit-learn")
    demo.add_argument("--n-samples", type=int, default=4000)
    demo.add_argument("--out", type=Path, default=Path("meanshift_demo.png"), help="plot file (PNG)")
    demo.add_argument("--no-sklearn", action="store_true", help="skip the scikit-learn comparison")
    common(demo)

    cluster = sub.add_parser("cluster", help="cluster the rows of a .npy or .csv file")
    cluster.add_argument("data", type=Path, help=".npy (2-D array) or .csv (numeric, optional header)")
    cluster.add_argument("--out", type=Path, default=None,
                         help="labels.npy (writes labels.npy, labels_centers.npy, labels_summary.json) or a "
                              "prefix (writes PREFIX_labels.csv, PREFIX_centers.csv, PREFIX_summary.json); "
                              "default: a prefix next to the input")
    common(cluster)
    return parser


def _load(path: Path) -> np.ndarray:
    if not path.exists():
        raise SystemExit(f"error: {path} does not exist")
    try:
        if path.suffix == ".npy":
            data = np.load(path, allow_pickle=False)
        elif path.suffix in (".csv", ".txt"):
            with path.open() as handle:
                first = handle.readline()
            has_header = any(c.isalpha() for c in first.replace("e", "").replace("E", ""))
            data = np.loadtxt(path, delimiter="," if "," in first else None, skiprows=int(has_header), ndmin=2)
        else:
            raise SystemExit(f"error: {path}: expected a .npy or .csv file, got {path.suffix!r}")
    except (OSError, EOFError, ValueError) as exc:
        # Empty, truncated or malformed files: say which file, not numpy's traceback.
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise SystemExit(f"error: {path}: cannot be read as {path.suffix[1:]} data ({reason})") from exc
    if np.iscomplexobj(data):
        raise SystemExit(f"error: {path}: holds complex numbers; mean shift needs real-valued data "
                         "(pass the real part, or real and imaginary parts as two features)")
    if data.ndim == 1:
        data = data[:, None]
    return np.asarray(data, dtype=np.float64 if data.dtype != np.float32 else np.float32)


def _estimator(args):
    from . import MeanShift

    return MeanShift(
        bandwidth=args.bandwidth, kernel=args.kernel, neighbors=args.neighbors,
        bin_seeding=args.bin_seeding, device=args.device, verbose=args.verbose,
    )


def _demo_data(n_samples: int):
    from sklearn.datasets import make_blobs

    centers = np.array([[-6.0, -4.0], [-1.0, 5.0], [4.0, -3.0], [7.0, 6.0], [0.5, 0.0], [-7.0, 4.5]])
    return make_blobs(n_samples, centers=centers, cluster_std=[1.0, 0.9, 1.1, 0.8, 0.7, 1.0], random_state=0)


def _demo(args) -> int:
    from sklearn.metrics import adjusted_rand_score

    X, truth = _demo_data(args.n_samples)
    if args.bandwidth is None:
        args.bandwidth = 1.6
    rows = []
    est = _estimator(args)
    est.fit(X[:200])  # warm-up: imports, thread pools
    start = time.perf_counter()
    est.fit(X)
    ours = time.perf_counter() - start
    rows.append(("meanshift_gpu", ours, len(est.cluster_centers_), adjusted_rand_score(truth, est.labels_), 1.0))
    if not args.no_sklearn and args.kernel == "flat" and not isinstance(args.bandwidth, str):
        from sklearn.cluster import MeanShift as SkMeanShift

        start = time.perf_counter()
        sk = SkMeanShift(bandwidth=float(np.max(args.bandwidth)), bin_seeding=args.bin_seeding).fit(X)
        theirs = time.perf_counter() - start
        agreement = adjusted_rand_score(sk.labels_, est.labels_)
        rows.append(("scikit-learn", theirs, len(sk.cluster_centers_), adjusted_rand_score(truth, sk.labels_), agreement))
    print(f"meanshift-gpu demo: {len(X)} points, 2-D blobs (6 true clusters), bandwidth={est.bandwidth_}, "
          f"kernel={args.kernel}, neighbors={est.neighbors_}, device={args.device}")
    print(f"{'method':<15} {'time (s)':>9} {'clusters':>9} {'ARI vs truth':>13} {'ARI vs ours':>12}")
    for name, seconds, n_clusters, ari_truth, ari_ours in rows:
        print(f"{name:<15} {seconds:>9.3f} {n_clusters:>9d} {ari_truth:>13.4f} {ari_ours:>12.4f}")
    if len(rows) == 2:
        print(f"speed-up vs scikit-learn: {rows[1][1] / rows[0][1]:.1f}x")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (pip install 'meanshift-gpu[examples]')")
        return 0
    fig, ax = plt.subplots(figsize=(6, 5))
    ax.scatter(X[:, 0], X[:, 1], c=est.labels_, s=4, cmap="tab10")
    ax.scatter(*est.cluster_centers_.T, c="k", marker="x", s=80, label="centers")
    ax.set_title(f"meanshift_gpu: {len(est.cluster_centers_)} clusters in {ours:.2f} s")
    ax.legend(loc="upper left")
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=100)
    plt.close(fig)
    print(f"plot written to {args.out}")
    return 0


def _cluster(args) -> int:
    X = _load(args.data)
    # Checked before the fit, so that a long fit is not lost to a bad --out.
    out = args.out if args.out is not None else args.data.with_suffix("")
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(out.parent, os.W_OK):
            raise PermissionError(f"{out.parent} is not writable")
    except OSError as exc:
        raise SystemExit(f"error: --out {out}: cannot write there ({exc}); choose a writable folder") from exc
    est = _estimator(args)
    start = time.perf_counter()
    est.fit(X)
    seconds = time.perf_counter() - start
    if out.suffix == ".npy":  # --out labels.npy: numpy files
        labels_path = out
        centers_path = out.with_name(f"{out.stem}_centers.npy")
        summary_path = out.with_name(f"{out.stem}_summary.json")
        np.save(labels_path, est.labels_)
        np.save(centers_path, est.cluster_centers_)
    else:  # a prefix: CSV files
        labels_path = Path(f"{out}_labels.csv")
        centers_path = Path(f"{out}_centers.csv")
        summary_path = Path(f"{out}_summary.json")
        np.savetxt(labels_path, est.labels_, fmt="%d", header="label", comments="")
        header = ",".join(f"x{j}" for j in range(X.shape[1]))
        np.savetxt(centers_path, est.cluster_centers_, delimiter=",", header=header, comments="")
    bandwidth = est.bandwidth_
    from ._validation import resolve_device

    device = str(resolve_device(args.device, X))
    summary = {
        "n_samples": int(X.shape[0]), "n_features": int(X.shape[1]),
        "n_clusters": int(len(est.cluster_centers_)),
        "bandwidth": bandwidth.tolist() if isinstance(bandwidth, np.ndarray) else float(bandwidth),
        "kernel": args.kernel, "neighbors": est.neighbors_, "n_iter": int(est.n_iter_),
        "device": device, "cluster_sizes": est.cluster_sizes_.tolist(), "seconds": seconds,
    }
    summary_path.write_text(json.dumps(summary, indent=2))
    shown_bandwidth = np.array2string(np.asarray(bandwidth), precision=4) if np.ndim(bandwidth) else f"{bandwidth:.6g}"
    sizes = est.cluster_sizes_
    shown_sizes = ", ".join(str(int(v)) for v in sizes[:8]) + (", ..." if len(sizes) > 8 else "")
    rows = [
        ("points", f"{X.shape[0]} x {X.shape[1]}"),
        ("clusters", str(summary["n_clusters"])),
        ("sizes (densest first)", shown_sizes),
        ("bandwidth", shown_bandwidth),
        ("kernel / neighbors", f"{args.kernel} / {est.neighbors_}"),
        ("iterations", str(summary["n_iter"])),
        ("device", device),
        ("time", f"{seconds:.3f} s"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")
    print(f"wrote {labels_path}, {centers_path}, {summary_path}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``meanshift-gpu`` command."""
    args = _parser().parse_args(argv)
    try:
        return _demo(args) if args.command == "demo" else _cluster(args)
    except (ValueError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
