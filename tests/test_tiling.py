"""Tests of ``tiled_mean_shift`` (spatial tiles with halos, modes merged) and ``resolve_device``.

Devices: tests taking ``device`` run on every device of ``DEVICES`` (the CPU,
and CUDA where available; clusterings compared by matched centers and
renamed labels, to the compute dtype's tolerance).  The merge rule, the
empty-tile case and the input errors are checked on the CPU only
(``device="cpu"``, CPU tensors): they do not depend on where the tiles are fitted.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import adjusted_rand_score

from meanshift_gpu import MeanShift, resolve_device, tiled_mean_shift
from meanshift_gpu._tiling import _merge_across_tiles


def _blobs_in_space_intensity_and_shape(seed=0):
    """5-D points like the nodule example's voxels: x, y, z (mm), HU, shape index."""
    rng = np.random.default_rng(seed)
    places = np.array([[0, 0, 0], [30, 5, 0], [60, 60, 10], [62, 60, 10], [24, 24, 24]], float)
    shapes = (0.95, 0.95, 0.95, 0.75, 0.9)
    parts = [
        np.column_stack([rng.normal(p, 1.2, (150, 3)), rng.normal(-200, 30, 150), rng.normal(s, 0.02, 150)])
        for p, s in zip(places, shapes)
    ]
    return np.vstack(parts).astype(np.float32)


BANDWIDTH = np.array([4.0, 4.0, 4.0, 150.0, 0.15])


def test_tiled_fit_matches_one_fit(device, assert_same_clustering, tolerance):
    # Checks the CPU, and CUDA where available.  10 mm tiles cut through the
    # blobs: 12 tile modes merge into the single fit's 5 clusters.
    X = _blobs_in_space_intensity_and_shape()
    one = MeanShift(bandwidth=BANDWIDTH, bin_seeding=True, device=device).fit(X)
    centers, labels = tiled_mean_shift(
        X, bandwidth=BANDWIDTH, tile_size=10.0, halo=12.0, tile_features=(0, 1, 2), device=device
    )
    assert len(one.cluster_centers_) == 5
    assert centers.dtype == np.float32 and labels.dtype == np.int64
    assert_same_clustering(
        one.cluster_centers_ / BANDWIDTH, one.labels_, centers / BANDWIDTH, labels, **tolerance(np.float32, 100.0)
    )


def test_modes_that_several_tiles_find_merge_into_one_cluster():
    # CPU.  One blob centred on a tile corner: all eight tiles around it find its mode.
    rng = np.random.default_rng(3)
    X = np.vstack([rng.normal(0.0, 0.4, (400, 3)), [[-10.0, -10.0, -10.0]]])
    centers, labels = tiled_mean_shift(X, bandwidth=1.5, tile_size=10.0, halo=4.5, device="cpu")
    blob = labels[:400]
    assert len(set(blob.tolist())) == 1
    assert np.linalg.norm(centers[blob[0]]) < 0.1
    assert labels[400] != blob[0] and len(centers) == 2
    single = MeanShift(bandwidth=1.5, bin_seeding=True, device="cpu").fit(X)
    assert adjusted_rand_score(single.labels_, labels) == 1.0


def test_merge_takes_bigger_modes_first_and_ties_in_tile_order():
    # CPU (no fit).  Scaled coordinates: bandwidth 1.
    chain = np.array([[0.0], [1.0], [2.0]])
    # Equal sizes: the first found absorbs its neighbour at distance exactly 1 (the
    # edge counts), so the third stays; coordinates do not break the tie.
    assert _merge_across_tiles(chain, np.array([2, 2, 2])).tolist() == [0, 0, 2]
    # The middle mode holds more points: it absorbs both.
    assert _merge_across_tiles(chain, np.array([1, 5, 1])).tolist() == [1, 1, 1]
    # Bit-identical modes from two tiles: the bigger one owns the other.
    twins = np.array([[3.0], [3.0], [7.0]])
    assert _merge_across_tiles(twins, np.array([1, 4, 1])).tolist() == [1, 1, 2]


def test_merge_in_five_features_includes_the_edge_far_from_the_origin():
    # CPU (no fit).  Above three features distances come from a matmul;
    # far from the origin the edge must still be decided exactly.
    base = np.full(5, 100.0)
    modes = np.array([base, base + [1.0, 0, 0, 0, 0], base + [2.0, 0, 0, 0, 0], base + [0.0, 0, 0, 0, 1.0 + 1e-9]])
    assert _merge_across_tiles(modes, np.array([3, 3, 3, 1])).tolist() == [0, 0, 2, 3]


def test_a_tile_whose_seeds_all_have_empty_windows_is_left_unlabelled():
    # CPU.  The first tile's two points share one bin whose center is more than
    # a bandwidth from both, so its only seed has an empty window.
    lonely = np.array([[0.5, 0.5, 0.5, 0.5, 0.49], [-0.49, 0.5, 0.5, 0.5, 0.5]])
    rng = np.random.default_rng(0)
    blob = rng.normal(50.0, 0.2, (50, 5))
    centers, labels = tiled_mean_shift(np.vstack([lonely, blob]), bandwidth=1.0, tile_size=10.0, device="cpu")
    assert labels[:2].tolist() == [-1, -1]
    assert len(centers) == 1 and (labels[2:] == 0).all()
    empty_centers, empty_labels = tiled_mean_shift(lonely, bandwidth=1.0, tile_size=10.0, device="cpu")
    assert empty_centers.shape == (0, 5) and empty_labels.tolist() == [-1, -1]


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(tile_size=0.0), ValueError, "tile_size must be positive"),
        (dict(tile_size=float("nan")), ValueError, "tile_size must be a finite number"),
        (dict(halo=-1.0), ValueError, "halo must be at least 0"),
        (dict(tile_features=(0, 3)), ValueError, r"tile_features must be distinct column indices of X \(0 to 2\)"),
        (dict(tile_features=(1, 1)), ValueError, "tile_features must be distinct"),
        (dict(min_bin_freq=0), ValueError, "min_bin_freq must be an integer >= 1"),
        (dict(bandwidth=[1.0, 2.0]), ValueError, "bandwidth has 2 entries but X has 3 features"),
        (dict(seeds=[[0.0, 0.0, 0.0]]), TypeError, "tiled_mean_shift sets seeds for every tile itself"),
        (dict(cluster_all=False), TypeError, "sets cluster_all"),
        (dict(kernel="box"), ValueError, "kernel"),
        (dict(colour="red"), TypeError, "colour"),
        (dict(device="nonsense"), ValueError, "unknown device 'nonsense'"),
    ],
)
def test_bad_input_names_the_problem(kwargs, error, message):
    # CPU.
    X = np.random.default_rng(0).normal(size=(20, 3))
    arguments = dict(bandwidth=1.0, tile_size=2.0, device="cpu") | kwargs
    with pytest.raises(error, match=message):
        tiled_mean_shift(X, **arguments)


def test_resolve_device_is_the_estimators_device(device):
    # Checks the CPU, and CUDA where available.
    resolved = resolve_device(device)
    assert isinstance(resolved, torch.device) and resolved.type == device
    model = MeanShift(bandwidth=1.0, device=device).fit(np.array([[0.0], [0.5], [5.0]]))
    assert model.fit_info_["device"].split(":")[0] == resolved.type
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")


def test_resolve_device_rejects_unknown_devices():
    # CPU (nothing is computed).
    with pytest.raises(ValueError, match="unknown device 'gpu0'"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is available"):
            resolve_device("cuda")
