"""detect: nucleus proposals from the hematoxylin stain, calibrated on the bank.

Colour deconvolution (Ruifrok and Johnston, ``skimage.color.rgb2hed``) separates the hematoxylin stain, which binds
nuclear DNA. Its foreground (above the tile's Otsu threshold and above the local mean) is split into nuclei by a
watershed on the distance transform, and the centroids of the pieces are the proposals (on MoNuSeg train tiles this
beat smoothed-hematoxylin maxima, which fire several times in large nuclei). At run time they read no annotation, so
they can be cut from any image, train or test; their three parameters are chosen once, on the bank's own cells, when
the bank is built (``calibrate_proposals``).
"""

from __future__ import annotations

import itertools

import numpy as np
import torch
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_local, threshold_otsu
from skimage.measure import regionprops
from skimage.morphology import disk, opening, remove_small_objects
from skimage.segmentation import watershed
from tqdm.auto import tqdm

from .data import list_dataset, read_image
from .patches import crop_patches


# A bright-field pixel is blank (glass, not tissue) when it is bright and grey. On the 13 MoNuSeg train tiles this calls
# 0.1 % of nucleus pixels blank on average (0.7 % in the worst tile) and 6 % of all pixels (lumens, fat).
BLANK_VALUE = 0.8  # brightest channel at least this
BLANK_SATURATION = 0.05  # brightest minus darkest channel at most this
# an image with fewer tissue pixels than the smallest nucleus piece the student keeps (student.MIN_PIECE) holds none
MIN_TISSUE_PIXELS = 30


def holds_tissue(image: torch.Tensor) -> bool:
    """Whether an image (C, H, W) in [0, 1] has any tissue: at least ``MIN_TISSUE_PIXELS`` pixels that are not blank
    glass (bright and grey). A fluorescence image's dark background is not blank: only bright-field glass is
    skipped. Read on every fourth pixel each way: a slide's empty regions cost next to nothing."""
    sample = image[:, ::4, ::4]
    brightest, darkest = sample.amax(0), sample.amin(0)
    tissue = (brightest < BLANK_VALUE) | (brightest - darkest > BLANK_SATURATION)
    return int(tissue.sum()) * 16 >= MIN_TISSUE_PIXELS


