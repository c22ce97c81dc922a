"""segmentation baselines: label-free classical nucleus counting and segmentation on the hematoxylin stain.

Two baselines, both working on the hematoxylin channel of ``bundle.detect.hematoxylin`` (colour deconvolution, scaled
to [0, 1] by its 0.5 / 99.5 percentiles, nuclei bright):

* :func:`log_blobs` / :func:`log_blobs_with_radii` -- counting by Laplacian-of-Gaussian blobs. The stain is filtered by
  the scale-normalised LoG ``-sigma^2 * LoG_sigma`` at sigma = ``min_sigma .. max_sigma`` (steps of 1 by default);
  the local maxima of that scale space (3 x 3 x 3 neighbourhood, over position and scale) above ``threshold`` are the
  blobs, of radius ``sigma * sqrt(2)``. Blobs are then taken strongest first and one is dropped when more than
  ``overlap`` of the smaller of it and an already kept blob lies in their intersection (greedy non-maximum
  suppression). The same construction as ``skimage.feature.blob_log``, except that pruning keeps the strongest rather
  than the largest blob and does not depend on the order of the pairs; the stages are separate functions so that a
  parameter search can reuse the scale space.
* :func:`otsu_watershed` -- instance segmentation: the stain is smoothed (Gaussian ``smooth_sigma``), thresholded at
  ``otsu_scale`` x its Otsu threshold, opened by a disk of ``opening_radius``, holes filled, pieces smaller than
  ``min_size`` pixels dropped; the foreground is split by a watershed of the (Gaussian ``distance_sigma``-smoothed)
  distance transform from markers at its local maxima at least ``min_distance`` px apart within each piece.

Neither sees an annotation at run time. Their defaults are the best points of grids on the *train* tiles, never on
the test tiles they are scored on (``bundle.benchmarks.tuning``; the grids, the chosen points and whether they still
are these defaults: ``eval/baseline_tuning.json``). The LoG scale space starts at a sigma close to MoNuSeg's nuclei
so that each nucleus integrates into one blob: an earlier baseline that started at sigma 3 fired on chromatin texture
and nucleoli inside nuclei, often several times per nucleus. The blobs' radii are therefore coarse, often larger than
the nucleus; the box-IoU counting rule (IoU >= 0.1) is lenient enough for that.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from ...detect import otsu_foreground, split_nuclei, stain_of

SQRT2 = math.sqrt(2.0)

__all__ = [
    "log_blobs",
    "log_blobs_with_radii",
    "otsu_watershed",
]


def log_sigmas(min_sigma: float, max_sigma: float, num_sigma: int | None = None) -> np.ndarray:
    """The scales of the LoG scale space: ``min_sigma`` to ``max_sigma`` in steps of 1 (``num_sigma`` None), or
    ``num_sigma`` evenly spaced scales."""
    if not 0 < min_sigma <= max_sigma:
        raise ValueError(f"need 0 < min_sigma <= max_sigma, got {min_sigma}, {max_sigma}")
    if num_sigma is None:
        num_sigma = int(math.floor(max_sigma - min_sigma + 1e-9)) + 1
    if num_sigma < 1:
        raise ValueError(f"num_sigma must be >= 1, got {num_sigma}")
    return np.linspace(min_sigma, max_sigma, num_sigma) if num_sigma > 1 else np.array([float(min_sigma)])


def log_scale_space(stain: np.ndarray, sigmas) -> np.ndarray:
    """Scale-normalised negative Laplacian of Gaussian (S, H, W) float32: ``-sigma^2 * LoG_sigma(stain)`` per scale.

    A bright disk of radius r gives its strongest positive response at its centre at sigma = r / sqrt(2).
    """
    stain = np.asarray(stain, np.float32)
    return np.stack([-(s * s) * ndimage.gaussian_laplace(stain, float(s)) for s in sigmas]).astype(np.float32)


def blob_candidates(cube: np.ndarray, sigmas) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The local maxima of a scale space (S, H, W) over position and scale (3 x 3 x 3) with a positive response.

    Returns centres (N, 2) float32 (row, col), their sigmas (N,) and responses (N,), strongest first. Thresholding
    these at t gives exactly the maxima above t, so a threshold search needs this only once.
    """
    sigmas = np.asarray(sigmas, np.float32)
    peaks = (cube == ndimage.maximum_filter(cube, size=3, mode="nearest")) & (cube > 0)
    scale, row, col = np.nonzero(peaks)
    response = cube[scale, row, col]
    order = np.argsort(-response, kind="stable")
    centres = np.stack([row, col], 1)[order].astype(np.float32).reshape(-1, 2)
    return centres, sigmas[scale[order]], response[order].astype(np.float32)


def circle_overlap(distance, r1, r2) -> np.ndarray:
    """Area of the intersection of circles of radii r1 and r2 whose centres are ``distance`` apart, as a fraction of
    the smaller circle's area (arrays broadcast)."""
    d, r1, r2 = np.broadcast_arrays(*(np.asarray(x, float) for x in (distance, r1, r2)))
    small, large = np.minimum(r1, r2), np.maximum(r1, r2)
    out = np.zeros(d.shape)
    inside = d <= large - small
    out[inside & (small > 0)] = 1.0
    lens = ~inside & (d < small + large)
    if lens.any():
        d, a, b = d[lens], small[lens], large[lens]
        # area of the lens of two intersecting circles
        half_a = np.arccos(np.clip((d ** 2 + a ** 2 - b ** 2) / (2 * d * a), -1, 1))
        half_b = np.arccos(np.clip((d ** 2 + b ** 2 - a ** 2) / (2 * d * b), -1, 1))
        kite = 0.5 * np.sqrt(np.clip((-d + a + b) * (d + a - b) * (d - a + b) * (d + a + b), 0, None))
        out[lens] = (a ** 2 * half_a + b ** 2 * half_b - kite) / (math.pi * a ** 2)
    return out


