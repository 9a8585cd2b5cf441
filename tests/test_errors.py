"""Bad input is rejected with an error that says what is wrong (and how to fix it).

Every test asserts on the exception type *and* on the message (``match=``),
for numpy input and, where the code path differs, for torch tensors.  Tests
take the ``device`` argument: the same errors on the CPU and on CUDA (tensors
are made on that device).
"""

from __future__ import annotations

import re
import sys

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.exceptions import NotFittedError

from meanshift_gpu import MeanShift, estimate_bandwidth, get_bin_seeds, mean_shift


@pytest.fixture(scope="module")
def X():
    return np.random.RandomState(0).uniform(0, 4, size=(30, 2))


def _with_value(X, value):
    bad = X.copy()
    bad[5, 1] = value
    return bad


def _as_tensor(a, device):
    return torch.from_numpy(np.ascontiguousarray(a)).to(device)


# --------------------------------------------------------------------------- X
@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_non_finite_X_is_rejected(X, value, kind, device):
    bad = _with_value(X, value)
    bad = _as_tensor(bad, device) if kind == "tensor" else bad
    pattern = "NaN" if np.isnan(value) else "infinity"
    with pytest.raises(ValueError, match=pattern):
        MeanShift(bandwidth=1.0, device=device).fit(bad)


def test_nan_tensor_message_says_how_to_fix(X, device):
    with pytest.raises(ValueError, match="NaN or infinity; remove or impute"):
        MeanShift(bandwidth=1.0, device=device).fit(_as_tensor(_with_value(X, np.nan), device))


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_non_finite_X_at_predict_is_rejected(X, kind, device):
    model = MeanShift(bandwidth=1.0, device=device).fit(X)
    bad = _with_value(X, np.nan)
    with pytest.raises(ValueError, match="NaN"):
        model.predict(_as_tensor(bad, device) if kind == "tensor" else bad)


@pytest.mark.parametrize(
    "empty, pattern",
    [
        (np.empty((0, 2)), r"0 sample\(s\)"),
        (torch.empty((0, 2), dtype=torch.float64), r"0 sample\(s\)"),
        ([], "X is empty; pass at least one sample"),
        (np.empty((5, 0)), r"0 feature\(s\)"),
        (torch.empty((5, 0)), r"0 feature\(s\)"),
    ],
    ids=["numpy-no-rows", "tensor-no-rows", "empty-list", "numpy-no-columns", "tensor-no-columns"],
)
def test_empty_X_is_rejected(empty, pattern, device):
    with pytest.raises(ValueError, match=pattern):
        MeanShift(bandwidth=1.0, device=device).fit(empty)


def test_one_dimensional_X_says_how_to_reshape(X, device):
    with pytest.raises(ValueError, match=r"(?s)Expected 2D array, got 1D array.*reshape\(-1, 1\)"):
        MeanShift(bandwidth=1.0, device=device).fit(X[:, 0])
    with pytest.raises(ValueError, match=r"got shape \(30,\)\. Reshape with X\.reshape\(-1, 1\)"):
        MeanShift(bandwidth=1.0, device=device).fit(_as_tensor(X[:, 0], device))


def test_three_dimensional_X_is_rejected(X, device):
    cube = X.reshape(5, 6, 2)
    with pytest.raises(ValueError, match="dim 3, while dim <= 2 is required"):
        MeanShift(bandwidth=1.0, device=device).fit(cube)
    with pytest.raises(ValueError, match=r"Expected a 2-D X of shape \(n_samples, n_features\), got shape \(5, 6, 2\)"):
        MeanShift(bandwidth=1.0, device=device).fit(_as_tensor(cube, device))


def test_ragged_list_names_the_row_lengths(device):
    with pytest.raises(ValueError, match=r"ragged list: its rows have different lengths \[1, 2\]"):
        MeanShift(bandwidth=1.0, device=device).fit([[0.0, 1.0], [2.0], [3.0, 4.0]])


def test_complex_X_is_rejected(X, device):
    with pytest.raises(ValueError, match="Complex data not supported"):
        MeanShift(bandwidth=1.0, device=device).fit(X + 1j)
    with pytest.raises(TypeError, match="complex .* needs real-valued data"):
        MeanShift(bandwidth=1.0, device=device).fit(_as_tensor(X + 1j, device))


