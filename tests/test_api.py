"""The public API: names, docstrings, doctests, and the scikit-learn contract.

- ``meanshift_gpu.__all__`` holds the documented names and nothing unresolvable;
- every public function and class has a numpydoc docstring whose Parameters
  section documents exactly the signature, and an Examples section;
- every docstring example in the package runs (``doctest``);
- ``mean_shift`` equals the estimator, ``estimate_bandwidth`` and
  ``get_bin_seeds`` equal scikit-learn's;
- numpy, list and torch input, ``device="auto"`` against an explicit device,
  clone / pickle / Pipeline / GridSearchCV all work.

Tests that fit take the ``device`` argument (see ``conftest.py``): they run on
the CPU and, where present, on CUDA.
"""

from __future__ import annotations

import doctest
import importlib
import inspect
import os
import pickle
import pkgutil
import re
import sys
import warnings

import numpy as np
import pytest
import sklearn.cluster
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import meanshift_gpu
from meanshift_gpu import MeanShift, estimate_bandwidth, get_bin_seeds, mean_shift

REQUIRED = {"MeanShift", "mean_shift", "estimate_bandwidth", "get_bin_seeds"}
PUBLIC = [name for name in meanshift_gpu.__all__ if not name.startswith("__")]


@pytest.fixture(scope="module")
def blobs(make_blob_data):
    X, y = make_blob_data(200, 2, 3, random_state=4)
    return X, y


# ----------------------------------------------------------------- API surface
def test_all_lists_the_public_api():
    assert REQUIRED <= set(meanshift_gpu.__all__)
    assert len(set(meanshift_gpu.__all__)) == len(meanshift_gpu.__all__)
    for name in meanshift_gpu.__all__:
        assert hasattr(meanshift_gpu, name), f"__all__ names {name!r}, which does not exist"
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", meanshift_gpu.__version__)
    namespace: dict = {}
    exec("from meanshift_gpu import *", namespace)
    assert REQUIRED <= set(namespace)


def test_meanshift_signature_is_sklearns_plus_extensions():
    ours = inspect.signature(MeanShift).parameters
    theirs = inspect.signature(sklearn.cluster.MeanShift).parameters
    missing = set(theirs) - set(ours)
    assert not missing, f"sklearn parameters missing: {missing}"
    for name, param in theirs.items():
        assert ours[name].kind == inspect.Parameter.KEYWORD_ONLY
        assert ours[name].default == param.default, name
    for name in ("kernel", "algorithm", "tol", "device", "backend", "batch_size", "verbose"):
        assert name in ours
    assert MeanShift().get_params()["kernel"] == "flat"


def _sections(doc: str) -> dict[str, str]:
    """numpydoc sections: a title line followed by a line of dashes."""
    doc = inspect.cleandoc(doc)
    parts = re.split(r"^(\w[\w ]*)\n-{3,}\n", doc, flags=re.M)
    sections = {"Summary": parts[0]}
    for title, body in zip(parts[1::2], parts[2::2]):
        sections[title.strip()] = body
    return sections


def _documented_parameters(body: str) -> set[str]:
    """Names in a Parameters section (``a : type``, ``a, b : type``, ``**options``)."""
    names = set()
    for line in body.splitlines():
        if line and not line[0].isspace():
            head = line.split(" : ")[0]
            names.update(n.strip().lstrip("*") for n in head.split(","))
    return names - {""}


def _public_callables():
    for name in PUBLIC:
        obj = getattr(meanshift_gpu, name)
        yield name, obj
        if inspect.isclass(obj):
            for method in ("fit", "predict", "fit_predict"):
                if hasattr(obj, method):
                    yield f"{name}.{method}", getattr(obj, method)


