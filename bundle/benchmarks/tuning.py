"""tuning: where the label-free baselines' defaults come from (``scripts/benchmark.py tune-baselines``).

Each baseline's parameters are the best point of a grid on the **train** tiles of a dataset folder (all organs); the
test tiles never take part (the whole-image benchmark scores the baselines there).

* LoG blobs (counting): min_sigma x max_sigma (scales in steps of 1) x threshold x overlap; objective the mean
  counting F1 over the train tiles (``metrics.counting_scores``: Hungarian matching within 12 px).
* Otsu + distance-transform watershed (segmentation): smooth_sigma x otsu_scale x opening_radius x min_size x
  min_distance (distance_sigma fixed at 1); objective the mean AJI over the train tiles.

The hematoxylin of each tile is computed once; for LoG the scale space of each tile once for all the scales of the
grid, and the local maxima once per scale range; for the watershed each foreground once for all marker spacings. The
result says whether the chosen points are the module's defaults (``baselines.segmentation``).
"""

from __future__ import annotations

import inspect
import itertools

import numpy as np
from tqdm.auto import tqdm

from ..data import DataError, list_dataset, load_sample
from ..detect import hematoxylin
from ..patches import cell_centroids
from .baselines import segmentation as seg
from .metrics import aggregated_jaccard_index, counting_scores
from .protocol import machine

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


def train_tiles(root) -> list[dict]:
    """Hematoxylin, labels and ground-truth centroids of every train tile."""
    tiles = []
    for sample in tqdm(list_dataset(root, split="train"), desc="reading train tiles", unit="tile"):
        image, labels = load_sample(sample)
        labels = np.asarray(labels, np.int32)
        tiles.append({"image_id": sample.image_id, "organ": sample.organ, "stain": hematoxylin(image),
                      "labels": labels, "truth": cell_centroids(labels)[1]})
    if not tiles:
        raise DataError(f"{root}: no train tiles")
    return tiles


def defaults_of(function) -> dict:
    return {k: p.default for k, p in inspect.signature(function).parameters.items() if p.default is not inspect._empty}


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
    rows = [{**p, **{k: float(np.mean([s[k] for s in scores[i]])) for k in ("precision", "recall", "f1")}}
            for i, p in enumerate(points)]
    return sorted(rows, key=lambda r: -r["f1"])


def tune_watershed(tiles: list[dict], grid: dict, fixed: dict) -> list[dict]:
    """Mean AJI over the tiles of every watershed grid point (with counting F1 of the instance centroids); best
    first."""
    fg_keys = ("smooth_sigma", "otsu_scale", "opening_radius", "min_size")
    fg_points = [dict(zip(fg_keys, values)) for values in itertools.product(*(grid[k] for k in fg_keys))]
    scores: dict = {}
    for tile in tqdm(tiles, desc="watershed grid", unit="tile"):
        for fp in fg_points:
            foreground = seg.otsu_foreground(tile["stain"], **fp)
            for md in grid["min_distance"]:
                labels = seg.split_nuclei(foreground, min_distance=md, **fixed)
                scores.setdefault(tuple(fp.values()) + (md,), []).append(
                    (aggregated_jaccard_index(labels, tile["labels"]),
                     counting_scores(cell_centroids(labels)[1], tile["truth"])["f1"]))
    rows = []
    for key, values in scores.items():
        aji, f1 = np.mean(values, axis=0)
        rows.append({**dict(zip(fg_keys + ("min_distance",), key)), **fixed, "aji": float(aji), "count_f1": float(f1)})
    return sorted(rows, key=lambda r: -r["aji"])


def run(data_dir) -> dict:
    """Both grids on the train tiles; the chosen points and whether they are the module's defaults."""
    tiles = train_tiles(data_dir)
    log_rows = tune_log(tiles, LOG_GRID)
    watershed_rows = tune_watershed(tiles, WATERSHED_GRID, WATERSHED_FIXED)
    log_defaults = {k: v for k, v in defaults_of(seg.log_blobs_with_radii).items() if k != "num_sigma"}
    watershed_defaults = defaults_of(seg.otsu_watershed)
    log_best = {k: log_rows[0][k] for k in log_defaults}
    watershed_best = {k: watershed_rows[0][k] for k in watershed_defaults}

    def same(a: dict, b: dict) -> bool:
        return all(np.isclose(float(a[k]), float(b[k])) for k in a)

    return {"train_tiles": [t["image_id"] for t in tiles], "log_grid": LOG_GRID,
            "watershed_grid": {**WATERSHED_GRID, **WATERSHED_FIXED}, "log_train": log_rows,
            "watershed_train": watershed_rows, "log_params": log_best, "watershed_params": watershed_best,
            "log_params_are_defaults": same(log_best, log_defaults),
            "watershed_params_are_defaults": same(watershed_best, watershed_defaults), "machine": machine()}


def print_summary(result: dict, top: int = 5) -> None:
    print(f"\nLoG grid, mean counting F1 on {len(result['train_tiles'])} train tiles (best first):")
    for r in result["log_train"][:top]:
        print(f"  {r['min_sigma']:g}-{r['max_sigma']:g} threshold {r['threshold']:g} overlap {r['overlap']:g}: "
              f"P {r['precision']:.3f} R {r['recall']:.3f} F1 {r['f1']:.3f}")
    print("watershed grid, mean AJI on the train tiles (best first):")
    for r in result["watershed_train"][:top]:
        print(f"  smooth {r['smooth_sigma']:g} otsu x{r['otsu_scale']:g} opening {r['opening_radius']} min_size "
              f"{r['min_size']} spacing {r['min_distance']}: AJI {r['aji']:.3f} (count F1 {r['count_f1']:.3f})")
    for name in ("log", "watershed"):
        verdict = "are" if result[f"{name}_params_are_defaults"] else "are NOT"
        print(f"chosen {name} {result[f'{name}_params']}: {verdict} the defaults of baselines.segmentation")
