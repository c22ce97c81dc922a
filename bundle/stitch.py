"""stitch: per-cell warped masks -> one whole-image instance label map and its per-cell table.

Overlaps between warped masks are resolved deterministically: cells are placed in order of match confidence (highest
cosine similarity to their archetype first; ties by proposal index), and each takes only the pixels still free. A cell
left with less than ``min_keep`` of its own mask is the same nucleus found twice: it is recorded as a duplicate of the
cell that holds most of its pixels, never counted twice and never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from skimage.measure import regionprops

from .patches import orientation_from_ramp, principal_angle

# the per-cell table of an annotation, one row per label (id = label value)
CELL_COLUMNS = ("id", "centroid_row", "centroid_col", "area", "orientation_deg", "match_distance", "archetype_id",
                "folded_pct", "uncertainty")
_INTEGER_COLUMNS = ("id", "area", "archetype_id")
# metadata key of a label map (MetaTensor) that carries its per-cell table: (N, len(CELL_COLUMNS)) float64, label order
CELLS_KEY = "cells"


@dataclass
class Stitched:
    """The stitched annotation of one image.

    labels: (H, W) int32 instance map, 0 = background, 1..N in placement order.
    kept: (N,) index into the per-cell inputs of each label (label i + 1 is cell ``kept[i]``).
    duplicates: {cell index: label it duplicates} for cells merged away; empty: cells whose warped mask was empty.
    """

    labels: np.ndarray
    kept: np.ndarray
    duplicates: dict = field(default_factory=dict)
    empty: list = field(default_factory=list)


def stitch(masks: torch.Tensor, centres: np.ndarray, shape: tuple[int, int], confidence: torch.Tensor,
           min_keep: float = 0.5, min_area: int = 10) -> Stitched:
    """Place masks (N, 1, P, P), each centred on ``centres`` (N, 2) (row, col) of an image of ``shape`` (H, W).

    ``confidence`` (N,) orders the placement; ``min_area`` pixels is the smallest mask counted as a cell.
    """
    h, w = shape
    p = masks.shape[-1]
    half = p // 2
    # padded by half a patch on each side so no cell needs clipping logic; the padding is marked -1 (not free)
    labels = np.full((h + p, w + p), -1, np.int32)
    labels[half : half + h, half : half + w] = 0
    binary = (masks[:, 0] > 0.5).cpu().numpy()
    tops = np.round(np.asarray(centres)).astype(int)  # top-left in padded coordinates = centre - half + half
    order = sorted(range(len(binary)), key=lambda i: (-float(confidence[i]), i))
    kept, duplicates, empty = [], {}, []
    for i in order:
        r, c = tops[i]
        window = labels[r : r + p, c : c + p]
        mask = binary[i] & (window >= 0)  # the part of the warped mask inside the image
        area = int(mask.sum())
        if area < min_area:
            empty.append(i)
            continue
        free = mask & (window == 0)
        if free.sum() < min_keep * area:
            owners = window[mask & (window > 0)]
            duplicates[i] = int(np.bincount(owners).argmax())
            continue
        kept.append(i)
        window[free] = len(kept)
    labels = labels[half : half + h, half : half + w]
    return Stitched(labels=np.ascontiguousarray(labels), kept=np.array(kept, dtype=np.int64), duplicates=duplicates,
                    empty=empty)


def cell_geometry(labels: np.ndarray, n: int) -> dict:
    """Id, area and centroid of labels 1..n of an instance map (H, W): one bincount per column, no loop over cells.
    A label left without pixels has no centroid (nan)."""
    flat = labels.ravel()
    rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
    area = np.bincount(flat, minlength=n + 1)[1 : n + 1]
    with np.errstate(invalid="ignore"):
        centroid_row = np.bincount(flat, rows, minlength=n + 1)[1 : n + 1] / area
        centroid_col = np.bincount(flat, cols, minlength=n + 1)[1 : n + 1] / area
    return {"id": list(range(1, n + 1)), "area": area.tolist(), "centroid_row": centroid_row.tolist(),
            "centroid_col": centroid_col.tolist()}


def cell_measurements(kept: np.ndarray, warped: dict, index: torch.Tensor, distance: torch.Tensor) -> dict:
    """What each kept cell (indices ``kept`` into the per-cell inputs) carries from its archetype: orientation, read
    from its warped ramp; match distance and archetype id; folding; ``uncertainty``, ``warped["uncertainty"]`` (how
    far the registered archetype is from the image's own evidence of the cell, ``bundle.inferer``), nan without it."""
    n = len(kept)
    kept_t = torch.as_tensor(kept, dtype=torch.long)
    if n:
        orientation = orientation_from_ramp(warped["ramp"][kept_t].cpu(), warped["mask"][kept_t].cpu())
    else:
        orientation = torch.zeros(0)
    return {"orientation_deg": orientation.tolist(), "match_distance": distance[kept_t].cpu().tolist(),
            "archetype_id": index[kept_t].cpu().tolist(), "folded_pct": warped["folded_pct"][kept_t].cpu().tolist(),
            "uncertainty": (warped["uncertainty"][kept_t].cpu().tolist() if "uncertainty" in warped
                            else [float("nan")] * n)}


def cell_table(labels: np.ndarray, kept: np.ndarray, warped: dict, index: torch.Tensor, distance: torch.Tensor) -> dict:
    """Per-cell table (``CELL_COLUMNS``) in label order (label i + 1 is cell ``kept[i]``): area and centroid from the
    stitched label map, so the table always agrees with it; the rest from ``cell_measurements``."""
    return {**cell_geometry(labels, len(kept)), **cell_measurements(kept, warped, index, distance)}


def regions(shape: tuple[int, int], tile: int, margin: int) -> list[tuple[tuple[int, int, int, int], tuple[int, int, int, int]]]:
    """The grid of a large image (H, W): per tile, its core (r0, r1, c0, c1), at most ``tile`` px a side, the cores
    covering the image without overlap, and its region: the core plus ``margin`` px of context each side, clipped to
    the image. A cell belongs to the tile whose core holds its centre, so no nucleus is counted twice or cut at a
    seam as long as the margin holds a whole nucleus and the cells it competes with for pixels."""
    h, w = shape
    out = []
    for r0 in range(0, h, tile):
        for c0 in range(0, w, tile):
            r1, c1 = min(r0 + tile, h), min(c0 + tile, w)
            out.append(((r0, r1, c0, c1),
                        (max(r0 - margin, 0), min(r1 + margin, h), max(c0 - margin, 0), min(c1 + margin, w))))
    return out


@dataclass
class Annotation:
    """One annotated image: ``labels`` (H, W) int32, 0 = background, and the per-cell table ``cells`` (a list per
    column of ``CELL_COLUMNS``, label order); ``seconds`` per stage, proposals made and duplicates merged."""

    labels: np.ndarray
    cells: dict
    seconds: dict = field(default_factory=dict)
    n_proposals: int = 0
    n_duplicates: int = 0


def with_corrections(annotation: Annotation, corrected: np.ndarray) -> Annotation:
    """The annotation with a user's own cells put in: ``corrected`` (H, W) holds them as instances, 0 elsewhere.

    A user's cell is the truth where it lies. A found cell that has half or more of its pixels under corrected cells
    is the same nucleus and is dropped; one that only touches them keeps its other pixels. Found cells keep their
    order and come first (ids 1..K), the corrected cells follow. Their rows: area, centroid and orientation measured
    from their masks, match distance 0, archetype id -1 (drawn by the user, not matched), folded 0, uncertainty 0.
    """
    labels, n = annotation.labels, int(annotation.labels.max())
    under = np.bincount(labels[corrected > 0], minlength=n + 1)
    area = np.bincount(labels.ravel(), minlength=n + 1)
    keep = np.flatnonzero((under < 0.5 * area) & (area > 0))
    keep = keep[keep > 0]
    renumber = np.zeros(n + 1, np.int32)
    renumber[keep] = np.arange(1, len(keep) + 1)
    merged = np.where(corrected > 0, 0, renumber[labels])
    drawn = regionprops(corrected.astype(np.int32))
    for new_id, region in enumerate(drawn, start=len(keep) + 1):
        r0, c0, r1, c1 = region.bbox
        merged[r0:r1, c0:c1][region.image] = new_id
    cells = {k: [annotation.cells[k][i - 1] for i in keep] for k in CELL_COLUMNS}
    masks = [torch.from_numpy(region.image.astype(np.float32))[None, None] for region in drawn]
    for region, mask in zip(drawn, masks):
        cells["orientation_deg"].append(float(principal_angle(mask)[0]))
        cells["match_distance"].append(0.0)
        cells["archetype_id"].append(-1)
        cells["folded_pct"].append(0.0)
        cells["uncertainty"].append(0.0)
    # areas and centroids from the merged map: a found cell may have lost pixels to a corrected one
    cells.update(cell_geometry(merged, len(keep) + len(drawn)))
    return Annotation(merged, cells, annotation.seconds, annotation.n_proposals, annotation.n_duplicates)


def cells_to_tensor(cells: dict) -> torch.Tensor:
    """A per-cell table (a list per column of ``CELL_COLUMNS``) as one tensor (N, len(CELL_COLUMNS)) float64: the form
    it travels in with the label map, through MONAI's collation and decollation."""
    return torch.tensor([cells[k] for k in CELL_COLUMNS], dtype=torch.float64).reshape(len(CELL_COLUMNS), -1).T


def cells_from_tensor(table: torch.Tensor) -> dict:
    """The inverse of ``cells_to_tensor``: ids, areas and archetype ids come back as integers."""
    columns = torch.as_tensor(table).reshape(-1, len(CELL_COLUMNS)).T.tolist()
    return {k: [int(v) for v in column] if k in _INTEGER_COLUMNS else column for k, column in zip(CELL_COLUMNS, columns)}