def hematoxylin(image: torch.Tensor) -> np.ndarray:
    """Hematoxylin optical density (H, W) float32, rescaled to [0, 1], of an RGB image (3, H, W) in [0, 1]."""
    if image.shape[0] != 3:
        raise ValueError(f"colour deconvolution needs an RGB image (3, H, W), got {tuple(image.shape)}")
    h = rgb2hed(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())[..., 0]
    lo, hi = np.percentile(h, [0.5, 99.5])
    return np.clip((h - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def stain_of(image: torch.Tensor) -> np.ndarray:
    """The channel the baselines work on (H, W) float32: hematoxylin of an RGB image (3, H, W) in [0, 1]; a
    single-channel image (1, H, W) (e.g. fluorescence: bright nuclei on dark) is used as it is."""
    if image.ndim != 3 or image.shape[0] not in (1, 3):
        raise ValueError(f"expected an RGB (3, H, W) or single-channel (1, H, W) image, got {tuple(image.shape)}")
    if image.shape[0] == 3:
        return hematoxylin(image)
    return image[0].detach().cpu().numpy().astype(np.float32)


def otsu_foreground(stain: np.ndarray, smooth_sigma: float = 1.0, otsu_scale: float = 1.0, opening_radius: int = 1,
                    min_size: int = 100, local_block: int | None = None) -> np.ndarray:
    """Nuclear foreground (H, W) bool of a stain channel: smoothed stain above ``otsu_scale`` x its Otsu threshold
    (and, with ``local_block``, above the Gaussian-weighted mean of its ``local_block`` px neighbourhood), opened by a
    disk of ``opening_radius`` px, holes filled, pieces of fewer than ``min_size`` px removed. A flat stain (no
    contrast) has no foreground."""
    stain = np.asarray(stain, np.float32)
    smooth = gaussian(stain, sigma=smooth_sigma) if smooth_sigma > 0 else stain
    if smooth.size == 0 or np.ptp(smooth) < 1e-6:
        return np.zeros(stain.shape, bool)
    foreground = smooth > otsu_scale * threshold_otsu(smooth)
    if local_block is not None:
        foreground &= smooth > threshold_local(smooth, int(local_block), method="gaussian", offset=0)
    if opening_radius > 0:
        foreground = opening(foreground, disk(int(opening_radius)))
    foreground = ndimage.binary_fill_holes(foreground)
    if min_size > 0:
        # remove_small_objects drops pieces of at most max_size pixels
        foreground = remove_small_objects(foreground, max_size=int(min_size) - 1)
    return foreground


def split_nuclei(foreground: np.ndarray, min_distance: int = 8, distance_sigma: float = 1.0) -> np.ndarray:
    """Instances (H, W) int32 (0 = background, 1..N) of a foreground: watershed of the negated distance transform
    (Gaussian-smoothed by ``distance_sigma``, which merges the spurious maxima of ragged outlines) from markers at its
    local maxima at least ``min_distance`` px apart within each connected piece; every piece gets at least one."""
    foreground = np.asarray(foreground, bool)
    if not foreground.any():
        return np.zeros(foreground.shape, np.int32)
    distance = ndimage.distance_transform_edt(foreground)
    if distance_sigma > 0:
        distance = gaussian(distance, sigma=distance_sigma)
    pieces, _ = ndimage.label(foreground)
    peaks = peak_local_max(distance, min_distance=int(min_distance), labels=pieces, exclude_border=False)
    markers = np.zeros(foreground.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    labels = watershed(-distance, markers, mask=foreground)
    return labels.astype(np.int32)


# The stain proposal parameters the bank calibration chooses among (``calibrate_proposals``), and the defaults for a
# bank that carries no calibration.
PROPOSAL_GRID = {"opening_radius": (1, 2), "min_distance": (6, 8, 10, 12, 14)}
PROPOSAL_DEFAULTS = {"opening_radius": 1, "min_size": 100, "min_distance": 8}
# A nucleus is darker in hematoxylin than the tissue around it, not only than the tile's Otsu threshold: dense stroma
# and cytoplasm pass a global threshold. The foreground also has to lie above the Gaussian-weighted mean of a window
# a few nuclei wide: a label-free design constant, chosen on the train tiles (docs/README.md).
LOCAL_BLOCK = 101
# Pieces smaller than this percentile of the bank's nucleus areas are specks, not nuclei. With LOCAL_BLOCK, one of the
# two design constants here chosen on the train tiles rather than on the bank alone.
MIN_SIZE_PERCENTILE = 5


def nuclear_foreground(stain: np.ndarray, opening_radius: int, min_size: int) -> np.ndarray:
    """The detector's foreground (H, W) bool of a stain channel: above the tile's Otsu threshold and above the mean
    of its ``LOCAL_BLOCK`` px neighbourhood."""
    return otsu_foreground(stain, opening_radius=opening_radius, min_size=min_size, local_block=LOCAL_BLOCK)


def nucleus_pieces(stain: np.ndarray, opening_radius: int, min_size: int, min_distance: int) -> np.ndarray:
    """Instances (H, W) int32 of a stain channel: its ``nuclear_foreground`` split by a distance-transform watershed."""
    return split_nuclei(nuclear_foreground(stain, opening_radius, min_size), min_distance)


def piece_centroids(pieces: np.ndarray) -> np.ndarray:
    """Centroids (N, 2) float32 as (row, col) of the pieces 1..N of an instance map (H, W), in label order."""
    return np.array([p.centroid for p in regionprops(pieces)], dtype=np.float32).reshape(-1, 2)


def nucleus_proposals(image: torch.Tensor, params: dict | None = None) -> np.ndarray:
    """Proposal centres (N, 2) float32 as (row, col): centroids of the ``nucleus_pieces`` of the image's stain.

    ``params`` (``PROPOSAL_GRID`` keys): a bank's calibration (``bank["meta"]["proposals"]``); None: the defaults.
    Single-channel (fluorescence) images are used as they are: bright nuclei on dark background.
    """
    return piece_centroids(nucleus_pieces(stain_of(image), **(params or PROPOSAL_DEFAULTS)))


def calibrate_proposals(bank: dict, dataset_dir, progress: bool = True) -> dict:
    """Choose the proposal parameters from the bank's own cells: the only ground truth the method may see.

    ``min_size`` is the ``MIN_SIZE_PERCENTILE`` of the bank's nucleus areas. For every point of ``PROPOSAL_GRID``, the
    source images of the bank's cells (found in ``dataset_dir``) are turned into proposals, and a bank cell counts as
    found when exactly one proposal lies inside its mask (``found_once``): none is a miss or a merge with a neighbour,
    two or more is a split. The point that finds the most bank cells wins. A tie goes to the point with fewer
    proposals in the images: it explains the bank as well with fewer claims, so fewer are false (with a 10 % bank of
    ~100 cells, ties are common: one cell decides).
    Returns {"params": ..., "found": share of bank cells found, "grid": [(params, share, proposals), ...]}.
    """
    min_size = int(np.percentile(bank["masks"].flatten(1).sum(1).numpy(), MIN_SIZE_PERCENTILE))
    points = [{"min_size": min_size, **dict(zip(PROPOSAL_GRID, values))}
              for values in itertools.product(*PROPOSAL_GRID.values())]
    image_ids = np.asarray(bank["image_ids"])
    samples = [s for s in list_dataset(dataset_dir) if s.image_id in set(image_ids.tolist())]
    if not samples:
        raise ValueError(f"{dataset_dir} holds none of the bank's source images; cannot calibrate the proposals")
    hits = [[] for _ in points]
    n_proposals = [0 for _ in points]
    for sample in tqdm(samples, desc="calibrating proposals on the bank", unit="image", disable=not progress):
        image = read_image(sample.image_path)  # the bank holds the cells: the image is all that is read
        stain = stain_of(image)
        cells = np.flatnonzero(image_ids == sample.image_id)
        masks = bank["masks"][cells].bool()  # (n, 1, S, S)
        for p, point in enumerate(points):
            rows, cols = np.round(piece_centroids(nucleus_pieces(stain, **point))).astype(int).T
            n_proposals[p] += len(rows)
            dots = np.zeros((1, *stain.shape), np.float32)
            np.add.at(dots[0], (rows, cols), 1)  # two centroids rounding to one pixel still count twice
            crops = crop_patches(torch.from_numpy(dots), bank["centroids"][cells], masks.shape[-1])  # (n, 1, S, S)
            hits[p].append(found_once(crops, masks))
    shares = [float(torch.cat(h).float().mean()) for h in hits]
    best = min(range(len(points)), key=lambda p: (-shares[p], n_proposals[p], p))
    return {"params": points[best], "found": shares[best], "grid": list(zip(points, shares, n_proposals))}


def found_once(dots: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Per cell (n,) bool: does exactly one proposal lie inside its mask?

    dots (n, 1, S, S): 1 at each proposal centre around each cell, masks (n, 1, S, S) bool. This is the counting
    rule seen from the bank: a split nucleus holds two proposals, and a merge puts its one centroid between the
    nuclei, often inside neither. (On the 13 MoNuSeg train tiles this share ranked the grid as the tiles' counting F1
    does; an earlier rule, one proposal piece overlapping the mask with IoU > 0.5, preferred over-split pieces.)
    """
    return (dots * masks).flatten(1).sum(1) == 1


def hematoxylin_maxima(image: torch.Tensor, sigma: float = 2.5, min_distance: int = 6) -> np.ndarray:
    """Centres (N, 2) (row, col) of local maxima of the smoothed hematoxylin above Otsu's threshold.

    Denser than ``nucleus_proposals`` (large nuclei get several): the right choice for cutting *unlabelled* training
    crops, where more nucleus-centred views help and a duplicate does no harm.
    """
    smooth = gaussian(stain_of(image), sigma=sigma)
    peaks = peak_local_max(smooth, min_distance=min_distance, threshold_abs=threshold_otsu(smooth), exclude_border=False)
    return peaks.astype(np.float32).reshape(-1, 2)
