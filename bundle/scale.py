"""scale: images are annotated at the bank's pixel size.

An archetype is a nucleus at the magnification of the images the bank was cut from (``meta["pixel_size_um"]`` of the
bank), and DiffeoMappingNet deforms shapes, it does not zoom them: a 20x image annotated with a 40x bank sees every
nucleus at half its archetypes' size. So an image whose pixel size is known (the file's, or the config's
``pixel_size``) is read at the bank's: a slide from the pyramid level that matches it (``reading_plan``), and any image
resampled when no level is within ``SAME_SCALE`` of it (``resample``). Outputs stay in the image's own pixels.
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

__all__ = ["SAME_SCALE", "reading_plan", "resample", "labels_at", "cells_at"]

# a pixel side within this fraction of the bank's is read as it is: scanners of one nominal magnification differ by a
# few percent, and the networks were trained on cells stretched by more (``bundle.augment``)
SAME_SCALE = 0.1


def reading_plan(level_shapes: list, pixel_size: float | None, bank_pixel_size: float | None) -> tuple[int, float]:
    """Which level of a pyramid to read, and the ``zoom`` (pixels read per level pixel) that brings it to the bank's
    pixel size: the coarsest level no coarser than the bank's scale (within ``SAME_SCALE``), so no detail the bank saw
    is lost; zoom 1 when that level is within ``SAME_SCALE`` of the bank's. ``level_shapes``: (H, W) of each level,
    full resolution first (one for a plain image); ``pixel_size``: level 0's pixel side (um). Either size unknown:
    level 0, as it is."""
    if pixel_size is None or bank_pixel_size is None:
        return 0, 1.0
    width = level_shapes[0][1]
    sizes = [pixel_size * width / shape[1] for shape in level_shapes]
    fine_enough = [k for k, size in enumerate(sizes) if size <= bank_pixel_size * (1 + SAME_SCALE)]
    level = max(fine_enough, key=lambda k: sizes[k]) if fine_enough else 0
    zoom = sizes[level] / bank_pixel_size
    return level, 1.0 if abs(zoom - 1) <= SAME_SCALE else zoom


def resample(read: Callable[[slice, slice], torch.Tensor], shape: tuple[int, int], zoom: float, rows: slice,
             cols: slice) -> torch.Tensor:
    """Pixels ``rows`` x ``cols`` (C, h, w) of an image (H, W) = ``shape`` zoomed by ``zoom``, read through
    ``read(rows, cols)`` -> (C, h', w') of the image: bilinear, after a Gaussian blur when reducing.

    Every pixel comes from the image's pixels around its centre alone (both grids put centres at +0.5), so a region
    reads as the same region of the whole image resampled: regions meet without seams."""
    from scipy.ndimage import gaussian_filter

    ys = (np.arange(rows.start, rows.stop) + 0.5) / zoom - 0.5
    xs = (np.arange(cols.start, cols.stop) + 0.5) / zoom - 0.5
    sigma = max(0.0, (1 / zoom - 1) / 2)  # a reduction's anti-aliasing, as skimage's rescale does
    pad = int(np.ceil(3 * sigma)) + 1  # the blur's edges never reach a sampled pixel, but at the image's own edges
    (h, w), r0, c0 = shape, max(int(ys[0]) - pad, 0), max(int(xs[0]) - pad, 0)
    r1, c1 = min(int(ys[-1]) + pad + 2, h), min(int(xs[-1]) + pad + 2, w)
    block = read(slice(r0, r1), slice(c0, c1)).float()
    if sigma > 0:
        block = torch.from_numpy(gaussian_filter(block.numpy(), (0, sigma, sigma), mode="nearest", truncate=3.0))
    gy = torch.from_numpy(np.clip(ys - r0, 0, r1 - r0 - 1) / max(r1 - r0 - 1, 1) * 2 - 1).float()
    gx = torch.from_numpy(np.clip(xs - c0, 0, c1 - c0 - 1) / max(c1 - c0 - 1, 1) * 2 - 1).float()
    grid = torch.stack(torch.meshgrid(gx, gy, indexing="xy"), -1)[None]  # (1, h, w, 2), x first
    return torch.nn.functional.grid_sample(block[None], grid, mode="bilinear", align_corners=True)[0].clamp(0, 1)


def labels_at(labels, rows: np.ndarray, cols: np.ndarray, scale: float) -> np.ndarray:
    """The labels (nearest: never a blend of two) under pixels ``rows`` x ``cols`` of a grid ``scale`` pixels a side
    per pixel of ``labels`` (an array, or a zarr array on disk): a label map read back at the image's own scale."""
    rows = np.minimum(((np.asarray(rows) + 0.5) / scale).astype(np.int64), labels.shape[0] - 1)
    cols = np.minimum(((np.asarray(cols) + 0.5) / scale).astype(np.int64), labels.shape[1] - 1)
    return np.asarray(labels.oindex[rows, cols] if hasattr(labels, "oindex") else labels[np.ix_(rows, cols)])


def cells_at(cells: dict, scale: float) -> dict:
    """A cell table (a list per column of ``stitch.CELL_COLUMNS``) in the pixels of a grid ``scale`` pixels a side
    per pixel it was measured in: centroids (pixel centres map to pixel centres) and areas."""
    if scale == 1:
        return cells
    moved = dict(cells)
    for key in ("centroid_row", "centroid_col"):
        moved[key] = [(v + 0.5) * scale - 0.5 for v in cells[key]]
    moved["area"] = [int(round(a * scale * scale)) for a in cells["area"]]
    return moved
