#!/usr/bin/env python
"""Tune the label-free segmentation baselines on the *train* tiles of a dataset, then score them on its *test* tiles.

    python scripts/tune_baselines.py --data ../shared/data/monuseg --organs Kidney,Lung \\
        --json eval/baselines_tuning.json

Baselines (``bundle.baselines.segmentation``):

* LoG blobs (counting): grid over min_sigma x max_sigma (scales in steps of 1) x threshold x overlap; objective the
  mean over train tiles of the counting F1 (``metrics.counting_scores``: Hungarian matching within 12 px).
* Otsu + distance-transform watershed (segmentation): grid over smooth_sigma x otsu_scale x opening_radius x min_size
  x min_distance (distance_sigma fixed at 1); objective the mean over train tiles of the AJI
  (``metrics.aggregated_jaccard_index``).

The hematoxylin of each tile is computed once; for LoG the scale space of each tile is computed once for all the
scales of the grid, and the local maxima once per scale range, so thresholds and overlaps cost only a pruning and a
matching; for the watershed each foreground is computed once for all marker spacings. Train and test scores come from
the same public functions the bundle ships (the test scores go through ``log_blobs_with_radii`` / ``otsu_watershed``
on the image, and their time per tile, hematoxylin included, is reported).

The chosen parameters are the grid's best on the train tiles. The script says whether they are the module's defaults;
the test tiles never take part in the choice.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np
from skimage.feature import blob_log
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bundle.baselines import segmentation as seg  # noqa: E402
from bundle.data import list_dataset, load_sample  # noqa: E402
from bundle.detect import hematoxylin  # noqa: E402
from bundle.metrics import aggregated_jaccard_index, counting_scores  # noqa: E402
from bundle.patches import cell_centroids  # noqa: E402

LOG_GRID = {
    "min_sigma": [4, 6, 8, 9, 10],
    "max_sigma": [12, 16],
    "threshold": [0.06, 0.08, 0.1, 0.12, 0.15],
    "overlap": [0.1, 0.2, 0.3, 0.5],
}
WATERSHED_GRID = {
    "smooth_sigma": [1.0, 2.0],
    "otsu_scale": [0.9, 1.0, 1.1],
    "opening_radius": [1, 2],
    "min_size": [30, 100],
    "min_distance": [6, 8, 10],
}
WATERSHED_FIXED = {"distance_sigma": 1.0}


def parse_list(text: str, kind=float) -> list:
    return [kind(v) for v in text.split(",") if v.strip()]


def load_tiles(root, split: str, organ=None, desc: str = "") -> list[dict]:
    """Image, hematoxylin, labels and ground-truth centroids of every tile of a split (optionally one organ)."""
    tiles = []
    samples = list_dataset(root, split=split, organ=organ)
    for sample in tqdm(samples, desc=desc or f"reading {split} tiles", unit="tile"):
        image, labels = load_sample(sample)
        labels = np.asarray(labels, np.int32)
        tiles.append({"image_id": sample.image_id, "organ": sample.organ, "image": image, "stain": hematoxylin(image),
                      "labels": labels, "truth": cell_centroids(labels)[1]})
    if not tiles:
        raise SystemExit(f"{root}: no {split} tiles" + (f" of organ {organ}" if organ else ""))
    return tiles


def defaults_of(function) -> dict:
    return {k: p.default for k, p in inspect.signature(function).parameters.items() if p.default is not inspect._empty}


def grid_points(grid: dict) -> list[dict]:
    return [dict(zip(grid, values)) for values in itertools.product(*grid.values())]


# ---------------------------------------------------------------------------------------------------------------- LoG


def tune_log(tiles: list[dict], grid: dict) -> list[dict]:
    """Mean counting F1 (and P, R) over the tiles of every LoG grid point; best first."""
    ranges = [(lo, hi) for lo in grid["min_sigma"] for hi in grid["max_sigma"] if lo <= hi]
    all_sigmas = sorted({float(s) for lo, hi in ranges for s in seg.log_sigmas(lo, hi)})
    points = [{"min_sigma": lo, "max_sigma": hi, "threshold": t, "overlap": o}
              for lo, hi in ranges for t in grid["threshold"] for o in grid["overlap"]]
    scores = {i: [] for i in range(len(points))}
    for tile in tqdm(tiles, desc="LoG grid", unit="tile"):
        cube = seg.log_scale_space(tile["stain"], all_sigmas)  # every scale of the grid, once per tile
        index = {s: i for i, s in enumerate(all_sigmas)}
        candidates = {}
        for lo, hi in ranges:
            sigmas = seg.log_sigmas(lo, hi)
            candidates[lo, hi] = seg.blob_candidates(cube[[index[float(s)] for s in sigmas]], sigmas)
        del cube
        for i, p in enumerate(points):
            centres, _ = seg.select_blobs(*candidates[p["min_sigma"], p["max_sigma"]], threshold=p["threshold"],
                                          overlap=p["overlap"])
            scores[i].append(counting_scores(centres, tile["truth"]))
    rows = []
    for i, p in enumerate(points):
        rows.append({**p, **{k: float(np.mean([s[k] for s in scores[i]])) for k in ("precision", "recall", "f1")}})
    return sorted(rows, key=lambda r: -r["f1"])


# ---------------------------------------------------------------------------------------------------------- watershed


def tune_watershed(tiles: list[dict], grid: dict, fixed: dict) -> list[dict]:
    """Mean AJI over the tiles of every watershed grid point (with counting F1 of the instance centroids); best
    first."""
    fg_keys = ("smooth_sigma", "otsu_scale", "opening_radius", "min_size")
    fg_points = grid_points({k: grid[k] for k in fg_keys})
    scores: dict = {}
    for tile in tqdm(tiles, desc="watershed grid", unit="tile"):
        for fp in fg_points:
            foreground = seg.otsu_foreground(tile["stain"], **fp)
            for md in grid["min_distance"]:
                labels = seg.split_nuclei(foreground, min_distance=md, **fixed)
                key = tuple(fp.values()) + (md,)
                scores.setdefault(key, []).append(
                    (aggregated_jaccard_index(labels, tile["labels"]),
                     counting_scores(cell_centroids(labels)[1], tile["truth"])["f1"]))
    rows = []
    for key, values in scores.items():
        aji, f1 = np.mean(values, axis=0)
        rows.append({**dict(zip(fg_keys + ("min_distance",), key)), **fixed, "aji": float(aji), "count_f1": float(f1)})
    return sorted(rows, key=lambda r: -r["aji"])


# --------------------------------------------------------------------------------------------------------------- test


def mean_sd(values) -> dict:
    values = np.asarray(values, float)
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def fmt(stat: dict) -> str:
    return f"{stat['mean']:.3f} ± {stat['sd']:.3f}"


def score_test(tiles: list[dict], log_params: dict, ws_params: dict) -> dict:
    """Per-tile scores of both baselines run end to end on the image (hematoxylin included), and their times."""
    from bundle.metrics import boxes_from_centres, boxes_from_labels, counting_scores_paper_rule, segmentation_scores

    rows = []
    for tile in tqdm(tiles, desc="test tiles", unit="tile"):
        start = time.perf_counter()
        centres, radii = seg.log_blobs_with_radii(tile["image"], **log_params)
        log_seconds = time.perf_counter() - start
        start = time.perf_counter()
        labels = seg.otsu_watershed(tile["image"], **ws_params)
        ws_seconds = time.perf_counter() - start
        log_count = counting_scores(centres, tile["truth"])
        ws_count = counting_scores(cell_centroids(labels)[1], tile["truth"])
        truth_boxes = boxes_from_labels(tile["labels"])[1]
        rows.append({
            "image_id": tile["image_id"], "organ": tile["organ"], "n_truth": len(tile["truth"]),
            "log": {**{k: log_count[k] for k in ("precision", "recall", "f1")}, "n": len(centres),
                    "box_f1": counting_scores_paper_rule(boxes_from_centres(centres, radii), truth_boxes)["f1"],
                    "seconds": log_seconds},
            "watershed": {"count_f1": ws_count["f1"], "n": int(labels.max()), "seconds": ws_seconds,
                          **segmentation_scores(labels, tile["labels"])},
        })
    return rows


def summarise(rows: list[dict]) -> dict:
    log_keys = ("precision", "recall", "f1", "box_f1", "seconds")
    ws_keys = ("count_f1", "dice_obj", "iou_obj", "aji", "pq", "f1_pixel", "seconds")
    return {"tiles": len(rows),
            "log": {k: mean_sd([r["log"][k] for r in rows]) for k in log_keys},
            "watershed": {k: mean_sd([r["watershed"][k] for r in rows]) for k in ws_keys}}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True, help="dataset folder (train tiles tune, test tiles score)")
    ap.add_argument("--organs", default="Kidney,Lung", help="comma-separated organs whose test tiles are scored")
    ap.add_argument("--top", type=int, default=8, help="rows of each grid table")
    ap.add_argument("--min-sigma", default=None, help="LoG grid override, e.g. 6,8,10")
    ap.add_argument("--max-sigma", default=None, help="LoG grid override")
    ap.add_argument("--thresholds", default=None, help="LoG grid override")
    ap.add_argument("--overlaps", default=None, help="LoG grid override")
    ap.add_argument("--min-distance", default=None, help="watershed grid override, e.g. 6,8,10")
    ap.add_argument("--skip-log", action="store_true", help="no LoG grid: score the module defaults")
    ap.add_argument("--skip-watershed", action="store_true", help="no watershed grid: score the module defaults")
    ap.add_argument("--json", default=None, help="write grids, choice and test scores here")
    args = ap.parse_args(argv)

    log_grid, ws_grid = dict(LOG_GRID), dict(WATERSHED_GRID)
    for key, flag, kind in (("min_sigma", args.min_sigma, float), ("max_sigma", args.max_sigma, float),
                            ("threshold", args.thresholds, float), ("overlap", args.overlaps, float)):
        if flag:
            log_grid[key] = parse_list(flag, kind)
    if args.min_distance:
        ws_grid["min_distance"] = parse_list(args.min_distance, int)

    log_defaults = {k: v for k, v in defaults_of(seg.log_blobs_with_radii).items() if k != "num_sigma"}
    ws_defaults = defaults_of(seg.otsu_watershed)
    result = {"data": str(args.data), "log_grid": log_grid, "watershed_grid": {**ws_grid, **WATERSHED_FIXED}}
    started = time.perf_counter()

    train = load_tiles(args.data, "train") if not (args.skip_log and args.skip_watershed) else []
    if train:
        print(f"train tiles: {len(train)} ({', '.join(sorted({t['organ'] for t in train}))})")

    log_params, ws_params = dict(log_defaults), dict(ws_defaults)
    if not args.skip_log:
        t0 = time.perf_counter()
        rows = tune_log(train, log_grid)
        print(f"\nLoG grid: {len(rows)} points, objective mean counting F1 on train tiles "
              f"({time.perf_counter() - t0:.0f} s)")
        print(f"{'min_sigma':>9} {'max_sigma':>9} {'thresh':>6} {'overlap':>7} | {'P':>5} {'R':>5} {'F1':>5}")
        for r in rows[: args.top]:
            print(f"{r['min_sigma']:>9g} {r['max_sigma']:>9g} {r['threshold']:>6g} {r['overlap']:>7g} | "
                  f"{r['precision']:.3f} {r['recall']:.3f} {r['f1']:.3f}")
        log_params = {k: rows[0][k] for k in ("min_sigma", "max_sigma", "threshold", "overlap")}
        result["log_train"] = rows
        # the former baseline: skimage's blob_log with its old defaults, on the same stain
        old = {"min_sigma": 3.0, "max_sigma": 10.0, "num_sigma": 5, "threshold": 0.15}
        old_f1 = np.mean([counting_scores(blob_log(t["stain"], **old)[:, :2], t["truth"])["f1"] for t in train])
        print(f"former baseline skimage blob_log {old}: train F1 {old_f1:.3f}")
        result["log_former_train_f1"] = float(old_f1)
    if not args.skip_watershed:
        t0 = time.perf_counter()
        rows = tune_watershed(train, ws_grid, WATERSHED_FIXED)
        print(f"\nwatershed grid: {len(rows)} points, objective mean AJI on train tiles "
              f"(distance_sigma {WATERSHED_FIXED['distance_sigma']}; {time.perf_counter() - t0:.0f} s)")
        print(f"{'smooth':>6} {'otsu_x':>6} {'open':>4} {'min_size':>8} {'min_dist':>8} | {'AJI':>5} {'cntF1':>5}")
        for r in rows[: args.top]:
            print(f"{r['smooth_sigma']:>6g} {r['otsu_scale']:>6g} {r['opening_radius']:>4d} {r['min_size']:>8d} "
                  f"{r['min_distance']:>8d} | {r['aji']:.3f} {r['count_f1']:.3f}")
        ws_params = {k: rows[0][k] for k in ws_defaults}
        result["watershed_train"] = rows

    def same(a: dict, b: dict) -> bool:
        return all(np.isclose(float(a[k]), float(b[k])) for k in a)

    print(f"\nchosen LoG {log_params} ({'=' if same(log_params, log_defaults) else 'differs from'} module defaults)")
    print(f"chosen watershed {ws_params} ({'=' if same(ws_params, ws_defaults) else 'differs from'} module defaults)")
    result.update({"log_params": log_params, "watershed_params": ws_params,
                   "log_params_are_defaults": same(log_params, log_defaults),
                   "watershed_params_are_defaults": same(ws_params, ws_defaults)})
    del train

    result["test"] = {}
    for organ in parse_list(args.organs, str):
        tiles = load_tiles(args.data, "test", organ, desc=f"reading {organ} test tiles")
        rows = score_test(tiles, log_params, ws_params)
        summary = summarise(rows)
        result["test"][organ] = {"tiles": rows, "summary": summary}
        lg, ws = summary["log"], summary["watershed"]
        print(f"\n{organ} test, {len(rows)} tiles (mean ± sd over tiles)")
        for r in rows:
            print(f"  {r['image_id']}: truth {r['n_truth']}, LoG {r['log']['n']} F1 {r['log']['f1']:.3f}, "
                  f"watershed {r['watershed']['n']} AJI {r['watershed']['aji']:.3f}")
        print(f"  LoG        counting P {fmt(lg['precision'])}  R {fmt(lg['recall'])}  F1 {fmt(lg['f1'])}  "
              f"(box-IoU rule F1 {fmt(lg['box_f1'])})  {lg['seconds']['mean']:.2f} s/tile")
        print(f"  watershed  counting F1 {fmt(ws['count_f1'])}  dice_obj {fmt(ws['dice_obj'])}  aji {fmt(ws['aji'])}  "
              f"pq {fmt(ws['pq'])}  f1_pixel {fmt(ws['f1_pixel'])}  {ws['seconds']['mean']:.2f} s/tile")
    result["seconds"] = time.perf_counter() - started
    print(f"\ntotal {result['seconds']:.0f} s")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2, default=float))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
