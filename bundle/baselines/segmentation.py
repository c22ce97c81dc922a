"""segmentation baselines: label-free classical nucleus counting and segmentation on the hematoxylin stain.

They see no annotation at run time; their few parameters were tuned on the MoNuSeg *train* tiles (the way the issue's
reference figures were obtained: tuned on other tiles than those scored).
"""

from __future__ import annotations

import numpy as np
import torch
from skimage.feature import blob_log

from ..detect import hematoxylin


def log_blobs(image: torch.Tensor, min_sigma: float = 3.0, max_sigma: float = 10.0, threshold: float = 0.15) -> np.ndarray:
    """The classical counting baseline: Laplacian-of-Gaussian blobs (N, 2) (row, col) on the hematoxylin channel.

    Label-free; the defaults were the best of a small grid (threshold 0.05 / 0.1 / 0.15) on the 13 MoNuSeg *train* tiles.
    """
    blobs = blob_log(hematoxylin(image), min_sigma=min_sigma, max_sigma=max_sigma, num_sigma=5, threshold=threshold)
    return blobs[:, :2].astype(np.float32).reshape(-1, 2)
