"""Image segmentation: mean shift in (x, y, L, a, b) on a bundled photo.

Comaniciu and Meer's classic use of mean shift: every pixel is a point in a
joint spatial-colour space, the pixel's position (x, y) in pixels and its
colour in CIE L*a*b* (a space where Euclidean distance roughly follows
perceived colour difference).  The two parts are in different units, so the
kernel gets one bandwidth for the position and another for the colour, given
to ``meanshift_gpu.MeanShift`` as a per-feature-group dict
``{(0, 1): spatial, (2, 3, 4): colour}``.  Every mode is a segment: a
region of similar colour; how many there are is not given.

The photo is scikit-learn's bundled ``china.jpg`` (427 x 640 = 273,280
pixels, no download).  Seeds come from bin seeding, and at this size
``neighbors="auto"`` switches from the dense pass (every seed reads every
pixel) to grid pruning (a seed reads only the pixels in the adjacent grid
cells), which gives the same result as the dense pass for the flat kernel.
``--compare-sklearn`` reruns the same clustering with
:class:`sklearn.cluster.MeanShift` on features divided by their bandwidths and
reports the adjusted Rand index (ARI) between the two labelings (use it with
``--downsample``: scikit-learn is slow at full size).

Run ``python -m examples.image_segmentation`` from the repository root (about
a minute on a laptop CPU); the segmented image and a side-by-side figure go to
``example_output/``.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from examples._common import format_table, make_parser, pyplot, save_figure, seed_everything, stopwatch
from meanshift_gpu import MeanShift

# sRGB (D65) -> CIE XYZ, and the D65 white point: the standard constants.
_RGB_TO_XYZ = np.array(
    [
        [0.4124564, 0.3575761, 0.1804375],
        [0.2126729, 0.7151522, 0.0721750],
        [0.0193339, 0.1191920, 0.9503041],
    ]
)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883])


def rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """Convert sRGB colours in [0, 1] to CIE L*a*b* (D65), any leading shape.

    Examples
    --------
    >>> import numpy as np
    >>> np.abs(rgb_to_lab(np.array([[1.0, 1.0, 1.0], [0.0, 0.0, 0.0]]))).round(3)  # white, black
    array([[100.,   0.,   0.],
           [  0.,   0.,   0.]])
    """
    rgb = np.asarray(rgb, dtype=np.float64)
    linear = np.where(rgb <= 0.04045, rgb / 12.92, ((rgb + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _RGB_TO_XYZ.T / _WHITE_D65
    epsilon, kappa = 216 / 24389, 24389 / 27
    f = np.where(xyz > epsilon, np.cbrt(xyz), (kappa * xyz + 16) / 116)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], -1)


def pixel_features(image: np.ndarray) -> np.ndarray:
    """(x, y, L, a, b) of every pixel of an (h, w, 3) uint8 image, row-major.

    Examples
    --------
    >>> import numpy as np
    >>> pixel_features(np.zeros((2, 3, 3), dtype=np.uint8)).shape
    (6, 5)
    """
    height, width = image.shape[:2]
    rows, cols = np.mgrid[0:height, 0:width]
    lab = rgb_to_lab(image.reshape(-1, 3) / 255.0)
    return np.column_stack([cols.ravel(), rows.ravel(), lab]).astype(np.float32)


def load_photo(name: str, downsample: int) -> np.ndarray:
    """One of scikit-learn's bundled photos, every ``downsample``-th pixel."""
    from sklearn.datasets import load_sample_image

    return load_sample_image(name)[::downsample, ::downsample]


