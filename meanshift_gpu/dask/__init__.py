"""Mean shift on a Dask cluster, for data that outgrow one GPU or one host.

:class:`MeanShift` here has the parameters, attributes and results of
:class:`meanshift_gpu.MeanShift`, and runs on a ``distributed`` cluster: the
data are cut into slabs along their widest axis (boundaries on whole
bandwidths), every worker holds one slab plus a halo one kernel reach wide,
seeds iterate on the worker that owns them and migrate between rounds when
they cross a border, and only halos, migrating seeds and final modes travel.
Each worker runs the single-machine engine (Triton kernels on its GPU when it
has one, neighbour pruning as ``neighbors`` says).  See ``docs/dask.md`` and
:mod:`meanshift_gpu.dask.engine` for the design.

Needs the optional extra ``dask`` (``pip install 'meanshift-gpu[dask]'``:
``dask[array]`` and ``distributed``).
"""

from __future__ import annotations

import math
import numbers
import time
import uuid
import warnings

import numpy as np
import torch

try:
    import dask
    import dask.array as da
    import distributed
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "meanshift_gpu.dask needs dask and distributed: pip install 'meanshift-gpu[dask]' "
        "(or pip install 'dask[array]' distributed)"
    ) from exc

from . import engine as eng
from .._engine import ascent as _engine
from .._bandwidth.rules import effective_sample_size
from .._decisions import DecisionLog, decide_dtype, paused, record, recording
from .._estimator import MeanShift as _SingleMachineMeanShift
from .._estimator import NoSeedReachedError
from .._neighbors import kernel_reach
from .._reference import using_flat_edge
from .._spec import FitSpec, bandwidth_scale, flat_edge_of, median_offset, resolve_bandwidth
from .._validation import as_tensor, check_points, check_weight_summary, resolve_device

__all__ = ["MeanShift"]


