"""detect: label-free nucleus proposals from the hematoxylin stain.

Colour deconvolution (Ruifrok and Johnston, ``skimage.color.rgb2hed``) separates the hematoxylin stain, which binds
nuclear DNA. Its Otsu foreground is split into nuclei by a watershed on the distance transform, and the centroids of the
pieces are the proposals (on MoNuSeg train tiles this beat smoothed-hematoxylin maxima, which fire several times in
large nuclei). They use no annotation at all, so they can be cut from any image, train or test, without breaking the
few-shot budget; the bank's knowledge is applied on top of them.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu
from skimage.measure import regionprops
from skimage.morphology import disk, opening, remove_small_objects
from skimage.segmentation import watershed


def hematoxylin(image: torch.Tensor) -> np.ndarray:
    """Hematoxylin optical density (H, W) float32, rescaled to [0, 1], of an RGB image (3, H, W) in [0, 1]."""
    if image.shape[0] != 3:
        raise ValueError(f"colour deconvolution needs an RGB image (3, H, W), got {tuple(image.shape)}")
    h = rgb2hed(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())[..., 0]
    lo, hi = np.percentile(h, [0.5, 99.5])
    return np.clip((h - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def nucleus_proposals(image: torch.Tensor, min_distance: int = 8, min_size: int = 30) -> np.ndarray:
    """Proposal centres (N, 2) float32 as (row, col): centroids of the watershed pieces of the stain's foreground.

    Foreground: hematoxylin (lightly smoothed) above Otsu's threshold, opened by a 2 px disk, pieces under ``min_size``
    pixels dropped. Markers: maxima of the distance transform at least ``min_distance`` px apart (nuclei at 40x are
    15-40 px across). Single-channel (fluorescence) images are used as they are: bright nuclei on dark background.
    """
    stain = hematoxylin(image) if image.shape[0] == 3 else image[0].cpu().numpy().astype(np.float32)
    smooth = gaussian(stain, sigma=1.0)
    foreground = remove_small_objects(opening(smooth > threshold_otsu(smooth), disk(2)), max_size=min_size)
    pieces = ndimage.label(foreground)[0]
    distance = ndimage.distance_transform_edt(foreground)
    peaks = peak_local_max(gaussian(distance, 1.0), min_distance=min_distance, labels=pieces, exclude_border=False)
    markers = np.zeros(foreground.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    nuclei = watershed(-distance, markers, mask=foreground)
    return np.array([p.centroid for p in regionprops(nuclei)], dtype=np.float32).reshape(-1, 2)


def hematoxylin_maxima(image: torch.Tensor, sigma: float = 2.5, min_distance: int = 6) -> np.ndarray:
    """Centres (N, 2) (row, col) of local maxima of the smoothed hematoxylin above Otsu's threshold.

    Denser than ``nucleus_proposals`` (large nuclei get several): the right choice for cutting *unlabelled* training
    crops, where more nucleus-centred views help and a duplicate does no harm.
    """
    stain = hematoxylin(image) if image.shape[0] == 3 else image[0].cpu().numpy().astype(np.float32)
    smooth = gaussian(stain, sigma=sigma)
    peaks = peak_local_max(smooth, min_distance=min_distance, threshold_abs=threshold_otsu(smooth), exclude_border=False)
    return peaks.astype(np.float32).reshape(-1, 2)
