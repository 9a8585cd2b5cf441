"""Command line: ``python -m examples.nodule_candidates {make-phantoms,detect,evaluate,train,demo}``.

Run from the repository root.  ``train`` refits the shipped candidate
scorers (``nodule_model.json``, ``nodule_rerank.json``) on phantom sets with other seeds than any
evaluation set::

    python -m examples.nodule_candidates make-phantoms /tmp/train192 --n 20 --shape 192 192 96 --seed 100
    python -m examples.nodule_candidates make-phantoms /tmp/train192b --n 20 --shape 192 192 96 --seed 102
    python -m examples.nodule_candidates make-phantoms /tmp/train256 --n 10 --shape 256 256 128 --seed 101
    python -m examples.nodule_candidates make-phantoms /tmp/train103 --n 20 --shape 192 192 96 --seed 103
    python -m examples.nodule_candidates make-phantoms /tmp/train104 --n 20 --shape 192 192 96 --seed 104
    python -m examples.nodule_candidates make-phantoms /tmp/train105 --n 20 --shape 192 192 96 --seed 105
    python -m examples.nodule_candidates make-phantoms /tmp/train106 --n 20 --shape 192 192 96 --seed 106
    python -m examples.nodule_candidates make-phantoms /tmp/train107 --n 20 --shape 192 192 96 --seed 107
    python -m examples.nodule_candidates make-phantoms /tmp/train108 --n 10 --shape 192 192 96 --seed 108
    python -m examples.nodule_candidates train /tmp/train192 /tmp/train192b /tmp/train256 /tmp/train103 \\
        /tmp/train104 /tmp/train105 /tmp/train106 /tmp/train107 /tmp/train108 --jobs 2 --cv

``demo`` does everything on three phantoms of the size the shipped models
were trained on (about 20 s on two CPU cores)::

    python -m examples.nodule_candidates demo --out example_output/nodules

The same steps one by one, on LUNA16 data or on phantoms::

    python -m examples.nodule_candidates make-phantoms data/phantoms --n 10
    python -m examples.nodule_candidates detect data/phantoms --out cands.csv
    python -m examples.nodule_candidates evaluate cands.csv data/phantoms/nodule_types.csv \\
        --excluded data/phantoms/annotations_excluded.csv --min-diameter 5 --plot froc.png
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from dataclasses import fields
from pathlib import Path

import numpy as np

from .detect import STAGES, DetectorConfig, detect_candidates
from .evaluate import evaluate, plot_froc
from .io import list_scans, read_annotations, read_candidates, read_scan, read_series_list, write_candidates
from .phantom import write_phantom_set


def _config_from(args) -> DetectorConfig:
    names = {f.name for f in fields(DetectorConfig)}
    values = {k: v for k, v in vars(args).items() if k in names and v is not None}
    if values.get("tile_mm") == 0:
        values["tile_mm"] = None
    return DetectorConfig(**values)


def cmd_make_phantoms(args) -> int:
    t0 = time.perf_counter()

    def progress(i, phantom):
        print(f"  scan {i + 1}/{args.n}: {phantom.scan.seriesuid} {len(phantom.nodules)} nodules", flush=True)

    write_phantom_set(args.out, args.n, shape_xyz=tuple(args.shape), seed=args.seed, progress=progress)
    print(f"wrote {args.n} scans and annotations to {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


def detect_folder(folder: Path, out: Path, config: DetectorConfig, timings_out: Path | None = None, quiet=False):
    """Detect candidates in every ``.mhd`` of ``folder``; write the CSV (and per-scan timings)."""
    scans = list_scans(folder)
    if not scans:
        raise SystemExit(f"no .mhd scans in {folder}")
    rows, timing_rows, skipped = [], [], []
    for i, path in enumerate(scans):
        t0 = time.perf_counter()
        try:
            scan = read_scan(path)
            load = time.perf_counter() - t0
            det = detect_candidates(scan, config)
        except (OSError, ValueError, RuntimeError) as exc:
            # A bad scan is reported and skipped; the others' candidates are still written.
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"  [{i + 1}/{len(scans)}] skipped {path.name}: {reason}", file=sys.stderr, flush=True)
            skipped.append((path, reason))
            continue
        total = time.perf_counter() - t0
        rows += det.candidates
        timing_rows.append(
            {"seriesuid": scan.seriesuid, "shape_zyx": "x".join(map(str, scan.array.shape)), "load": load,
             **{s: det.timings.get(s, 0.0) for s in STAGES}, "total": total,
             "n_points": det.n_points, "n_clusters": det.n_clusters, "n_candidates": len(det.candidates)}
        )  # fmt: skip
        if not quiet:
            stages = " ".join(f"{s} {det.timings.get(s, 0.0):.1f}" for s in STAGES)
            print(
                f"  [{i + 1}/{len(scans)}] {scan.seriesuid}: {len(det.candidates)} candidates from "
                f"{det.n_clusters} clusters of {det.n_points} voxels; {total:.1f} s ({stages})",
                flush=True,
            )
    if len(skipped) == len(scans):
        raise SystemExit(f"error: none of the {len(scans)} scans in {folder} could be read; "
                         f"first problem: {skipped[0][0].name}: {skipped[0][1]}")
    write_candidates(out, rows)
    if timings_out is not None:
        with Path(timings_out).open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(timing_rows[0]))
            writer.writeheader()
            for row in timing_rows:
                writer.writerow({k: f"{v:.3f}" if isinstance(v, float) else v for k, v in row.items()})
    return rows, timing_rows, skipped


def cmd_detect(args) -> int:
    config = _config_from(args)
    out = Path(args.out)
    timings = out.with_name(out.stem + "_timings.csv")
    rows, timing_rows, skipped = detect_folder(Path(args.scans), out, config, timings)
    mean = {s: np.mean([r[s] for r in timing_rows]) for s in ("load", *STAGES, "total")}
    print(f"wrote {len(rows)} candidates to {out} (timings in {timings})")
    print("mean seconds per scan: " + ", ".join(f"{k} {v:.2f}" for k, v in mean.items()))
    if skipped:
        print(f"{len(skipped)} of {len(skipped) + len(timing_rows)} scans skipped (listed above)", file=sys.stderr)
        return 1
    return 0


def cmd_evaluate(args) -> int:
    candidates = read_candidates(args.candidates)
    nodules = read_annotations(args.annotations)
    excluded = read_annotations(args.excluded) if args.excluded else []
    series = read_series_list(args.series) if args.series else None
    ev = evaluate(candidates, nodules, series, excluded=excluded, min_diameter_mm=args.min_diameter)
    print(ev.summary())
    if args.plot:
        label = f"nodules >= {args.min_diameter:g} mm" if args.min_diameter else "all nodules"
        print(f"FROC plot: {plot_froc({label: ev}, args.plot)}")
    return 0


def cmd_train(args) -> int:
    from .classifier import (RERANK_TOP_M, TYPE_WEIGHTS, cross_validate, fit_model, fit_reranker,
                             out_of_fold_scores, rerank_table, training_table)  # fmt: skip

    config = _config_from(args)
    t0 = time.perf_counter()

    def progress(line):
        print("  " + line, flush=True)

    table = training_table(args.folders, config, progress=progress, jobs=args.jobs)
    meta = {"folders": [Path(f).name for f in args.folders], "n_scans": int(table["scan"].max()) + 1,
            "type_weights": TYPE_WEIGHTS}  # fmt: skip
    model = fit_model(table["F"], table["y"], table["w"], meta)
    path = model.save(args.out)
    print(f"first stage: {meta['n_scans']} scans, {len(table['y'])} clusters ({int(table['y'].sum())} on nodules) "
          f"in {time.perf_counter() - t0:.1f} s; wrote {path} ({path.stat().st_size // 1024} KB)",
          flush=True)  # fmt: skip
    if args.rerank_out is None:
        return 0
    # Second stage: trained on the first stage's out-of-fold ranking, which
    # is what it will see on new scans.
    t1 = time.perf_counter()
    raw = out_of_fold_scores(table)
    print(f"out-of-fold first-stage scores (5 folds) in {time.perf_counter() - t1:.1f} s", flush=True)
    rows = rerank_table(table, raw, RERANK_TOP_M, working_mm=config.working_mm, progress=progress)
    if args.cv:
        for label, ev in cross_validate(table, raw, rows, config).items():
            print(f"-- cross-validation (5 folds by scan), {label}\n{ev.summary()}", flush=True)
    second = fit_reranker(rows["F"], rows["y"], rows["w"], {**meta, "folds": 5, "neg_keep": 0.25}, RERANK_TOP_M)
    path = second.save(args.rerank_out)
    print(f"second stage: {len(rows['y'])} rows ({int(rows['y'].sum())} on nodules); total "
          f"{time.perf_counter() - t0:.1f} s; wrote {path} ({path.stat().st_size // 1024} KB)")  # fmt: skip
    return 0


def cmd_demo(args) -> int:
    out = Path(args.out)
    data = out / "phantoms"
    print(f"1. {args.n} phantoms {tuple(args.shape)} -> {data}")
    write_phantom_set(data, args.n, shape_xyz=tuple(args.shape), seed=args.seed)
    print("2. detecting candidates")
    config = DetectorConfig(device=args.device)
    rows, _, _ = detect_folder(data, out / "candidates.csv", config, out / "timings.csv")
    print("3. evaluating")
    nodules = read_annotations(data / "nodule_types.csv")
    excluded = read_annotations(data / "annotations_excluded.csv")
    series = read_series_list(data / "seriesuids.csv")
    results = {
        "all nodules": evaluate(rows, nodules, series, excluded=excluded),
        "nodules >= 5 mm": evaluate(rows, nodules, series, excluded=excluded, min_diameter_mm=5.0),
    }
    for label, ev in results.items():
        print(f"-- {label}\n{ev.summary()}")
    print(f"FROC plot: {plot_froc(results, out / 'froc.png', title='Nodule candidates on phantoms')}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m examples.nodule_candidates",
        description="Lung-nodule candidates by 5-D mean shift (x, y, z, HU, shape index), scored like LUNA16.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("make-phantoms", help="write synthetic chest CTs in LUNA16 format")
    p.add_argument("out", type=Path, help="destination folder")
    p.add_argument("--n", type=int, default=10, help="number of scans (default 10)")
    p.add_argument("--shape", type=int, nargs=3, default=(256, 256, 128), metavar=("X", "Y", "Z"))
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_make_phantoms)

    p = sub.add_parser("detect", help="candidates for every .mhd scan of a folder")
    p.add_argument("scans", type=Path, help="folder of .mhd/.raw scans")
    p.add_argument("--out", type=Path, default=Path("candidates.csv"))
    p.add_argument("--device", default=None, help='"cpu", "cuda" or "auto" (default)')
    p.add_argument("--max-candidates", dest="max_candidates", type=int, default=None)
    p.add_argument("--max-points", dest="max_points", type=int, default=None)
    p.add_argument("--sigma-mm", dest="sigma_mm", type=float, default=None)
    p.add_argument("--working-mm", dest="working_mm", type=float, default=None)
    p.add_argument("--bandwidth-mm", dest="bandwidth_mm", type=float, default=None)
    p.add_argument("--bandwidth-hu", dest="bandwidth_hu", type=float, default=None)
    p.add_argument("--bandwidth-si", dest="bandwidth_si", type=float, default=None)
    p.add_argument("--tile-mm", dest="tile_mm", type=float, default=None, help="0: one fit for the whole scan")
    p.add_argument("--voi-hu", dest="voi_hu", type=float, default=None)
    p.add_argument("--min-bin-freq", dest="min_bin_freq", type=int, default=None)
    p.add_argument("--nms-mm", dest="nms_mm", type=float, default=None)
    p.add_argument("--nms-large-mm", dest="nms_large_mm", type=float, default=None, help="0: off")
    p.add_argument("--refine-mm", dest="refine_mm", type=float, default=None,
                   help="how far a candidate may climb to the nearest bright peak (0: off)")
    p.set_defaults(func=cmd_detect)

    p = sub.add_parser("evaluate", help="LUNA16 FROC/CPM of a candidates CSV")
    p.add_argument("candidates", type=Path)
    p.add_argument("annotations", type=Path, help="annotations.csv (a 'type' column is used if present)")
    p.add_argument("--excluded", type=Path, default=None, help="annotations_excluded.csv")
    p.add_argument("--series", type=Path, default=None, help="one-column list of the scans evaluated")
    p.add_argument("--min-diameter", type=float, default=0.0, help="score only nodules at least this large (mm)")
    p.add_argument("--plot", type=Path, default=None, help="write the FROC curve to this PNG")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("train", help="fit the candidate scorer on phantom sets (never the evaluation set)")
    p.add_argument("folders", type=Path, nargs="+", help="phantom sets written by make-phantoms")
    p.add_argument("--out", type=Path, default=Path(__file__).with_name("nodule_model.json"))
    p.add_argument("--rerank-out", dest="rerank_out", type=Path, default=Path(__file__).with_name("nodule_rerank.json"),
                   help="second-stage model (default: nodule_rerank.json next to the first)")
    p.add_argument("--device", default=None, help='"cpu", "cuda" or "auto" (default)')
    p.add_argument("--jobs", type=int, default=1, help="scans detected at once in worker processes (default 1)")
    p.add_argument("--cv", action="store_true",
                   help="also report the cross-validated candidates (held-out scans, both stages) LUNA16 style")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("demo", help="phantoms -> candidates -> FROC, end to end")
    p.add_argument("--out", type=Path, default=Path("example_output/nodule_candidates"))
    p.add_argument("--n", type=int, default=3)
    # The shipped models were trained at 192 x 192 x 96 (1.7-1.9 mm in-plane); at 128 x 128 x 64 a
    # 5-10 mm nodule is two or three voxels across and most of them are lost.
    p.add_argument("--shape", type=int, nargs=3, default=(192, 192, 96), metavar=("X", "Y", "Z"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv=None) -> int:
    """Entry point of ``python -m examples.nodule_candidates``."""
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
