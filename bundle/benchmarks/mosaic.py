"""mosaic: large images, region by region (``scripts/benchmark.py mosaic``).

A mosaic of n x n MoNuSeg tiles stands in for a slide. For each size it records, against the same tiles annotated one
by one in the same session:

* ``regions``: the mosaic through the workflow as a user runs it: larger than one region, so annotated region by
  region (``ArchetypeInferer.annotate_regions``): its cells, seconds per megapixel and peak resident memory;
* the count on the mosaic's joins apart: a nucleus cut by a tile's border is a half in the tile, read whole by the
  reflect padding, and in the mosaic it meets unrelated tissue; so cells are also counted at least ``JOIN_BAND`` px
  away from every tile border, in the tiles and in the mosaic alike;
* ``whole`` (the smallest size only): the same mosaic as one region, the reference of the seam check: per cell of the
  whole-image annotation, the IoU of its best match among the region-by-region cells. A nucleus on a region's seam
  that came out cut, twice or not at all would show as a low IoU or an unmatched cell.

* ``slides`` (``SLIDE_SIDES``): larger mosaics written as tiled TIFFs and given to the slide path (``bundle.slide``),
  which never holds the image or its label map: cells, seconds per megapixel annotating (the figure compared with the
  tiles, whose seconds leave their outputs out too), writing the cells as they come and in all (the label pyramid
  included), peak memory, and the count against the same tiles one by one (the tiles cycle, so the first tiles'
  counts stand for their repeats).

Every measurement runs in a fresh process, so that each peak resident memory is its own, after one untimed tile.
"""

from __future__ import annotations

import csv
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import DataError, list_dataset, read_image
from ..selftrain import best_overlap
from .protocol import ROOT, inference, machine

SIDES = (3, 6)
SLIDE_SIDES = (10, 20)
JOIN_BAND = 32  # px: half a patch


def away_from_joins(centroids: np.ndarray, tile_shape: tuple[int, int]) -> int:
    """How many centroids (N, 2) of a tile, or of a mosaic of such tiles, lie ``JOIN_BAND`` px or more inside their tile."""
    inside = np.asarray(centroids).reshape(-1, 2) % np.asarray(tile_shape)
    return int(((inside >= JOIN_BAND) & (inside < np.asarray(tile_shape) - JOIN_BAND)).all(1).sum())


def mosaic_of(images: list[torch.Tensor], side: int) -> torch.Tensor:
    """The first side x side images (C, H, W), cycled if fewer, cropped to the smallest H, W, as one (C, side H, side W)."""
    h = min(image.shape[1] for image in images)
    w = min(image.shape[2] for image in images)
    rows = [torch.cat([images[(r * side + c) % len(images)][:, :h, :w] for c in range(side)], 2) for r in range(side)]
    return torch.cat(rows, 1)


