"""stitch: per-cell warped masks -> one whole-image instance label map.

Overlaps between warped masks are resolved deterministically: cells are placed in order of match confidence (highest
cosine similarity to their archetype first; ties by proposal index), and each takes only the pixels still free. A cell
left with less than ``min_keep`` of its own mask is the same nucleus found twice: it is recorded as a duplicate of the
cell that holds most of its pixels, never counted twice and never dropped silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


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
