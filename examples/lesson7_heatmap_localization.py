"""Lesson 7: a fully-convolutional heatmap finds the fish; mean shift counts them.

In the fisheries lesson a convolutional network with no dense layers produces
a heatmap that lights up where the fish are.  Turning a heatmap into a list
of objects needs the number of objects, which is unknown -- the job mean shift
does without being told k: run it over the pixel coordinates, each pixel
weighted by its heat (``sample_weight``), and every mode is one object.

The scenes are generated (no download): noisy, unevenly lit backgrounds with
a few "fish" (bright elongated blobs at random angles) and a few distractors
(equally bright *round* blobs), so the network has to learn shape, not just
brightness.  A small fully-convolutional network is trained to output the
fish mask; on held-out scenes, ``meanshift_gpu.MeanShift`` over the hot pixels
gives the detections, which are matched one to one to the true fish to report
precision and recall.

Run ``python -m examples.lesson7_heatmap_localization`` from the repository
root (under a minute on a CPU); the figure goes to
``example_output/lesson7_heatmap_localization.png``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make ``examples`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from torch import nn

from examples._common import fit_one_cycle, format_table, make_parser, match_points, pyplot, save_figure, seed_everything, stopwatch
from meanshift_gpu import MeanShift

FISH_AXES = (3.0, 1.2)  # Gaussian profile: sigma along / across the body, pixels
DISTRACTOR_SIGMA = 1.8  # round blob of about the same total brightness
MASK_LEVEL = 0.3  # the fish mask is where its profile exceeds this
MIN_SEPARATION = 8.0  # objects are at least this far apart, so "one object" is unambiguous


@dataclass
class Scene:
    image: np.ndarray  # (size, size) float32
    mask: np.ndarray  # (size, size) float32, 1 on fish
    fish: np.ndarray  # (n_fish, 2) centres, (row, column)
    distractors: np.ndarray  # (n_distractors, 2)


def _place(rng: np.random.Generator, count: int, size: int, margin: float) -> np.ndarray:
    """``count`` positions at least MIN_SEPARATION apart (rejection sampling)."""
    while True:
        points = rng.uniform(margin, size - 1 - margin, size=(count, 2))
        if count < 2:
            return points
        gaps = np.linalg.norm(points[:, None] - points[None], axis=2)
        if gaps[np.triu_indices(count, 1)].min() >= MIN_SEPARATION:
            return points


def make_scene(rng: np.random.Generator, size: int, max_fish: int = 4, max_distractors: int = 3) -> Scene:
    """One scene: smooth uneven lighting + pixel noise + fish + round distractors."""
    n_fish = int(rng.integers(0, max_fish + 1))
    n_distractors = int(rng.integers(0, max_distractors + 1))
    centres = _place(rng, n_fish + n_distractors, size, margin=3.0)
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float64)
    lighting = gaussian_filter(rng.normal(size=(size, size)), sigma=4.0)
    image = 0.25 * lighting / (lighting.std() + 1e-9) + rng.normal(0.0, 0.15, size=(size, size))
    mask = np.zeros((size, size))
    for index, (r, c) in enumerate(centres):
        brightness = rng.uniform(0.8, 1.2)
        if index < n_fish:
            angle = rng.uniform(0, np.pi)
            along = (rows - r) * np.cos(angle) + (cols - c) * np.sin(angle)
            across = -(rows - r) * np.sin(angle) + (cols - c) * np.cos(angle)
            profile = np.exp(-0.5 * ((along / FISH_AXES[0]) ** 2 + (across / FISH_AXES[1]) ** 2))
            mask = np.maximum(mask, profile > MASK_LEVEL)
        else:
            profile = np.exp(-0.5 * ((rows - r) ** 2 + (cols - c) ** 2) / DISTRACTOR_SIGMA**2)
        image += brightness * profile
    return Scene(image.astype(np.float32), mask.astype(np.float32), centres[:n_fish], centres[n_fish:])


class HeatmapNet(nn.Module):
    """Fully convolutional: any image size in, a same-size fish logit map out.

    Dilated convolutions widen the receptive field (15 pixels) without pooling,
    so the heatmap keeps full resolution.
    """

    def __init__(self, width: int = 16):
        super().__init__()

        def block(cin: int, cout: int, dilation: int = 1) -> list[nn.Module]:
            return [
                nn.Conv2d(cin, cout, 3, padding=dilation, dilation=dilation, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            ]

        self.body = nn.Sequential(
            *block(1, width),
            *block(width, width),
            *block(width, width, dilation=2),
            *block(width, width, dilation=2),
            nn.Conv2d(width, 1, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.body(images)


def train(model: nn.Module, images: torch.Tensor, masks: torch.Tensor, epochs: int, batch_size: int = 32) -> list[float]:
    """Per-pixel binary cross-entropy, Adam with a one-cycle schedule; returns epoch losses."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    # Fish cover a few percent of the pixels: weight them up so "all background" is not a good answer.
    positive_weight = ((1 - masks.mean()) / masks.mean()).sqrt()
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=positive_weight)
    return fit_one_cycle(model, images, masks, loss_fn, optimizer, epochs=epochs, batch_size=batch_size, max_lr=1e-2)