@pytest.mark.parametrize("name, obj", list(_public_callables()), ids=lambda v: v if isinstance(v, str) else "")
def test_numpydoc_docstrings(name, obj):
    doc = inspect.getdoc(obj)
    assert doc, f"{name} has no docstring"
    sections = _sections(doc)
    summary = sections["Summary"].strip().splitlines()
    assert summary and summary[0].endswith("."), f"{name}: the summary line should be a sentence"
    assert "Parameters" in sections, f"{name} has no Parameters section"
    signature = {
        p.name
        for p in inspect.signature(obj).parameters.values()
        if p.name not in ("self", "cls")
    }
    documented = _documented_parameters(sections["Parameters"])
    assert documented == signature, (
        f"{name}: undocumented {sorted(signature - documented)}, "
        f"documented but absent {sorted(documented - signature)}"
    )
    if inspect.isclass(obj):
        assert "Attributes" in sections, f"{name} has no Attributes section"
    else:
        assert "Returns" in sections, f"{name} has no Returns section"
    if "." not in name:  # methods are covered by the class example
        assert "Examples" in sections and ">>>" in sections["Examples"], f"{name} has no Examples"


def _package_modules():
    names = [m.name for m in pkgutil.walk_packages(meanshift_gpu.__path__, "meanshift_gpu.")]
    return ["meanshift_gpu", *names, "meanshift_gpu.kernels"]


def _skip_unless_triton_can_interpret():
    """The kernel examples run CPU tensors under Triton's interpreter, whose mode
    is fixed when Triton is first imported in the process."""
    if os.environ.get("TRITON_INTERPRET", "1") != "1":
        pytest.skip("TRITON_INTERPRET is set to compiled mode; the kernel examples need the interpreter")
    if sys.modules.get("triton") is not None:
        from meanshift_gpu.kernels import _common

        if _common.triton_mode_error() is not None or not _common.INTERPRETED:
            pytest.skip("Triton was already imported in compiled mode in this session")


def _missing_dependency(exc: ImportError) -> str | None:
    """The optional package whose absence caused ``exc``, or None for our own bug.

    meanshift_gpu.dask re-raises dask's ImportError with an install hint (and
    no ``name``); the missing module is then on the chained exception.
    """
    while exc is not None:
        name = getattr(exc, "name", None)
        if name and not name.startswith("meanshift_gpu"):
            return name
        cause = exc.__cause__ or exc.__context__
        exc = cause if isinstance(cause, ImportError) else None
    return None


def test_missing_dependency_is_found_through_the_install_hint():
    try:
        try:
            import a_package_that_does_not_exist  # noqa: F401
        except ImportError as inner:
            raise ImportError("meanshift_gpu.dask needs dask: pip install ...") from inner
    except ImportError as outer:
        assert _missing_dependency(outer) == "a_package_that_does_not_exist"
    assert _missing_dependency(ImportError("no name", name="meanshift_gpu._x")) is None


@pytest.mark.parametrize("module_name", _package_modules())
def test_docstring_examples_run(module_name):
    if module_name == "meanshift_gpu.kernels":
        _skip_unless_triton_can_interpret()
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        # An optional dependency (dask, triton) that this machine lacks.
        missing = _missing_dependency(exc)
        if missing is not None:
            pytest.skip(f"{module_name} needs {missing}: {exc}")
        raise
    result = doctest.testmod(
        module, optionflags=doctest.NORMALIZE_WHITESPACE | doctest.ELLIPSIS, verbose=False
    )
    assert result.failed == 0, f"{result.failed} docstring example(s) failed in {module_name}"
    public_here = [n for n in PUBLIC if getattr(getattr(meanshift_gpu, n), "__module__", None) == module_name]
    if public_here:
        assert result.attempted > 0, f"{module_name} defines {public_here} but runs no examples"