def prune_overlapping(centres: np.ndarray, radii: np.ndarray, overlap: float) -> np.ndarray:
    """Greedy non-maximum suppression of circles given strongest first: indices (K,) of the kept ones.

    Circle k is dropped when more than ``overlap`` of the smaller of it and some stronger *kept* circle lies in their
    intersection (``circle_overlap``).
    """
    n = len(centres)
    if n < 2:
        return np.arange(n)
    pairs = cKDTree(centres).query_pairs(2 * float(np.max(radii)), output_type="ndarray")
    if len(pairs) == 0:
        return np.arange(n)
    stronger, weaker = pairs.min(1), pairs.max(1)
    gap = np.linalg.norm(centres[stronger] - centres[weaker], axis=1)
    clash = circle_overlap(gap, radii[stronger], radii[weaker]) > overlap
    stronger, weaker = stronger[clash], weaker[clash]
    order = np.argsort(stronger, kind="stable")
    stronger, weaker = stronger[order], weaker[order]
    bounds = np.searchsorted(stronger, np.arange(n + 1))
    alive = np.ones(n, bool)
    for k in np.unique(stronger):  # in order of strength: a blob suppresses only while it is itself kept
        if alive[k]:
            alive[weaker[bounds[k]:bounds[k + 1]]] = False
    return np.flatnonzero(alive)


def select_blobs(centres: np.ndarray, sigmas: np.ndarray, responses: np.ndarray, threshold: float,
                 overlap: float) -> tuple[np.ndarray, np.ndarray]:
    """From ``blob_candidates``: those above ``threshold``, pruned at ``overlap``; centres (N, 2) float32 and radii
    (N,) float32 (sigma * sqrt(2))."""
    strong = responses > threshold
    centres, radii = centres[strong], sigmas[strong] * SQRT2
    keep = prune_overlapping(centres, radii, overlap)
    return centres[keep].astype(np.float32).reshape(-1, 2), radii[keep].astype(np.float32)


def log_blobs_from_stain(stain: np.ndarray, min_sigma: float = 10.0, max_sigma: float = 12.0,
                         num_sigma: int | None = None, threshold: float = 0.08,
                         overlap: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """:func:`log_blobs_with_radii` on a stain channel (H, W) already computed (nuclei bright, in [0, 1])."""
    sigmas = log_sigmas(min_sigma, max_sigma, num_sigma)
    candidates = blob_candidates(log_scale_space(stain, sigmas), sigmas)
    return select_blobs(*candidates, threshold=threshold, overlap=overlap)


def log_blobs_with_radii(image: torch.Tensor, min_sigma: float = 10.0, max_sigma: float = 12.0,
                         num_sigma: int | None = None, threshold: float = 0.08,
                         overlap: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """LoG blobs of the hematoxylin of an image (3, H, W) in [0, 1]: centres (N, 2) float32 (row, col) and radii (N,)
    float32, radius = sigma * sqrt(2) (the radius of a disk whose LoG response peaks at that sigma).

    ``min_sigma``, ``max_sigma``: the scale range (steps of 1, or ``num_sigma`` scales); ``threshold``: least
    scale-normalised response on the [0, 1] stain; ``overlap``: pruning (see the module). Defaults: tuned on the
    MoNuSeg train tiles (module docstring).
    """
    return log_blobs_from_stain(stain_of(image), min_sigma, max_sigma, num_sigma, threshold, overlap)


def log_blobs(image: torch.Tensor, **params) -> np.ndarray:
    """The counting baseline: LoG blob centres (N, 2) float32 (row, col); ``params`` as :func:`log_blobs_with_radii`."""
    return log_blobs_with_radii(image, **params)[0]


# ---------------------------------------------------------------------------------------------------------- watershed


def otsu_watershed_from_stain(stain: np.ndarray, smooth_sigma: float = 1.0, otsu_scale: float = 1.0,
                              opening_radius: int = 1, min_size: int = 100, min_distance: int = 8,
                              distance_sigma: float = 1.0) -> np.ndarray:
    """:func:`otsu_watershed` on a stain channel (H, W) already computed (nuclei bright)."""
    foreground = otsu_foreground(stain, smooth_sigma, otsu_scale, opening_radius, min_size)
    return split_nuclei(foreground, min_distance, distance_sigma)


def otsu_watershed(image: torch.Tensor, smooth_sigma: float = 1.0, otsu_scale: float = 1.0, opening_radius: int = 1,
                   min_size: int = 100, min_distance: int = 8, distance_sigma: float = 1.0) -> np.ndarray:
    """The classical segmentation baseline: nucleus instances (H, W) int32 (0 = background, 1..N) of an image
    (3, H, W) in [0, 1], from the Otsu foreground of its hematoxylin split by a distance-transform watershed.

    Defaults: tuned on the MoNuSeg train tiles (module docstring).
    """
    return otsu_watershed_from_stain(stain_of(image), smooth_sigma, otsu_scale, opening_radius, min_size, min_distance,
                                     distance_sigma)
