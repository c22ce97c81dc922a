"""sizes: how large the nuclei of a dataset are, the measurement behind the patch and crop sizes of ``patches``
(``scripts/benchmark.py sizes``).

The largest extent of a nucleus is its maximum Feret diameter (``regionprops.feret_diameter_max``): the longest
distance between two points of its outline, whatever the orientation, which is what a patch has to hold.
"""

from __future__ import annotations

import numpy as np
from skimage.measure import regionprops
from tqdm.auto import tqdm

from ..data import list_dataset, load_sample
from ..patches import CROP_SIZE, PATCH_SIZE
from .protocol import machine


def run(data_dir) -> dict:
    """Percentiles of the largest extent of every annotated nucleus of every image, and the share within a few
    window sizes."""
    samples = list_dataset(data_dir)
    extents = []
    for sample in tqdm(samples, desc="measuring nuclei", unit="image"):
        _, labels = load_sample(sample)
        extents += [region.feret_diameter_max for region in regionprops(labels)]
    extents = np.asarray(extents)
    return {"data": str(data_dir), "n_images": len(samples), "n_nuclei": int(len(extents)),
            "percentiles": {str(q): float(np.percentile(extents, q)) for q in (50, 90, 95, 99)},
            "max": float(extents.max()),
            "share_within": {str(size): float(np.mean(extents <= size)) for size in (32, PATCH_SIZE, CROP_SIZE)},
            "machine": machine()}