def detect(heat: np.ndarray, *, threshold: float, bandwidth: float, min_mass: float) -> tuple[np.ndarray, np.ndarray]:
    """Objects in one heatmap: mean shift over hot pixel coordinates, weighted by heat.

    Returns the detected centres (row, column) and their heat mass.  Pixels
    below ``threshold`` are left out (they would only add background modes);
    a mode whose pixels carry less than ``min_mass`` heat is noise, not a fish.
    """
    rows, cols = np.nonzero(heat >= threshold)
    if len(rows) == 0:
        return np.zeros((0, 2)), np.zeros(0)
    coords = np.stack([rows, cols], 1).astype(np.float64)
    weights = heat[rows, cols].astype(np.float64)
    model = MeanShift(bandwidth=bandwidth, kernel="gaussian").fit(coords, sample_weight=weights)
    mass = np.bincount(model.labels_, weights=weights, minlength=len(model.cluster_centers_))
    keep = mass >= min_mass
    return model.cluster_centers_[keep], mass[keep]


def main(argv: list[str] | None = None) -> dict:
    """Run the example; return its metrics (also printed).

    Parameters
    ----------
    argv : list of str, optional
        Command-line arguments (``sys.argv[1:]`` when None); see ``--help``.

    Returns
    -------
    dict
        ``precision``, ``recall``, ``n_true``, ``n_found``, ``n_matched`` and more.
    """
    parser = make_parser(__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=40, help="scene side, pixels")
    parser.add_argument("--train-scenes", type=int, default=600)
    parser.add_argument("--test-scenes", type=int, default=60)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=int, default=16, help="channels of every convolution")
    parser.add_argument("--bandwidth", type=float, default=2.0,
                        help="Gaussian kernel sigma in pixels, about a fish's half-width plus a pixel")
    parser.add_argument("--threshold", type=float, default=0.5, help="heat below this is background")
    parser.add_argument("--min-mass", type=float, default=4.0, help="smallest heat mass that counts as a fish")
    parser.add_argument("--match-distance", type=float, default=3.0,
                        help="a detection this close (pixels) to a true fish centre finds it")
    args = parser.parse_args(argv)
    if args.small:
        args.size = min(args.size, 32)
        args.train_scenes = min(args.train_scenes, 400)
        args.test_scenes = min(args.test_scenes, 25)
    rng = seed_everything(args.seed)

    train_scenes = [make_scene(rng, args.size) for _ in range(args.train_scenes)]
    test_scenes = [make_scene(rng, args.size) for _ in range(args.test_scenes)]
    stack = lambda scenes, field: torch.from_numpy(np.stack([getattr(s, field) for s in scenes]))[:, None]  # noqa: E731
    model = HeatmapNet(args.width)
    with stopwatch() as train_time:
        losses = train(model, stack(train_scenes, "image"), stack(train_scenes, "mask"), args.epochs)
    model.eval()
    with torch.no_grad():
        heatmaps = torch.sigmoid(model(stack(test_scenes, "image")))[:, 0].numpy()

    n_true = n_found = n_matched = 0
    detections = []
    with stopwatch() as detect_time:
        for scene, heat in zip(test_scenes, heatmaps):
            centres, _ = detect(heat, threshold=args.threshold, bandwidth=args.bandwidth, min_mass=args.min_mass)
            matched, _ = match_points(centres, scene.fish, args.match_distance)
            detections.append(centres)
            n_true += len(scene.fish)
            n_found += len(centres)
            n_matched += matched
    precision = n_matched / n_found if n_found else 1.0
    recall = n_matched / n_true if n_true else 1.0
    count_exact = float(np.mean([len(d) == len(s.fish) for d, s in zip(detections, test_scenes)]))
    # Pixel-wise, how well the heatmap alone separates fish from distractors and background.
    masks = np.stack([s.mask for s in test_scenes])
    pixel_iou = float(((heatmaps >= args.threshold) & (masks > 0)).sum() / ((heatmaps >= args.threshold) | (masks > 0)).sum())

    n_distractors = sum(len(s.distractors) for s in test_scenes)
    print(f"trained a fully-convolutional heatmap network on {args.train_scenes} generated {args.size}x{args.size} "
          f"scenes for {args.epochs} epochs in {train_time[0]:.1f} s (final loss {losses[-1]:.3f})")
    print(f"{args.test_scenes} held-out scenes: {n_true} fish and {n_distractors} round distractors; "
          f"heatmap IoU with the fish mask {pixel_iou:.3f}")
    print(format_table([
        ["fish", "detected", "matched", "precision", "recall", "scenes counted exactly"],
        [n_true, n_found, n_matched, f"{precision:.3f}", f"{recall:.3f}", f"{count_exact:.0%}"],
    ]))
    print(f"mean shift (Gaussian, sigma {args.bandwidth} px, heat as sample_weight) on {args.test_scenes} "
          f"heatmaps: {detect_time[0]:.2f} s")

    figure = None
    if not args.no_figure:
        plt = pyplot()
        shown = min(4, len(test_scenes))
        fig, axes = plt.subplots(2, shown, figsize=(3.6 * shown, 7.4), squeeze=False)
        for k in range(shown):
            scene, heat, found = test_scenes[k], heatmaps[k], detections[k]
            top, bottom = axes[0, k], axes[1, k]
            top.imshow(scene.image, cmap="gray")
            top.set_title(f"scene: {len(scene.fish)} fish, {len(scene.distractors)} distractors", fontsize=9)
            bottom.imshow(heat, cmap="inferno", vmin=0, vmax=1)
            bottom.set_title(f"heatmap + mean shift: {len(found)} found", fontsize=9)
            for ax in (top, bottom):
                if len(scene.fish):
                    ax.scatter(scene.fish[:, 1], scene.fish[:, 0], s=160, facecolors="none", edgecolors="lime", label="true fish")
                if len(found):
                    ax.scatter(found[:, 1], found[:, 0], marker="x", s=60, c="cyan", label="detected")
                ax.set_xticks([])
                ax.set_yticks([])
        if axes[0, 0].get_legend_handles_labels()[0]:
            axes[0, 0].legend(loc="lower left", fontsize=7)
        fig.suptitle(f"precision {precision:.2f}, recall {recall:.2f} over {args.test_scenes} held-out scenes")
        fig.tight_layout()
        figure = str(save_figure(fig, args.out, "lesson7_heatmap_localization.png"))
        print(f"figure: {figure}")

    return {
        "n_true": n_true,
        "n_found": n_found,
        "n_matched": n_matched,
        "precision": precision,
        "recall": recall,
        "count_exact": count_exact,
        "pixel_iou": pixel_iou,
        "train_seconds": train_time[0],
        "detect_seconds": detect_time[0],
        "figure": figure,
    }


if __name__ == "__main__":
    main()