def _annotate(job: dict) -> dict:
    """In a fresh process: annotate ``job["images"]`` one by one (``tile`` px regions, None: the workflow's own), and
    report cells, seconds and the process' peak resident memory."""
    import bundle.inferer as inferer_module

    torch.set_num_threads(job["threads"])
    if job["tile"] is not None:
        inferer_module.TILE = job["tile"]
    inferer, network = inference(ROOT / "models" / "archetype_bank.pt", job["device"])
    inferer.setup()
    # one tile first, untimed: a fresh process' first call pays for kernel set-up and memory the later ones reuse
    inferer.annotate(job["warm_up"], network)
    out = {"cells": [], "centroids": [], "seconds": 0.0, "labels": None}
    for image in job["images"]:
        start = time.perf_counter()
        annotation = inferer.annotate(image, network)
        out["seconds"] += time.perf_counter() - start
        out["cells"].append(int(annotation.labels.max()))
        out["centroids"].append(np.stack([annotation.cells["centroid_row"], annotation.cells["centroid_col"]], 1))
        if job["keep_labels"]:
            out["labels"] = annotation.labels
    out["peak_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    return out


def mosaic_block(tiles: list[np.ndarray], side: int, top: int, left: int, size: int) -> np.ndarray:
    """Pixels [top, top + size) x [left, left + size) of the side x side mosaic of ``tiles`` (H, W, 3), cycled, as
    ``mosaic_of`` lays them out; zero past its edge."""
    h, w = tiles[0].shape[:2]
    block = np.zeros((size, size, 3), np.uint8)
    for r in range(top // h, min((top + size - 1) // h, side - 1) + 1):
        for c in range(left // w, min((left + size - 1) // w, side - 1) + 1):
            tile = tiles[(r * side + c) % len(tiles)]
            r0, r1 = max(top, r * h), min(top + size, (r + 1) * h)
            c0, c1 = max(left, c * w), min(left + size, (c + 1) * w)
            block[r0 - top : r1 - top, c0 - left : c1 - left] = tile[r0 - r * h : r1 - r * h, c0 - c * w : c1 - c * w]
    return block


def write_mosaic_tiff(images: list[torch.Tensor], side: int, path) -> tuple[int, int]:
    """``mosaic_of`` written as a tiled RGB TIFF (512 px tiles, uint8) tile by tile, never whole in memory; its (H, W)."""
    import tifffile

    h = min(image.shape[1] for image in images)
    w = min(image.shape[2] for image in images)
    tiles = [(image[:, :h, :w].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for image in images]
    size = 512

    def pieces():
        for top in range(0, side * h, size):
            for left in range(0, side * w, size):
                yield mosaic_block(tiles, side, top, left, size)

    tifffile.imwrite(path, pieces(), shape=(side * h, side * w, 3), dtype=np.uint8, photometric="rgb",
                     tile=(size, size), bigtiff=True)
    return side * h, side * w


def _annotate_slide(job: dict) -> dict:
    """In a fresh process: the slide path on ``job["path"]``, after one untimed tile; cells, centroids, seconds and
    the process' peak resident memory."""
    from ..slide import annotate_slide

    torch.set_num_threads(job["threads"])
    inferer, network = inference(ROOT / "models" / "archetype_bank.pt", job["device"])
    inferer.setup()
    inferer.annotate(job["warm_up"], network)
    summary = annotate_slide(inferer, network, job["path"], job["output_dir"])
    with open(summary["outputs"][2], newline="") as handle:  # the CSV
        centroids = np.array([[float(row["centroid_row"]), float(row["centroid_col"])] for row in csv.DictReader(handle)])
    return {"cells": summary["cells"], "seconds": summary["annotation_seconds"],
            "writing_seconds": summary["writing_seconds"], "total_seconds": summary["seconds"],
            "centroids": centroids.reshape(-1, 2),
            "peak_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def _in_fresh_process(job: dict, work=_annotate) -> dict:
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(work, (job,))


def run(data_dir, organ=None, split: str | None = "test", sides=SIDES, slide_sides=SLIDE_SIDES,
        device: str = "cpu") -> dict:
    """Every mosaic size against its tiles one by one, the seam check on the smallest, and the slide sizes."""
    samples = list_dataset(data_dir, split=split, organ=organ)
    if not samples:
        raise DataError(f"{data_dir}: no {split or ''} images{' of ' + organ if organ else ''} to build mosaics of")
    images = [read_image(s.image_path) for s in tqdm(samples, desc="reading tiles", unit="tile")]
    job = {"device": device, "threads": torch.get_num_threads(), "tile": None, "keep_labels": False,
           "warm_up": images[0]}
    largest = max(sides)
    h, w = min(i.shape[1] for i in images), min(i.shape[2] for i in images)
    tiles = [images[k % len(images)][:, :h, :w] for k in range(largest * largest)]
    one_by_one = _in_fresh_process({**job, "images": tiles})
    result = {"tiles": [s.image_id for s in samples], "tile_shape": [h, w], "device": device, "machine": machine(),
              "one_by_one": {"seconds_per_mp": one_by_one["seconds"] / (len(tiles) * h * w / 1e6),
                             "peak_gb": one_by_one["peak_gb"]},
              "sizes": []}
    for side in tqdm(sorted(sides), desc="mosaics", unit="mosaic"):
        image = mosaic_of(images, side)
        megapixels = image.shape[1] * image.shape[2] / 1e6
        expected = int(sum(one_by_one["cells"][: side * side]))
        regions = _in_fresh_process({**job, "images": [image], "keep_labels": side == min(sides)})
        row = {"side": side, "shape": list(image.shape[1:]), "tile_cells": expected, "cells": regions["cells"][0],
               "count_change_pct": 100 * (regions["cells"][0] - expected) / max(expected, 1),
               "seconds_per_mp": regions["seconds"] / megapixels, "peak_gb": regions["peak_gb"]}
        inner = away_from_joins(regions["centroids"][0], (h, w))
        inner_expected = sum(away_from_joins(c, (h, w)) for c in one_by_one["centroids"][: side * side])
        row.update({"cells_inside": inner, "tile_cells_inside": inner_expected,
                    "count_change_inside_pct": 100 * (inner - inner_expected) / max(inner_expected, 1)})
        row["time_ratio"] = row["seconds_per_mp"] / result["one_by_one"]["seconds_per_mp"]
        if side == min(sides):
            whole = _in_fresh_process({**job, "images": [image], "keep_labels": True, "tile": max(image.shape)})
            iou = best_overlap(whole["labels"], regions["labels"])
            back = best_overlap(regions["labels"], whole["labels"])
            row["whole"] = {"cells": whole["cells"][0], "seconds_per_mp": whole["seconds"] / megapixels,
                            "peak_gb": whole["peak_gb"], "same_cell_share": float((iou >= 0.99).mean()),
                            "iou_min": float(iou.min()) if len(iou) else float("nan"),
                            "unmatched_whole": int((iou < 0.5).sum()), "unmatched_regions": int((back < 0.5).sum())}
        result["sizes"].append(row)
    result["slides"] = []
    for side in tqdm(sorted(slide_sides), desc="slides", unit="slide"):
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / f"mosaic_{side}.tif"
            shape = write_mosaic_tiff(images, side, path)
            slide = _in_fresh_process({**job, "path": str(path), "output_dir": str(Path(folder) / "out")},
                                      _annotate_slide)
        megapixels = shape[0] * shape[1] / 1e6
        repeats = [k % len(images) for k in range(side * side)]
        expected = int(sum(one_by_one["cells"][k] for k in repeats))
        inner_expected = sum(away_from_joins(one_by_one["centroids"][k], (h, w)) for k in repeats)
        inner = away_from_joins(slide["centroids"], (h, w))
        result["slides"].append({
            "side": side, "shape": list(shape), "tile_cells": expected, "cells": slide["cells"],
            "count_change_pct": 100 * (slide["cells"] - expected) / max(expected, 1),
            "cells_inside": inner, "tile_cells_inside": inner_expected,
            "count_change_inside_pct": 100 * (inner - inner_expected) / max(inner_expected, 1),
            "seconds_per_mp": slide["seconds"] / megapixels, "peak_gb": slide["peak_gb"],
            "writing_seconds_per_mp": slide["writing_seconds"] / megapixels,
            "total_seconds_per_mp": slide["total_seconds"] / megapixels,
            "time_ratio": slide["seconds"] / megapixels / result["one_by_one"]["seconds_per_mp"]})
    return result


def print_summary(result: dict) -> None:
    base = result["one_by_one"]
    print(f"tiles one by one: {base['seconds_per_mp']:.2f} s/MP, peak {base['peak_gb']:.2f} GB")
    for row in result["sizes"] + result.get("slides", []):
        print(f"{row['shape'][0]} x {row['shape'][1]}: {row['cells']} cells against {row['tile_cells']} in its tiles "
              f"({row['count_change_pct']:+.2f} %), {row['seconds_per_mp']:.2f} s/MP ({row['time_ratio']:.2f}x), "
              f"peak {row['peak_gb']:.2f} GB; {JOIN_BAND} px or more from the tiles' joins {row['cells_inside']} against "
              f"{row['tile_cells_inside']} ({row['count_change_inside_pct']:+.2f} %)")
        if "whole" in row:
            w = row["whole"]
            print(f"  as one region: {w['cells']} cells, peak {w['peak_gb']:.2f} GB; per cell the same within IoU .99: "
                  f"{100 * w['same_cell_share']:.1f} %, lowest IoU {w['iou_min']:.3f}, unmatched "
                  f"{w['unmatched_whole']} / {w['unmatched_regions']}")