def test_object_X_of_strings_is_rejected(device):
    strings = np.array([["a", "b"], ["c", "d"]], dtype=object)
    with pytest.raises(ValueError, match="could not convert string to float"):
        MeanShift(bandwidth=1.0, device=device).fit(strings)


def test_sparse_X_asks_for_dense_input(X, device):
    with pytest.raises(TypeError, match="dense data is required"):
        MeanShift(bandwidth=1.0, device=device).fit(sp.csr_matrix(X))
    with pytest.raises(TypeError, match=r"sparse tensor, but dense data is required; use X\.to_dense\(\)"):
        MeanShift(bandwidth=1.0, device=device).fit(_as_tensor(X, device).to_sparse())


# --------------------------------------------------------------------- predict
def test_predict_before_fit(X, device):
    with pytest.raises(NotFittedError, match="not fitted yet. Call 'fit'"):
        MeanShift(bandwidth=1.0, device=device).predict(X)


@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_predict_with_other_feature_count(X, kind, device):
    model = MeanShift(bandwidth=1.0, device=device).fit(X)
    wide = np.ones((4, 3))
    with pytest.raises(ValueError, match="X has 3 features, but MeanShift is expecting 2 features"):
        model.predict(_as_tensor(wide, device) if kind == "tensor" else wide)


# ------------------------------------------------------------------- bandwidth
@pytest.mark.parametrize("bandwidth", [0, 0.0, -1.0, np.nan, np.inf])
def test_non_positive_or_non_finite_bandwidth(X, bandwidth, device):
    with pytest.raises(ValueError, match=r"'bandwidth' parameter of MeanShift must be a float in the range \(0.0, inf\)"):
        MeanShift(bandwidth=bandwidth, device=device).fit(X)


@pytest.mark.parametrize(
    "bandwidth, pattern",
    [
        ([1.0, 2.0, 3.0], "bandwidth has 3 entries but X has 2 features; give one bandwidth per feature"),
        (np.array([1.0]), "bandwidth has 1 entries but X has 2 features"),
        ([1.0, 0.0], "every per-feature bandwidth must be positive and finite"),
        ([1.0, -2.0], "every per-feature bandwidth must be positive and finite"),
        ([1.0, np.nan], "every per-feature bandwidth must be positive and finite"),
        ([[1.0, 2.0]], "1-D array of one bandwidth per feature"),
    ],
)
def test_bad_per_feature_bandwidth(X, bandwidth, pattern, device):
    with pytest.raises(ValueError, match=re.escape(pattern) if "(" in pattern else pattern):
        MeanShift(bandwidth=bandwidth, device=device).fit(X)


def test_per_feature_bandwidth_as_tensor_is_checked_too(X, device):
    with pytest.raises(ValueError, match="bandwidth has 3 entries"):
        MeanShift(bandwidth=torch.ones(3), device=device).fit(X)


@pytest.mark.parametrize("name", ["foo", "", "Scott"])
def test_unknown_bandwidth_string_lists_the_choices(X, name, device):
    with pytest.raises(ValueError, match=r"'bandwidth' parameter .* a str among .*'scott'.*Got '" + name):
        MeanShift(bandwidth=name, device=device).fit(X)


def test_boolean_bandwidth_is_rejected(X, device):
    with pytest.raises(TypeError, match="bandwidth must be a positive float or an array, not a bool"):
        MeanShift(bandwidth=True, device=device).fit(X)


# ---------------------------------------------- kernel, algorithm, device, backend
@pytest.mark.parametrize(
    "params, pattern",
    [
        ({"kernel": "tophat"}, r"'kernel' parameter of MeanShift must be a str among .*'gaussian'.*Got 'tophat'"),
        ({"algorithm": "fast"}, r"'algorithm' parameter of MeanShift must be a str among .*'blurring'.*Got 'fast'"),
        ({"batch_size": 0}, r"'batch_size' parameter .* range \[1, inf\) or a str among \{'auto'\}"),
        ({"batch_size": "big"}, r"'batch_size' parameter .*Got 'big'"),
        ({"tol": -1.0}, r"'tol' parameter of MeanShift must be a float in the range \[0.0, inf\)"),
        ({"max_iter": -1}, r"'max_iter' parameter of MeanShift must be an int in the range \[0, inf\)"),
        ({"min_bin_freq": 0}, r"'min_bin_freq' parameter of MeanShift must be an int in the range \[1, inf\)"),
        ({"device": 3}, r"'device' parameter of MeanShift must be an instance of 'str' or .*torch.device"),
    ],
)
def test_invalid_parameters(X, params, pattern, device):
    with pytest.raises(ValueError, match=pattern):
        MeanShift(**{"bandwidth": 1.0, "device": device, **params}).fit(X)