class MeanShift(_SingleMachineMeanShift):
    """Mean shift clustering on a Dask cluster, same results as :class:`meanshift_gpu.MeanShift`.

    The data are partitioned in space (slabs along the widest axis, on whole
    bandwidths), each worker holds its slab plus a halo of the points within
    the kernel's reach of its borders, and seeds iterate on the worker that
    owns their current position, migrating to the neighbouring worker
    between rounds when a step carries them across a border.  Every seed thus
    takes exactly the single-machine path; modes are merged once on the
    driver with the single-machine rule, so ``cluster_centers_`` (densest
    first) and ``labels_`` are the single-machine ones, up to float rounding
    in the order of sums.

    Parameters
    ----------
    bandwidth, bandwidth_quantile, seeds, bin_seeding, min_bin_freq, cluster_all, n_jobs, \
max_iter, kernel, algorithm, tol, device, backend, neighbors, neighbor_options, batch_size, verbose
        As in :class:`meanshift_gpu.MeanShift`; ``device``, ``backend``,
        ``neighbors`` and ``batch_size`` apply on each worker ("auto" picks
        the worker's GPU when it has one).  Not supported here:
        ``algorithm="blurring"`` and ``bandwidth="adaptive"``.  Bandwidth
        rules (None, "sklearn", "knn", "scott", "silverman", "auto") are
        computed on a uniform sample of ``bandwidth_n_samples`` points; with
        at most that many points they give the single-machine value.  The
        Gaussian kernel is cut at ``neighbor_options["truncate"]`` bandwidths
        across partition borders (the halo width).
    client : distributed.Client, default=None
        The cluster to run on; None uses the current default client
        (``distributed.default_client()``).
    n_partitions : int, default=None
        Number of spatial partitions; None gives one per worker.  Fewer are
        used when the data span too few bandwidths.
    bandwidth_n_samples : int, default=10000
        Points sampled (uniformly, without replacement) to estimate the
        bandwidth and place the partition boundaries.
    random_state : int, default=0
        Seed of that sample.

    Attributes
    ----------
    cluster_centers_, n_iter_, n_features_in_, feature_names_in_, bandwidth_, cluster_sizes_, neighbors_
        As in :class:`meanshift_gpu.MeanShift` (``neighbors_`` lists the
        methods the partitions used, comma-separated when they differ).
    labels_ : ndarray or dask.array.Array of shape (n_samples,)
        Labels; a persisted dask array when ``X`` was a dask array, else an
        ndarray.
    dask_stats_ : dict
        What the fit did: partitions, boundaries, core and halo sizes, halo
        bytes, rounds, seeds migrated per round and their bytes, candidate
        modes gathered, seed-steps computed and seconds per partition.

    See Also
    --------
    meanshift_gpu.MeanShift : The single-machine estimator.

    Examples
    --------
    >>> import numpy as np
    >>> from distributed import Client, LocalCluster
    >>> from meanshift_gpu.dask import MeanShift
    >>> X = np.array([[1, 1], [2, 1], [1, 0], [4, 7], [3, 5], [3, 6]], dtype=float)
    >>> with LocalCluster(n_workers=1, processes=False) as cluster, Client(cluster) as client:
    ...     model = MeanShift(bandwidth=2, client=client).fit(X)
    >>> model.labels_
    array([1, 1, 1, 0, 0, 0])
    """

    _parameter_constraints: dict = {
        **_SingleMachineMeanShift._parameter_constraints,
        "client": "no_validation",
        "n_partitions": [numbers.Integral, None],
        "bandwidth_n_samples": [numbers.Integral],
        "random_state": ["random_state"],
    }

    # Called as ``hook(client, round_index, partition_futures)`` after each round;
    # for tests only (not a parameter, so clone() and get_params() ignore it).
    _after_round = None

    def __init__(
        self,
        *,
        bandwidth=None,
        bandwidth_quantile=0.3,
        seeds=None,
        bin_seeding=False,
        min_bin_freq=1,
        cluster_all=True,
        n_jobs=None,
        max_iter=300,
        kernel="flat",
        algorithm="standard",
        tol=1e-3,
        device="auto",
        backend="auto",
        neighbors="auto",
        neighbor_options=None,
        batch_size="auto",
        verbose=False,
        client=None,
        n_partitions=None,
        bandwidth_n_samples=10_000,
        random_state=0,
    ):
        super().__init__(
            bandwidth=bandwidth,
            bandwidth_quantile=bandwidth_quantile,
            seeds=seeds,
            bin_seeding=bin_seeding,
            min_bin_freq=min_bin_freq,
            cluster_all=cluster_all,
            n_jobs=n_jobs,
            max_iter=max_iter,
            kernel=kernel,
            algorithm=algorithm,
            tol=tol,
            device=device,
            backend=backend,
            neighbors=neighbors,
            neighbor_options=neighbor_options,
            batch_size=batch_size,
            verbose=verbose,
        )
        self.client = client
        self.n_partitions = n_partitions
        self.bandwidth_n_samples = bandwidth_n_samples
        self.random_state = random_state

    def __getstate__(self):
        """Pickle without the client: a connection to a running cluster cannot be saved.

        The unpickled estimator has ``client=None`` (a later ``fit`` uses the
        default client); its fitted attributes are all there, and ``predict``
        needs no cluster.
        """
        state = super().__getstate__() if hasattr(super(), "__getstate__") else self.__dict__.copy()
        state = dict(state)
        if state.get("client") is not None:
            state["client"] = None
        return state

    # ------------------------------------------------------------------ fitting
    def fit(self, X, y=None, sample_weight=None):
        """Cluster ``X`` on the cluster.

        Parameters
        ----------
        X : dask.array.Array, array-like or torch.Tensor of shape (n_samples, n_features)
            Samples.  A dask array stays distributed (``labels_`` is then a
            dask array); in-memory input is sorted along the split axis and
            sent to the workers partition by partition.
        y : Ignored
            Not used, present for API consistency by convention.
        sample_weight : dask.array.Array or array-like of shape (n_samples,), default=None
            Non-negative weight of each point, as in the single-machine fit.

        Returns
        -------
        self : MeanShift
            Fitted estimator.
        """
        self._validate_params()
        client = self._client()
        if self.algorithm == "blurring":
            raise ValueError(
                "meanshift_gpu.dask.MeanShift supports algorithm='standard' only: blurring moves "
                "every point every iteration, so halos would have to travel each iteration"
            )
        if isinstance(self.bandwidth, str) and self.bandwidth == "adaptive":
            raise ValueError(
                "bandwidth='adaptive' (per-point windows) is not supported on Dask; use a fixed "
                "bandwidth or one of the rules 'auto', 'knn', 'scott', 'silverman', 'sklearn'"
            )
        if self.n_partitions is not None and self.n_partitions < 1:
            raise ValueError(f"n_partitions must be >= 1, got {self.n_partitions!r}")
        if self.bandwidth_n_samples < 1:
            raise ValueError(f"bandwidth_n_samples must be >= 1, got {self.bandwidth_n_samples!r}")
        # The single-machine estimator's settings, resolved by the same code.
        spec = FitSpec.from_estimator(self)
        # The driver's decisions (bandwidth, partitions, merge) and, combined,
        # the ones each partition's worker made for itself.
        with recording(DecisionLog()) as decisions:
            if _is_dask(X):
                self._fit_dask(client, spec, X, sample_weight)
            else:
                self._fit_memory(client, spec, X, sample_weight)
        self.fit_info_ = decisions.as_fit_info()
        if self.verbose:
            for line in decisions.lines():
                _engine.log_line(line)
        return self

    def _client(self):
        if self.client is not None:
            return self.client
        try:
            return distributed.default_client()
        except ValueError as exc:
            raise ValueError(
                "meanshift_gpu.dask.MeanShift needs a distributed cluster: pass client=Client(...) "
                "or create a distributed.Client first"
            ) from exc

    # -------------------------------------------------------------- in-memory input
    def _fit_memory(self, client, spec, X, sample_weight):
        # A torch tensor's dtype decides, as on one machine (float16 computes in float32).
        input_dtype = X.dtype if isinstance(X, torch.Tensor) else getattr(X, "dtype", None)
        if isinstance(X, torch.Tensor):
            X = X.detach().cpu().numpy()
        X = self._validate_X(X, reset=True)
        dtype = decide_dtype(X.dtype if input_dtype is None else input_dtype).choice
        data = torch.as_tensor(np.ascontiguousarray(X)).to(dtype)
        weights = None
        if sample_weight is not None:
            from .._validation import check_sample_weight

            weights = check_sample_weight(sample_weight, X.shape[0], torch.device("cpu"), dtype)
        # The same offset as the single-machine fit: all the data are here.
        offset = median_offset(data)
        bandwidth = self._bandwidth_from_sample(spec, X, data, weights, effective_sample_size(X.shape[0], weights))
        plan, stats = self._plan(
            client, spec, bandwidth, offset.numpy(), dtype, data.shape[1],
            data.amin(0).numpy(), data.amax(0).numpy(), _sample_u(data, weights, self, offset), data,
        )
        u = ((data[:, plan.axis] - offset[plan.axis]) / torch.as_tensor(plan.scale[plan.axis]).to(dtype))
        owner = eng.owner_of(u, plan.bounds).numpy()
        perm = np.argsort(owner, kind="stable")
        counts = np.bincount(owner, minlength=plan.n_partitions)
        starts = np.concatenate([[0], np.cumsum(counts)])
        workers = _workers(client)
        xs = X[perm]
        ws = None if weights is None else weights.numpy()[perm]
        chunks, wchunks, rows = [], [], []
        token = uuid.uuid4().hex[:8]
        with warnings.catch_warnings():
            # The chunks ride in the task specs on purpose: the scheduler keeps
            # them, so a lost worker's chunk can be recomputed (scatter cannot).
            warnings.filterwarnings("ignore", message=".*Large object.*")
            for p in range(plan.n_partitions):
                a, b = int(starts[p]), int(starts[p + 1])
                if a == b:
                    continue
                where = dict(workers=[workers[p % len(workers)]], allow_other_workers=True)
                chunks.append(client.submit(np.asarray, xs[a:b], key=f"meanshift-chunk-{token}-{p}", **where))
                wchunks.append(
                    None if ws is None else
                    client.submit(np.asarray, ws[a:b], key=f"meanshift-wchunk-{token}-{p}", **where)
                )
                rows.append(b - a)
        centers, stats = self._run(client, plan, stats, chunks, wchunks, X.shape[0], token, weights, data)
        clock = time.perf_counter()
        label_futures = [
            client.submit(eng.label_block, c, centers, plan, key=f"meanshift-labels-{token}-{i}")
            for i, c in enumerate(chunks)
        ]
        sorted_labels = np.concatenate(client.gather(label_futures)) if label_futures else np.empty(0, np.int64)
        labels = np.empty(X.shape[0], dtype=np.int64)
        labels[perm] = sorted_labels
        _lap(stats, "labels", clock)
        self._finish(plan, centers, stats, labels, dtype)
        self.cluster_sizes_ = np.bincount(labels[labels >= 0], minlength=len(self.cluster_centers_))
        return self

    # ------------------------------------------------------------------ dask input
    def _fit_dask(self, client, spec, X, sample_weight):
        if hasattr(X, "to_dask_array"):  # dask DataFrame
            names = np.asarray(X.columns, dtype=object)
            X = X.to_dask_array(lengths=True)
            if all(isinstance(n, str) for n in names):
                self.feature_names_in_ = names
            elif hasattr(self, "feature_names_in_"):
                del self.feature_names_in_
        elif hasattr(self, "feature_names_in_"):
            del self.feature_names_in_
        if X.ndim != 2:
            raise ValueError(f"Expected 2D array, got {X.ndim}D array instead")
        if any(math.isnan(c) for c in X.chunks[0]):
            X = X.compute_chunk_sizes()
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float64)
        n, d = X.shape
        if n < 1 or d < 1:
            raise ValueError(f"Found array with shape {X.shape}: at least one sample and feature needed")
        self.n_features_in_ = d
        X = X.rechunk({1: -1})
        weights_da = None
        if sample_weight is not None:
            weights_da = sample_weight if _is_dask(sample_weight) else da.from_array(np.asarray(sample_weight, dtype=np.float64))
            if weights_da.ndim != 1 or weights_da.shape[0] != n:
                raise ValueError(f"sample_weight.shape == {weights_da.shape}, expected ({n},)")
            weights_da = weights_da.astype(X.dtype).rechunk((X.chunks[0],))
        dtype = decide_dtype(X.dtype).choice
        X = client.persist(X)
        checks = [X.min(0), X.max(0), da.isfinite(X).all()]
        if weights_da is not None:
            weights_da = client.persist(weights_da)
            checks += [
                da.isfinite(weights_da).all(), (weights_da < 0).any(),
                (weights_da > 0).any(), (weights_da == 1).all(),
                weights_da.astype(np.float64).sum(), (weights_da.astype(np.float64) ** 2).sum(),
            ]
        results = client.compute(checks, sync=True)
        mins, maxs, finite = results[:3]
        if not finite:
            raise ValueError("Input X contains NaN or infinity.")
        if weights_da is not None:
            w_finite, w_negative, w_positive, w_ones, w_sum, w_sq = results[3:]
            check_weight_summary(finite=bool(w_finite), any_negative=bool(w_negative), any_positive=bool(w_positive))
            if w_ones:
                weights_da = None
        n_eff = float(n) if weights_da is None else float(w_sum) ** 2 / float(w_sq)

        # A uniform sample (all points when few) for the bandwidth and the boundaries.
        idx = _sample_indices(n, self.bandwidth_n_samples, self.random_state)
        if idx is None:
            idx = np.arange(n)
        sample_np = client.compute(X[idx], sync=True)
        sample_w = None
        if weights_da is not None:
            sample_w = torch.as_tensor(client.compute(weights_da[idx], sync=True)).to(dtype)
        sample = torch.as_tensor(np.ascontiguousarray(sample_np)).to(dtype)
        # Centred on the sample's median: the whole median would cost a pass over the array.
        offset = median_offset(sample)
        bandwidth = self._bandwidth_from_sample(spec, sample_np, sample, sample_w, n_eff)
        plan, stats = self._plan(
            client, spec, bandwidth, offset.numpy(), dtype, d,
            np.asarray(mins, dtype=np.float64), np.asarray(maxs, dtype=np.float64),
            _sample_u_from(sample, sample_w, offset), sample,
        )
        token = uuid.uuid4().hex[:8]
        chunks = _block_futures(X)
        wchunks = _block_futures(weights_da) if weights_da is not None else [None] * len(chunks)
        centers, stats = self._run(client, plan, stats, chunks, wchunks, n, token, weights_da, None)
        clock = time.perf_counter()
        labels = X.map_blocks(
            eng.label_block, centers=centers, plan=plan, drop_axis=1, dtype=np.int64,
            name=f"meanshift-labels-{token}",
        )
        labels = client.persist(labels)
        distributed.wait(labels)
        _lap(stats, "labels", clock)
        self._finish(plan, centers, stats, labels, dtype)
        k_clusters = len(self.cluster_centers_)
        sizes = labels.map_blocks(
            eng.label_counts, n_clusters=k_clusters, new_axis=1, chunks=((1,) * labels.numblocks[0], (k_clusters,)),
            dtype=np.int64,
        ).sum(0)
        self.cluster_sizes_ = np.asarray(client.compute(sizes, sync=True), dtype=np.int64)
        return self

    # ------------------------------------------------------------------ shared steps
    def _bandwidth_from_sample(self, spec, X_sample, sample: torch.Tensor, weights, n_eff_full: float):
        """The bandwidth: the single-machine resolution on a uniform sample.

        With at most ``bandwidth_n_samples`` points the sample is the data
        and the value is the single-machine one.  The rules that depend on
        the number of points (Scott's, Silverman's) are rescaled from the
        sample's effective size to the full data's, ``n_eff_full``.
        """
        idx = _sample_indices(sample.shape[0], self.bandwidth_n_samples, self.random_state)
        if idx is not None:
            X_sample = np.asarray(X_sample)[idx]
            sample = sample[torch.as_tensor(idx)]
            weights = None if weights is None else weights[torch.as_tensor(idx)]
        # The rules run on the driver's device ("auto": its GPU, if any).
        device = resolve_device(spec.device, None)
        with paused():  # a rule's own inner fits are not this fit's decisions
            value = resolve_bandwidth(
                spec, X_sample, as_tensor(sample, device, sample.dtype),
                None if weights is None else weights.to(device),
                full_effective_size=n_eff_full,
            )
        if not np.all(np.asarray(value) > 0):
            raise ValueError(
                "the estimated bandwidth is 0 (heavily duplicated data); pass a positive "
                "bandwidth to meanshift_gpu.dask.MeanShift"
            )
        return value

    def _plan(self, client, spec, bandwidth, offset, dtype, d, mins, maxs, u_of, points):
        """Scale, split axis, boundaries and halo width of this fit."""
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        scale = bandwidth_scale(bandwidth, d, dtype).numpy()
        extent = (np.asarray(maxs, np.float64) - np.asarray(mins, np.float64)) / scale
        axis = int(np.argmax(extent))
        reach = kernel_reach(spec.kernel, spec.neighbor_options)
        max_abs = float(np.max(np.abs((np.stack([mins, maxs]) - offset) / scale)))
        halo = reach + eng.halo_margin(max_abs, d, np.dtype(np_dtype).name)
        n_parts = self.n_partitions or len(_workers(client))
        u_sample = u_of(axis, scale[axis])
        bounds = eng.choose_bounds(u_sample, n_parts, 2 * halo)
        asked = f"n_partitions={self.n_partitions}" if self.n_partitions else f"auto: one per worker ({n_parts})"
        fewer = "" if len(bounds) + 1 == n_parts else "; fewer, since the data span too few bandwidths"
        record("partitions", len(bounds) + 1, asked + fewer, automatic=not self.n_partitions)
        # The edge's rounding allowance from the points at hand (all of them, or the sample).
        scaled_points = (points - torch.as_tensor(offset).to(points.dtype)) / torch.as_tensor(scale).to(points.dtype)
        plan = eng.Plan(
            spec=spec, offset=np.asarray(offset, dtype=np_dtype), scale=scale, dtype=np.dtype(np_dtype).name,
            axis=axis, bounds=bounds, halo=halo, flat_edge=flat_edge_of(scaled_points),
        )
        stats = eng.FitStats(
            n_partitions=plan.n_partitions, split_axis=axis,
            bounds=[float(offset[axis] + b * scale[axis]) for b in bounds], halo=halo,
        )
        self.bandwidth_ = bandwidth
        return plan, stats

    def _run(self, client, plan, stats, chunks, wchunks, n_samples, token, weights, data):
        """Partition, seed, iterate in rounds; return the merged centers (scaled)."""
        P = plan.n_partitions
        clock = time.perf_counter()
        log = _engine.log_line if plan.spec.verbose else (lambda message: None)
        # 1. Split every chunk into the pieces of the partitions it touches.
        splits = [
            client.submit(eng.split_chunk, c, w, plan, key=f"meanshift-split-{token}-{i}")
            for i, (c, w) in enumerate(zip(chunks, wchunks))
        ]
        counts = client.gather([
            client.submit(eng.piece_counts, s, key=f"meanshift-splitcount-{token}-{i}")
            for i, s in enumerate(splits)
        ])
        homes = client.who_has(chunks)
        partitions = []
        row_bytes = np.dtype(plan.dtype).itemsize * (plan.offset.shape[0] + (wchunks[0] is not None))
        for p in range(P):
            pieces, load = [], {}
            for i, cnt in enumerate(counts):
                if p in cnt:
                    pieces.append(client.submit(eng.take, splits[i], p, key=f"meanshift-piece-{token}-{i}-{p}"))
                    for w in homes.get(chunks[i].key, ()):
                        load[w] = load.get(w, 0) + sum(cnt[p])
            # Build the partition where most of its rows already are.
            where = {}
            if load:
                where = dict(workers=[max(load, key=load.get)], allow_other_workers=True)
            partitions.append(client.submit(
                eng.build_partition, p, plan, *pieces, key=f"meanshift-partition-{token}-{p}", **where
            ))
        sizes = client.gather([
            client.submit(eng.partition_sizes, part, key=f"meanshift-partsize-{token}-{p}")
            for p, part in enumerate(partitions)
        ])
        del splits
        stats.core_sizes = [s[0] for s in sizes]
        stats.halo_sizes = [s[1] for s in sizes]
        stats.halo_bytes = int(sum(s[2] for s in sizes))
        stats.data_bytes = int(n_samples * row_bytes)
        log(f"{P} partitions along feature {plan.axis}: cores {stats.core_sizes}, halos {stats.halo_sizes}")
        clock = _lap(stats, "partition", clock)

        # 2. Initial seeds of each partition.
        incoming = self._initial_seeds(client, plan, chunks, wchunks, n_samples, token, data)

        clock = _lap(stats, "seeds", clock)

        # 3. Rounds: each partition steps the seeds it owns; leavers migrate.
        results = []
        stats.ascent_seconds = [0.0] * P
        methods = set()
        worker_decisions: list[dict] = []
        n_iter = 0
        r = 0
        while incoming:
            round_ = {}
            for p, batches in sorted(incoming.items()):
                round_[p] = client.submit(
                    eng.ascend_partition, partitions[p], batches, plan,
                    key=f"meanshift-ascend-{token}-r{r}-p{p}",
                )
            summaries = client.gather([
                client.submit(eng.round_summary, f, key=f"meanshift-summary-{token}-r{r}-p{p}")
                for p, f in round_.items()
            ])
            results.extend(round_.values())
            if self._after_round is not None:  # test hook (e.g. kill a worker between rounds)
                self._after_round(client, r, partitions)
            incoming = {}
            migrated = 0
            for s in summaries:
                stats.ascent_seconds[s["p"]] += s["seconds"]
                stats.seed_steps += s["n_steps"]
                n_iter = max(n_iter, s["max_iter"])
                if s["method"]:
                    methods.add(s["method"])
                if s.get("decisions"):
                    worker_decisions.append(s["decisions"])
                for q, cnt in s["outgoing"].items():
                    incoming.setdefault(q, []).append(client.submit(
                        eng.outgoing_to, round_[s["p"]], q, key=f"meanshift-migrate-{token}-r{r}-{s['p']}to{q}"
                    ))
                    migrated += cnt
            stats.seeds_per_round.append(int(sum(s["n_seeds"] for s in summaries)))
            stats.migrated_per_round.append(migrated)
            stats.migrated_bytes += migrated * (np.dtype(plan.dtype).itemsize * plan.offset.shape[0] + 8)
            log(f"round {r}: {stats.seeds_per_round[-1]} seeds stepped, {migrated} migrate")
            if r > plan.spec.max_iter + 1:  # pragma: no cover - every migration costs an iteration
                raise RuntimeError("seeds kept migrating past max_iter; please report this")
            r += 1
        stats.rounds = r
        stats.methods = sorted(methods)
        clock = _lap(stats, "rounds", clock)

        # 4. Merge the finished modes of all partitions, once, with the single-machine rule.
        finished = client.gather([
            client.submit(eng.finished_modes, f, key=f"meanshift-finished-{token}-{i}")
            for i, f in enumerate(results)
        ])
        dt = torch.float32 if plan.dtype == "float32" else torch.float64
        d = plan.offset.shape[0]
        positions = torch.cat([torch.as_tensor(f[0]).reshape(-1, d) for f in finished]).to(dt)
        intensity = torch.cat([torch.as_tensor(f[1]).reshape(-1) for f in finished]).to(dt)
        stats.n_candidates = int(positions.shape[0])
        _record_partition_decisions(worker_decisions)
        with using_flat_edge(plan.flat_edge):
            record("flat_edge", plan.flat_edge, "the flat window's edge on squared scaled distances, "
                   "sent to every worker")
            centers = _engine.merge_modes(positions, intensity)
        if centers.shape[0] == 0:
            raise NoSeedReachedError(
                f"No point was within bandwidth={self.bandwidth_} of any seed. Try a different "
                "seeding strategy or increase the bandwidth."
            )
        self.n_iter_ = n_iter
        _lap(stats, "merge", clock)
        return centers.numpy(), stats

    def _initial_seeds(self, client, plan, chunks, wchunks, n_samples, token, data):
        """``{p: [batch, ...]}`` of round 0 (see :func:`meanshift_gpu.dask.engine.ascend_partition`)."""
        P = plan.n_partitions
        dt = torch.float32 if plan.dtype == "float32" else torch.float64
        if self.seeds is not None:
            seeds = torch.as_tensor(np.asarray(check_points(self.seeds, "seeds", plan.offset.shape[0]))).to(dt)
            scaled = (seeds - torch.as_tensor(plan.offset)) / torch.as_tensor(plan.scale)
            owner = eng.owner_of(scaled[:, plan.axis], plan.bounds)
            return {
                int(p): [(scaled[owner == p].numpy(), np.zeros(int((owner == p).sum()), np.int64))]
                for p in torch.unique(owner).tolist()
            }
        if plan.spec.bin_seeding:
            binned = [
                client.submit(eng.bin_chunk, c, w, plan, key=f"meanshift-bin-{token}-{i}")
                for i, (c, w) in enumerate(zip(chunks, wchunks))
            ]
            owners = client.gather([
                client.submit(sorted, b, key=f"meanshift-binowners-{token}-{i}") for i, b in enumerate(binned)
            ])
            seeds = []
            for p in range(P):
                pieces = [
                    client.submit(eng.take, binned[i], p, key=f"meanshift-binpiece-{token}-{i}-{p}")
                    for i, own in enumerate(owners) if p in own
                ]
                seeds.append(client.submit(
                    eng.bin_partition, plan, float(plan.spec.min_bin_freq), *pieces, key=f"meanshift-binseeds-{token}-{p}"
                ))
            n_seeds = client.gather([
                client.submit(eng.n_rows, s, key=f"meanshift-nbin-{token}-{p}") for p, s in enumerate(seeds)
            ])
            if sum(n_seeds) != n_samples:
                return {
                    p: [client.submit(_with_zero_iters, s, key=f"meanshift-binbatch-{token}-{p}")]
                    for p, s in enumerate(seeds) if n_seeds[p]
                }
            warnings.warn(
                f"Binning data failed with provided bin_size={float(np.max(self.bandwidth_)):f}, "
                "using data points as seeds."
            )
        return {p: ["core"] for p in range(P)}

    def _finish(self, plan, centers, stats, labels, dtype):
        scale = torch.as_tensor(plan.scale)
        offset = torch.as_tensor(plan.offset)
        out_dtype = np.float32 if dtype == torch.float32 else np.float64
        c = torch.as_tensor(centers) * scale + offset
        self.cluster_centers_ = c.numpy().astype(out_dtype, copy=False)
        self.labels_ = labels
        self.neighbors_ = ",".join(stats.methods) or "dense"
        self._scale = plan.scale
        self._offset = plan.offset
        self._plan_ = plan
        self.dask_stats_ = stats.as_dict()

    # --------------------------------------------------------------- prediction
    def predict(self, X):
        """Nearest cluster of each sample, as :meth:`meanshift_gpu.MeanShift.predict`.

        Parameters
        ----------
        X : dask.array.Array, array-like or torch.Tensor of shape (n_samples, n_features)
            New data; a dask array gives a (lazy) dask array of labels.

        Returns
        -------
        labels : ndarray or dask.array.Array of shape (n_samples,)
            Index of the nearest cluster center.
        """
        if not _is_dask(X):
            return super().predict(X)
        from sklearn.utils.validation import check_is_fitted
        from dataclasses import replace

        check_is_fitted(self)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has shape {X.shape}, expected (n, {self.n_features_in_})")
        # Every point gets its nearest center, as in the single-machine predict.
        plan = replace(self._plan_, spec=replace(self._plan_.spec, cluster_all=True))
        centers = ((torch.as_tensor(self.cluster_centers_).to(torch.as_tensor(plan.scale).dtype)
                    - torch.as_tensor(plan.offset)) / torch.as_tensor(plan.scale)).numpy()
        return X.rechunk({1: -1}).map_blocks(
            eng.label_block, centers=centers, plan=plan, drop_axis=1, dtype=np.int64
        )


