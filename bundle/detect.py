"""detect: label-free nucleus proposals from the hematoxylin stain.

Colour deconvolution (Ruifrok and Johnston, ``skimage.color.rgb2hed``) separates the hematoxylin stain, which binds
nuclear DNA; a smoothed hematoxylin image has one bright bump per nucleus. Its local maxima above an Otsu threshold are
the proposals. They use no annotation at all, so they can be cut from any image, train or test, without breaking the
few-shot budget; the bank's knowledge is applied on top of them.
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.color import rgb2hed
from skimage.feature import peak_local_max
from skimage.filters import gaussian, threshold_otsu


def hematoxylin(image: torch.Tensor) -> np.ndarray:
    """Hematoxylin optical density (H, W) float32, rescaled to [0, 1], of an RGB image (3, H, W) in [0, 1]."""
    if image.shape[0] != 3:
        raise ValueError(f"colour deconvolution needs an RGB image (3, H, W), got {tuple(image.shape)}")
    h = rgb2hed(image.permute(1, 2, 0).clamp(0, 1).cpu().numpy())[..., 0]
    lo, hi = np.percentile(h, [0.5, 99.5])
    return np.clip((h - lo) / max(hi - lo, 1e-6), 0, 1).astype(np.float32)


def nucleus_proposals(image: torch.Tensor, sigma: float = 2.5, min_distance: int = 6) -> np.ndarray:
    """Proposal centres (N, 2) float32 as (row, col): local maxima of the smoothed hematoxylin above Otsu's threshold.

    ``sigma`` (px) suits nuclei 15-40 px across at 40x; ``min_distance`` keeps one proposal per small nucleus.
    Single-channel (fluorescence) images are used as they are, bright nuclei on dark background.
    """
    stain = hematoxylin(image) if image.shape[0] == 3 else image[0].cpu().numpy().astype(np.float32)
    smooth = gaussian(stain, sigma=sigma)
    peaks = peak_local_max(smooth, min_distance=min_distance, threshold_abs=threshold_otsu(smooth), exclude_border=False)
    return peaks.astype(np.float32).reshape(-1, 2)


def log_blobs(image: torch.Tensor, min_sigma: float = 4.0, max_sigma: float = 12.0, threshold: float = 0.08) -> np.ndarray:
    """The classical counting baseline: Laplacian-of-Gaussian blobs (N, 2) (row, col) on the hematoxylin channel.

    Label-free; the defaults were set on MoNuSeg *train* tiles (nuclei 15-40 px across at 40x).
    """
    from skimage.feature import blob_log

    blobs = blob_log(hematoxylin(image), min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=5, threshold=threshold)
    return blobs[:, :2].astype(np.float32).reshape(-1, 2)