def test_unknown_backend_lists_the_backends(X, device):
    with pytest.raises(ValueError, match=r"unknown backend 'cuda'; expected 'auto' or one of \['torch'"):
        MeanShift(bandwidth=1.0, backend="cuda", device=device).fit(X)


def test_unavailable_backend_says_why(X, monkeypatch, device):
    # Hide Triton rather than import it: importing it here (in whichever mode)
    # would fix its mode for the rest of the session and break the kernel tests.
    monkeypatch.setitem(sys.modules, "triton", None)
    # The message names the device that was asked for.
    pattern = rf"backend='triton' cannot run on device {device}: Triton is not installed \(pip install"
    with pytest.raises(RuntimeError, match=pattern):
        MeanShift(bandwidth=1.0, backend="triton", device=device).fit(X)


@pytest.mark.parametrize(
    "device, pattern",
    [
        ("foo", "unknown device 'foo'; use 'auto', 'cpu', 'cuda' or 'cuda:N'"),
        ("meta", "unsupported device 'meta'; use 'auto', 'cpu' or 'cuda'"),
    ],
)
def test_unknown_device(X, device, pattern):
    with pytest.raises(ValueError, match=re.escape(pattern)):
        MeanShift(bandwidth=1.0, device=device).fit(X)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("cuda_device", ["cuda", "cuda:1", torch.device("cuda", 0)])
def test_cuda_without_gpu_says_so(X, cuda_device):
    with pytest.raises(ValueError, match="no CUDA GPU is available .*use device='cpu' or 'auto'"):
        MeanShift(bandwidth=1.0, device=cuda_device).fit(X)


def test_missing_cuda_device_index_says_how_many_exist(X, requires_cuda):
    missing = f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(ValueError, match=rf"device='{missing}' was requested but only \d+ CUDA device\(s\) exist"):
        MeanShift(bandwidth=1.0, device=missing).fit(X)


# ---------------------------------------------------------------- sample_weight
@pytest.mark.parametrize(
    "make_weight, pattern",
    [
        (lambda n: -np.ones(n), "Negative values in data passed to sample_weight; weights must be >= 0"),
        (lambda n: np.r_[-0.5, np.ones(n - 1)], "Negative values in data passed to sample_weight"),
        (lambda n: -1.0, "Negative values in data passed to sample_weight"),
        (lambda n: np.ones(n - 1), r"sample_weight.shape == \(29,\), expected \(30,\)"),
        (lambda n: np.ones((n, 1)), r"sample_weight.shape == \(30, 1\), expected \(30,\)"),
        (lambda n: np.r_[np.nan, np.ones(n - 1)], "sample_weight contains NaN or infinity"),
        (lambda n: np.r_[np.inf, np.ones(n - 1)], "sample_weight contains NaN or infinity"),
        (lambda n: np.zeros(n), "sample_weight is all zero; at least one point needs a positive weight"),
        (lambda n: torch.zeros(n), "sample_weight is all zero"),
        (lambda n: torch.ones(n + 1), r"sample_weight.shape == \(31,\), expected \(30,\)"),
        (lambda n: np.array(["a"] * n), "sample_weight must be numeric"),
    ],
    ids=[
        "all-negative", "one-negative", "negative-scalar", "short", "column",
        "nan", "inf", "all-zero", "all-zero-tensor", "long-tensor", "strings",
    ],
)
def test_bad_sample_weight(X, make_weight, pattern, device):
    with pytest.raises(ValueError, match=pattern):
        MeanShift(bandwidth=1.0, device=device).fit(X, sample_weight=make_weight(X.shape[0]))