# ----------------------------------------------------------------------------- helpers
def _record_partition_decisions(workers: list[dict]) -> None:
    """Record, in the driver's log, each decision the partitions' workers made, with the values they took.

    Partitions decide for themselves (their sizes differ, so may their
    neighbour method or step); where they differ, the value lists all of
    theirs joined by " | ", and the reason gives each value's own.
    """
    taken: dict[str, list] = {}  # name -> distinct (value, reason) pairs, in order
    for worker in workers:
        for name, value in worker.items():
            if name != "reasons" and (value, worker["reasons"][name]) not in taken.setdefault(name, []):
                taken[name].append((value, worker["reasons"][name]))
    for name, pairs in taken.items():
        values = list(dict.fromkeys(value for value, _ in pairs))
        if len(values) == 1:
            record(name, values[0], " | ".join(dict.fromkeys(why for _, why in pairs)))
        else:
            record(name, " | ".join(map(str, values)), " | ".join(f"{value}: {why}" for value, why in pairs))


def _lap(stats, stage: str, since: float) -> float:
    now = time.perf_counter()
    stats.stage_seconds[stage] = now - since
    return now


def _is_dask(X) -> bool:
    return dask.is_dask_collection(X)


def _workers(client) -> list[str]:
    workers = sorted(client.scheduler_info(n_workers=-1)["workers"]) if _takes_n_workers(client) else sorted(
        client.scheduler_info()["workers"]
    )
    if not workers:
        raise RuntimeError("the Dask cluster has no workers")
    return workers