# ---------------------------------------------------------------- mean_shift()
@pytest.mark.parametrize(
    "options",
    [
        {"bandwidth": 2.0},
        {"bandwidth": 2.0, "cluster_all": False, "kernel": "gaussian"},
        {"bandwidth": 1.5, "bin_seeding": True, "min_bin_freq": 2, "max_iter": 5},
        {"bandwidth": None, "algorithm": "blurring", "kernel": "epanechnikov"},
    ],
)
def test_mean_shift_function_matches_the_estimator(blobs, options, device):
    X, _ = blobs
    weights = np.random.default_rng(0).uniform(0.5, 2.0, len(X))
    centers, labels = mean_shift(X, sample_weight=weights, device=device, **options)
    model = MeanShift(device=device, **options).fit(X, sample_weight=weights)
    np.testing.assert_array_equal(centers, model.cluster_centers_)
    np.testing.assert_array_equal(labels, model.labels_)
    assert isinstance(centers, np.ndarray) and isinstance(labels, np.ndarray)


def test_mean_shift_function_returns_tensors_for_tensor_input(blobs, device):
    X, _ = blobs
    # device="auto" (the default) follows the tensor's device.
    tensor = torch.from_numpy(X).to(device)
    centers, labels = mean_shift(tensor, bandwidth=2.0)
    assert isinstance(centers, torch.Tensor) and isinstance(labels, torch.Tensor)
    assert centers.device == tensor.device and labels.device == tensor.device
    assert centers.dtype == torch.float64 and labels.dtype == torch.int64
    expected_centers, expected_labels = mean_shift(X, bandwidth=2.0, device=device)
    np.testing.assert_array_equal(centers.cpu().numpy(), expected_centers)
    np.testing.assert_array_equal(labels.cpu().numpy(), expected_labels)


def test_mean_shift_function_matches_sklearn(blobs, assert_same_clustering, tolerance, device):
    X, _ = blobs
    expected = sklearn.cluster.mean_shift(X, bandwidth=2.0)
    got = mean_shift(X, bandwidth=2.0, device=device)
    assert_same_clustering(expected[0], expected[1], got[0], got[1], **tolerance(X.dtype, np.abs(X).max()))


# ---------------------------------------------------------- estimate_bandwidth
@pytest.mark.parametrize(
    "quantile, n_samples, random_state",
    [(0.3, None, 0), (0.05, None, 0), (1.0, None, 0), (0.2, 50, 3), (0.5, 120, np.random.RandomState(7))],
)
def test_estimate_bandwidth_matches_sklearn(blobs, quantile, n_samples, random_state, tolerance, device):
    X, _ = blobs
    theirs = sklearn.cluster.estimate_bandwidth(
        X, quantile=quantile, n_samples=n_samples,
        random_state=pickle.loads(pickle.dumps(random_state)),
    )
    ours = estimate_bandwidth(X, quantile=quantile, n_samples=n_samples, random_state=random_state, device=device)
    assert ours == pytest.approx(theirs, rel=tolerance(X.dtype)["rtol"])


def test_estimate_bandwidth_dtype_and_tensor_input(blobs, tolerance, device):
    X, _ = blobs
    expected = sklearn.cluster.estimate_bandwidth(X)
    narrow = estimate_bandwidth(X.astype(np.float32), device=device)
    assert narrow.dtype == np.float32
    assert float(narrow) == pytest.approx(expected, rel=tolerance(np.float32)["rtol"])
    wide = tolerance(np.float64)["rtol"]
    # device="auto" follows a tensor's device.
    assert float(estimate_bandwidth(torch.from_numpy(X).to(device))) == pytest.approx(expected, rel=wide)
    assert float(estimate_bandwidth(X.tolist(), device=device)) == pytest.approx(expected, rel=wide)