# ------------------------------------------------------------------------ seeds
@pytest.mark.parametrize("kind", ["numpy", "tensor"])
def test_seeds_with_wrong_width(X, kind, device):
    seeds = np.ones((3, 3))
    seeds = _as_tensor(seeds, device) if kind == "tensor" else seeds
    with pytest.raises(ValueError, match="seeds has 3 features, but X has 2; they must match"):
        MeanShift(bandwidth=1.0, seeds=seeds, device=device).fit(X)


def test_seeds_bad_shape_or_values(X, device):
    with pytest.raises(ValueError, match=r"(?s)Expected 2D array, got 1D array.*reshape"):
        MeanShift(bandwidth=1.0, seeds=np.ones(2), device=device).fit(X)
    with pytest.raises(ValueError, match="Input seeds contains NaN"):
        MeanShift(bandwidth=1.0, seeds=np.full((2, 2), np.nan), device=device).fit(X)
    with pytest.raises(ValueError, match=r"seeds is empty \(shape=\(0, 2\)\); pass at least one sample"):
        MeanShift(bandwidth=1.0, seeds=np.empty((0, 2)), device=device).fit(X)


def test_seeds_far_from_all_points_say_no_point_within_bandwidth(X, device):
    far = np.array([[100.0, 100.0]])
    with pytest.raises(ValueError, match="No point was within bandwidth=0.5 of any seed. Try a different seeding"):
        MeanShift(bandwidth=0.5, seeds=far, device=device).fit(X)


def test_blurring_rejects_seeds(X, device):
    with pytest.raises(ValueError, match="algorithm='blurring' moves the data themselves, so seeds and bin_seeding do not apply"):
        MeanShift(bandwidth=1.0, algorithm="blurring", seeds=X[:2], device=device).fit(X)
    with pytest.raises(ValueError, match="use algorithm='standard' with them"):
        MeanShift(bandwidth=1.0, algorithm="blurring", bin_seeding=True, device=device).fit(X)


# ------------------------------------------------------------ functional API
def test_mean_shift_function_validates_like_the_estimator(X, device):
    with pytest.raises(ValueError, match="'kernel' parameter of MeanShift"):
        mean_shift(X, bandwidth=1.0, kernel="box", device=device)
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        mean_shift(X, bandwidth=1.0, colour="red", device=device)
    with pytest.raises(ValueError, match="NaN"):
        mean_shift(_with_value(X, np.nan), bandwidth=1.0, device=device)


def test_estimate_bandwidth_bad_input(X, device):
    with pytest.raises(ValueError, match=r"quantile must be a number in \[0, 1\], got 2"):
        estimate_bandwidth(X, quantile=2, device=device)
    with pytest.raises(ValueError, match="n_samples must be a positive integer or None, got 0"):
        estimate_bandwidth(X, n_samples=0, device=device)
    with pytest.raises(ValueError, match="Input X contains NaN"):
        estimate_bandwidth(_with_value(X, np.nan), device=device)
    with pytest.raises(ValueError, match=r"X is empty \(shape=\(0, 2\)\)"):
        estimate_bandwidth(np.empty((0, 2)), device=device)


def test_get_bin_seeds_bad_input(X):
    with pytest.raises(ValueError, match="bin_size must be a non-negative finite number, got -1"):
        get_bin_seeds(X, -1)
    with pytest.raises(ValueError, match="bin_size must be a non-negative finite number, got nan"):
        get_bin_seeds(X, float("nan"))
    with pytest.raises(ValueError, match="Input X contains NaN"):
        get_bin_seeds(_with_value(X, np.nan), 1.0)
    with pytest.raises(ValueError, match="X is a ragged list"):
        get_bin_seeds([[0.0, 1.0], [2.0]], 1.0)


# ------------------------------------------------------- options, devices, autograd
@pytest.mark.parametrize(
    "options, pattern",
    [
        ({"truncate": "3"}, r"'truncate'\] must be a finite number > 0, got '3'"),
        ({"truncate": float("inf")}, r"'truncate'\] must be a finite number > 0"),
        ({"bucket_width": True}, r"'bucket_width'\] must be a finite number > 0"),
        ({"seed": "x"}, r"'seed'\] must be an integer, got 'x'"),
        ({"n_tables": 2.5}, r"'n_tables'\] must be an integer >= 1"),
        ({"nprobe": -1}, r"'nprobe'\] must be None \(automatic\) or an integer >= 1, got -1"),
        ({"nlist": 0}, r"'nlist'\] must be None \(automatic\) or an integer >= 1, got 0"),
    ],
)
def test_neighbor_options_of_the_wrong_type_or_range_say_which(X, options, pattern, device):
    with pytest.raises(ValueError, match=pattern):
        MeanShift(bandwidth=1.0, device=device, neighbor_options=options).fit(X)