def _takes_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def _block_futures(array) -> list:
    """Futures of the row blocks of a persisted dask array, in order."""
    by_key = {f.key: f for f in distributed.futures_of(array)}
    keys = array.__dask_keys__()
    flat = []
    for row in keys:
        flat.append(row[0] if isinstance(row, list) else row)
    return [by_key[k] for k in flat]


def _with_zero_iters(seeds: np.ndarray):
    return seeds, np.zeros(seeds.shape[0], dtype=np.int64)


def _sample_u(data: torch.Tensor, weights, est: MeanShift, offset: torch.Tensor):
    """Scaled axis coordinates of a sample of in-memory data (for the boundaries), centred like the fit.

    Points of zero weight are not seeds and carry no work: they are left out.
    """
    if weights is not None:
        data = data[weights > 0]
    idx = _sample_indices(data.shape[0], est.bandwidth_n_samples, est.random_state)
    return _sample_u_from(data if idx is None else data[torch.as_tensor(idx)], None, offset)


def _sample_indices(n: int, n_samples: int, random_state) -> np.ndarray | None:
    """Sorted indices of a uniform sample (without replacement) of ``n_samples`` of ``n`` rows.

    None when ``n <= n_samples``: the sample is all the rows.  The one
    sampling rule of the bandwidth and the boundaries, so both see the same
    points.
    """
    if n <= int(n_samples):
        return None
    return np.sort(np.random.default_rng(random_state).choice(n, int(n_samples), replace=False))


def _sample_u_from(sample: torch.Tensor, weights, offset: torch.Tensor):
    """``u_of(axis, scale)``: the sample's scaled coordinates along ``axis`` (zero-weight points left out)."""
    if weights is not None:
        sample = sample[weights > 0]

    def u_of(axis: int, scale: float) -> np.ndarray:
        return ((sample[:, axis] - offset[axis]) / torch.as_tensor(scale).to(sample.dtype)).double().numpy()

    return u_of