def main(argv: list[str] | None = None) -> dict:
    """Run the example; return its metrics (also printed).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``sys.argv[1:]`` when None); see ``--help``.

    Returns
    -------
    dict
        ``n_pixels``, ``n_segments``, ``neighbors`` (the pruning method used),
        ``psnr_db`` (segmented vs original image), ``seconds``, ``ari_sklearn``
        (None unless ``--compare-sklearn``), the image and figure paths.
    """
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--image", default="china.jpg", choices=["china.jpg", "flower.jpg"],
                        help="which of scikit-learn's bundled photos")
    parser.add_argument("--downsample", type=int, default=1, help="keep every n-th pixel in each direction")
    parser.add_argument("--spatial", type=float, default=16.0, help="spatial bandwidth, pixels of the full-size image")
    parser.add_argument("--colour", type=float, default=8.0, help="colour bandwidth, L*a*b* units")
    parser.add_argument("--min-bin-freq", type=int, default=10,
                        help="bin seeding: a grid cell needs this many pixels to seed a segment")
    parser.add_argument("--neighbors", default="auto", help='MeanShift(neighbors=...): "auto", "dense", "grid"')
    parser.add_argument("--compare-sklearn", action="store_true",
                        help="also run sklearn.cluster.MeanShift and report the ARI between the labelings")
    args = parser.parse_args(argv)
    if args.small:
        args.downsample = max(args.downsample, 4)
    seed_everything(args.seed)

    image = load_photo(args.image, args.downsample)
    height, width = image.shape[:2]
    features = pixel_features(image)
    # Positions shrink with the image; keep the spatial window the same part of the scene.
    spatial = args.spatial / args.downsample
    bandwidth = {(0, 1): spatial, (2, 3, 4): args.colour}
    model = MeanShift(bandwidth=bandwidth, bin_seeding=True, min_bin_freq=args.min_bin_freq,
                      neighbors=args.neighbors)
    with stopwatch() as elapsed:
        model.fit(features)
    n_segments = len(model.cluster_centers_)

    # Paint every pixel with its segment's mean colour (in RGB, from the pixels themselves).
    flat_rgb = image.reshape(-1, 3).astype(np.float64)
    counts = np.bincount(model.labels_, minlength=n_segments)[:, None]
    mean_rgb = np.stack(
        [np.bincount(model.labels_, weights=flat_rgb[:, c], minlength=n_segments) for c in range(3)], 1
    ) / np.maximum(counts, 1)
    segmented = mean_rgb[model.labels_].reshape(image.shape).round().astype(np.uint8)
    mse = float(((segmented.astype(np.float64) - image) ** 2).mean())
    psnr = 10 * np.log10(255.0**2 / mse) if mse > 0 else float("inf")
    largest = np.sort(model.cluster_sizes_)[::-1]
    share_top10 = float(largest[:10].sum() / len(features))

    ari_sklearn = sklearn_seconds = None
    if args.compare_sklearn:
        from sklearn.cluster import MeanShift as SklearnMeanShift
        from sklearn.metrics import adjusted_rand_score

        # A per-feature bandwidth is the same as dividing each feature by it and using 1.
        scale = np.asarray(model.bandwidth_, dtype=np.float64)
        with stopwatch() as sk_elapsed:
            reference = SklearnMeanShift(bandwidth=1.0, bin_seeding=True, min_bin_freq=args.min_bin_freq)
            reference.fit(features.astype(np.float64) / scale)
        ari_sklearn = float(adjusted_rand_score(reference.labels_, model.labels_))
        sklearn_seconds = sk_elapsed[0]

    print(f"{args.image}: {height} x {width} = {len(features)} pixels in (x, y, L, a, b); "
          f"bandwidth {spatial:g} px (position), {args.colour:g} (L*a*b* colour)")
    rows = [["pixels", "segments", "neighbours", "seconds", "PSNR dB", "10 largest segments"],
            [len(features), n_segments, model.neighbors_, f"{elapsed[0]:.2f}", f"{psnr:.1f}",
             f"{share_top10:.0%} of pixels"]]
    print(format_table(rows))
    if ari_sklearn is not None:
        print(f"sklearn.cluster.MeanShift on the same scaled features: ARI {ari_sklearn:.4f} "
              f"between the labelings, {sklearn_seconds:.1f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    stem = Path(args.image).stem
    segmented_path = args.out / f"image_segmentation_{stem}.png"
    from PIL import Image

    Image.fromarray(segmented).save(segmented_path)
    print(f"segmented image: {segmented_path}")

    figure = None
    if not args.no_figure:
        plt = pyplot()
        fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
        axes[0].imshow(image)
        axes[0].set_title(f"{args.image}, {height} x {width}")
        axes[1].imshow(segmented)
        axes[1].set_title(f"mean shift in (x, y, L, a, b): {n_segments} segments")
        # Segment boundaries: where the label changes between neighbouring pixels.
        labels = model.labels_.reshape(height, width)
        edges = np.zeros((height, width), dtype=bool)
        edges[:, 1:] |= labels[:, 1:] != labels[:, :-1]
        edges[1:, :] |= labels[1:, :] != labels[:-1, :]
        outlined = image.copy()
        outlined[edges] = (255, 255, 0)
        axes[2].imshow(outlined)
        axes[2].set_title(f"segment boundaries ({model.neighbors_} neighbours, {elapsed[0]:.1f} s)")
        for ax in axes:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.tight_layout()
        figure = str(save_figure(fig, args.out, f"image_segmentation_{stem}_figure.png"))
        print(f"figure: {figure}")

    return {
        "n_pixels": len(features),
        "n_segments": n_segments,
        "neighbors": model.neighbors_,
        "psnr_db": float(psnr),
        "share_top10": share_top10,
        "seconds": elapsed[0],
        "ari_sklearn": ari_sklearn,
        "sklearn_seconds": sklearn_seconds,
        "segmented_image": str(segmented_path),
        "figure": figure,
    }


if __name__ == "__main__":
    main()