# --------------------------------------------------------------- get_bin_seeds
def _sorted_rows(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    return a[np.lexsort(a.T[::-1])]


@pytest.mark.parametrize("bin_size, min_bin_freq", [(1.0, 1), (2.0, 3), (0.7, 2), (5.0, 1)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_get_bin_seeds_matches_sklearn(blobs, bin_size, min_bin_freq, dtype):
    X = blobs[0].astype(dtype)
    theirs = sklearn.cluster.get_bin_seeds(X, bin_size, min_bin_freq)
    ours = get_bin_seeds(X, bin_size, min_bin_freq)
    assert ours.dtype == dtype  # sklearn returns float32; we keep X's dtype
    assert ours.shape == theirs.shape
    np.testing.assert_allclose(_sorted_rows(ours), _sorted_rows(theirs), rtol=1e-6)


def test_get_bin_seeds_tensor_input_and_fallbacks(blobs, device):
    X = blobs[0]
    tensor = torch.from_numpy(X).to(device)
    seeds = get_bin_seeds(tensor, 2.0)
    assert isinstance(seeds, torch.Tensor) and seeds.device == tensor.device
    expected = sklearn.cluster.get_bin_seeds(X, 2.0)
    np.testing.assert_allclose(_sorted_rows(seeds.cpu().numpy()), _sorted_rows(expected), rtol=1e-6)
    assert get_bin_seeds(X, 0) is X  # bin_size 0: no binning, as sklearn
    with pytest.warns(UserWarning, match="Binning data failed with provided bin_size=0.000001"):
        same = get_bin_seeds(X, 1e-6)
    np.testing.assert_array_equal(same, X)


# --------------------------------------------------------- input kinds, device
def test_explicit_device_matches_auto(blobs, device, assert_same_clustering, tolerance):
    X, _ = blobs
    auto = MeanShift(bandwidth=2.0).fit(X)  # "auto": CUDA when present, else the CPU
    auto_device = "cuda" if torch.cuda.is_available() else "cpu"
    for spelled in (device, torch.device(device)):
        explicit = MeanShift(bandwidth=2.0, device=spelled).fit(X)
        if device == auto_device:  # the same computation
            np.testing.assert_array_equal(explicit.cluster_centers_, auto.cluster_centers_)
            np.testing.assert_array_equal(explicit.labels_, auto.labels_)
        else:  # CPU against the GPU: equal to the compute dtype's rounding
            assert_same_clustering(explicit.cluster_centers_, explicit.labels_, auto.cluster_centers_,
                                   auto.labels_, **tolerance(X.dtype, np.abs(X).max()))
        assert explicit.n_iter_ == auto.n_iter_


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tensor_input_returns_numpy(blobs, dtype, device):
    X, _ = blobs
    tensor = torch.from_numpy(X).to(device=device, dtype=dtype)
    model = MeanShift(bandwidth=2.0).fit(tensor)  # "auto" follows the tensor
    reference = MeanShift(bandwidth=2.0, device=device).fit(tensor.cpu().numpy())
    for attribute in ("cluster_centers_", "labels_", "cluster_sizes_"):
        assert isinstance(getattr(model, attribute), np.ndarray), attribute
        np.testing.assert_array_equal(getattr(model, attribute), getattr(reference, attribute))
    assert model.cluster_centers_.dtype == tensor.cpu().numpy().dtype
    predicted = model.predict(tensor[:10])
    assert isinstance(predicted, np.ndarray)
    np.testing.assert_array_equal(predicted, reference.labels_[:10])
    assert model.n_features_in_ == 2 and not hasattr(model, "feature_names_in_")


def test_list_and_integer_input(blobs, device):
    X = np.round(blobs[0]).astype(np.int64)
    from_ints = MeanShift(bandwidth=2.0, device=device).fit(X)
    from_list = MeanShift(bandwidth=2.0, device=device).fit(X.tolist())
    from_float = MeanShift(bandwidth=2.0, device=device).fit(X.astype(np.float64))
    assert from_ints.cluster_centers_.dtype == np.float64
    for model in (from_ints, from_list):
        np.testing.assert_array_equal(model.cluster_centers_, from_float.cluster_centers_)
        np.testing.assert_array_equal(model.labels_, from_float.labels_)


def test_fitted_attributes(blobs, tolerance, device):
    X, _ = blobs
    model = MeanShift(device=device).fit(X)
    expected_bandwidth = sklearn.cluster.estimate_bandwidth(X)
    assert model.bandwidth_ == pytest.approx(expected_bandwidth, rel=tolerance(X.dtype)["rtol"])
    assert model.labels_.shape == (len(X),) and model.labels_.dtype == np.int64
    np.testing.assert_array_equal(model.cluster_sizes_, np.bincount(model.labels_))
    assert model.cluster_sizes_.sum() == len(X)
    assert isinstance(model.n_iter_, int) and 0 < model.n_iter_ <= model.max_iter
    np.testing.assert_array_equal(model.fit_predict(X), model.labels_)
    np.testing.assert_array_equal(model.predict(X), model.labels_)


def test_verbose_reports_progress(blobs, capsys, device):
    X, _ = blobs
    MeanShift(bandwidth=2.0, verbose=True, device=device).fit(X)
    captured = capsys.readouterr()
    assert (captured.out + captured.err).strip(), "verbose=True printed nothing"
    MeanShift(bandwidth=2.0, device=device).fit(X)
    captured = capsys.readouterr()
    assert not (captured.out + captured.err).strip(), "verbose=False printed something"


# ------------------------------------------------------------ sklearn contract
def test_clone_params_and_pickle(blobs, device):
    X, _ = blobs
    model = MeanShift(bandwidth=2.0, kernel="gaussian", batch_size=16, device=device)
    copy = clone(model)
    assert copy.get_params() == model.get_params() and copy is not model
    copy.set_params(bandwidth=3.0, kernel="epanechnikov")
    assert copy.get_params()["bandwidth"] == 3.0 and model.get_params()["bandwidth"] == 2.0
    model.fit(X)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.cluster_centers_, model.cluster_centers_)
    np.testing.assert_array_equal(restored.predict(X), model.predict(X))


def test_pipeline_and_grid_search(blobs, make_blob_data, device):
    X, _ = blobs
    pipeline = make_pipeline(StandardScaler(), MeanShift(bandwidth=0.5, device=device))
    labels = pipeline.fit_predict(X)
    np.testing.assert_array_equal(pipeline.predict(X), labels)

    def n_clusters_near_truth(estimator, X_, y_=None):
        return -abs(len(estimator.cluster_centers_) - 3)

    # Three well-separated blobs: only the middle bandwidth finds three clusters.
    X, _ = make_blob_data(150, 2, 3, random_state=0, cluster_std=0.5, center_box=(-20.0, 20.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        search = GridSearchCV(
            MeanShift(device=device), {"bandwidth": [0.3, 2.5, 50.0]}, scoring=n_clusters_near_truth, cv=2
        ).fit(X)
    assert search.best_params_ == {"bandwidth": 2.5}
    assert len(search.best_estimator_.cluster_centers_) == 3


@pytest.mark.parametrize("dtype", [torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, torch.bool])
def test_integer_tensors_are_computed_exactly_in_float64(dtype, device):
    """Integer tensors of every width compute in float64, as numpy integers do: values
    above 2**24 stay distinct (float32 would merge neighbours)."""
    base = 2**25 if dtype in (torch.int32, torch.int64) else 0
    high = {torch.uint8: 200, torch.int8: 100, torch.int16: 30_000, torch.bool: 2}.get(dtype, 40)
    values = torch.arange(base, base + min(high, 40)).reshape(-1, 1)
    X = (values % 2).to(dtype) if dtype == torch.bool else values.to(dtype)
    model = MeanShift(bandwidth=0.4, device=device).fit(X.to(device))
    expected = MeanShift(bandwidth=0.4, device=device).fit(X.cpu().numpy().astype(np.int64))
    assert model.cluster_centers_.dtype == np.float64
    assert len(model.cluster_centers_) == len(expected.cluster_centers_) == len(torch.unique(X))
    np.testing.assert_array_equal(np.sort(model.cluster_centers_, 0), np.sort(expected.cluster_centers_, 0))