@pytest.mark.parametrize("name", ["xpu", "mps"])
def test_unavailable_accelerator_types_give_one_clear_line(X, name):
    """Device: the named accelerator type, absent from this torch build (skipped where present)."""
    backend = torch.backends.mps if name == "mps" else getattr(torch, "xpu", None)
    if backend is not None and backend.is_available():
        pytest.skip(f"this machine has a usable {name} device")
    with pytest.raises(ValueError, match=f"no usable {name} device; use device='cpu' or 'auto'"):
        MeanShift(bandwidth=1.0, device=name).fit(X)


def test_tensors_that_require_grad_are_fitted_without_gradients(X, device):
    data = torch.as_tensor(X, device=device).requires_grad_(True)
    model = MeanShift(bandwidth=2.0, device=device, seeds=data[:5]).fit(data)
    expected = MeanShift(bandwidth=2.0, device=device, seeds=X[:5]).fit(X)
    np.testing.assert_array_equal(model.labels_, expected.labels_)
    np.testing.assert_allclose(model.cluster_centers_, expected.cluster_centers_)
    assert estimate_bandwidth(data, device=device) == pytest.approx(estimate_bandwidth(X, device=device))


def test_estimated_bandwidth_that_overflows_is_an_error_not_inf(X, device):
    with pytest.raises(ValueError, match=r"the bandwidth estimated from X is not finite \(inf\).*rescale X"):
        MeanShift(device=device).fit(X * 1e300)


def test_bandwidth_so_small_that_scaled_data_overflow_is_an_error(X, device):
    with pytest.raises(ValueError, match=r"X divided by bandwidth=1e-310 overflows float64.*rescale X"):
        MeanShift(bandwidth=1e-310, device=device).fit(X * 1e10)


@pytest.mark.parametrize("dtype, top", [(np.float32, 3.0e38), (np.float64, 1.6e308)])
def test_values_near_the_float_maximum_cluster_like_their_rescaled_copy(dtype, top, device):
    """The data's mean overflows there: the fit centres on the midrange and matches the
    same data shifted and scaled to unit range (no overflow, no 'no point within bandwidth')."""
    unit = np.random.RandomState(1).uniform(0, 1, (40, 2))
    spread = np.float64(top) / 30
    X = (unit * spread + top).astype(dtype)
    model = MeanShift(bandwidth=0.3 * spread, device=device).fit(X)
    reference = MeanShift(bandwidth=0.3, device=device).fit(((X.astype(np.float64) - top) / spread).astype(dtype))
    assert len(model.cluster_centers_) == len(reference.cluster_centers_)
    assert np.isfinite(model.cluster_centers_).all()
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(model.labels_, reference.labels_) == 1.0


@pytest.mark.parametrize("tiny", [1e-300, 1e-310])  # 1e-310: subnormal float64
def test_tiny_data_and_bandwidths_cluster_like_their_rescaled_copy(tiny, device):
    """Squared distances of such data underflow (scikit-learn then finds one cluster); here
    the data are divided by the bandwidth first, so they cluster as the same data at unit scale."""
    rng = np.random.RandomState(0)
    X = np.concatenate([rng.normal(0, 1, (40, 2)), rng.normal(10, 1, (40, 2))])
    reference = MeanShift(bandwidth=2.0, device=device).fit(X)
    model = MeanShift(bandwidth=2.0 * tiny, device=device).fit(X * tiny)
    assert len(model.cluster_centers_) == len(reference.cluster_centers_) == 2
    from sklearn.metrics import adjusted_rand_score

    assert adjusted_rand_score(model.labels_, reference.labels_) == 1.0
    assert np.isfinite(model.cluster_centers_).all() and np.abs(model.cluster_centers_).max() > 0
