"""patches: cell-centred patches and the orientation label.

Sizes (measured on the 9,537 nuclei of the 22 MoNuSeg tiles, see docs/README.md): the largest extent of a nucleus has
median 27 px, 95th percentile 46 px and 99th percentile 62 px. So

* ``PATCH_SIZE = 64``: the network patch holds 99 % of nuclei whole (the paper's 32 px clips about a third of them);
* ``CROP_SIZE = 96``: the stored crop around each cell; a 64 px centre rotated by any angle stays inside it
  (64 * sqrt(2) = 90.5 < 96), so augmentations never pull in padding.

Orientation convention, used everywhere in the bundle: the angle of a nucleus's principal (major) axis, in degrees in
[0, 180), measured counter-clockwise from the image's x axis (columns) **as displayed**, i.e. with row 0 at the top.
The axis direction in (row, col) coordinates is (-sin t, cos t).

The orientation *label* is a pixel label: a linear ramp inside the mask along the principal axis, -1 at one end of the
nucleus and +1 at the other, 0 outside. Being a plain image, it can be warped like the mask; the angle is read back from a
warped ramp by fitting a plane to it (``orientation_from_ramp``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from skimage.measure import regionprops

PATCH_SIZE = 64
CROP_SIZE = 96


def cell_centroids(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Instance ids (N,) int64 and centroids (N, 2) float32 as (row, col) of an instance label map (H, W)."""
    props = regionprops(np.asarray(labels, dtype=np.int32))
    ids = np.array([p.label for p in props], dtype=np.int64)
    centroids = np.array([p.centroid for p in props], dtype=np.float32).reshape(-1, 2)
    return ids, centroids


def crop_patches(image: torch.Tensor, centres: np.ndarray | torch.Tensor, size: int = CROP_SIZE) -> torch.Tensor:
    """Square crops of ``size`` centred on each ``centres`` (N, 2) (row, col) of an image (C, H, W) -> (N, C, size, size).

    One gather for all cells (no per-cell loop). Outside the image the crop is filled by reflection, which keeps the
    texture statistics of border cells closer to the interior than zeros would.
    """
    c, h, w = image.shape
    half = size // 2
    pad_mode = "reflect" if min(h, w) > half else "replicate"
    padded = F.pad(image[None].float(), (half, half, half, half), mode=pad_mode)[0]
    centres = torch.as_tensor(np.asarray(centres), dtype=torch.float32).reshape(-1, 2)
    top_left = torch.round(centres).long()  # padded coordinates: centre - half + half
    offsets = torch.arange(size)
    rows = (top_left[:, 0, None] + offsets)[:, :, None].expand(-1, size, size)
    cols = (top_left[:, 1, None] + offsets)[:, None, :].expand(-1, size, size)
    return padded[:, rows, cols].permute(1, 0, 2, 3).contiguous().to(image.dtype)


def crop_cell_masks(labels: np.ndarray, ids: np.ndarray, centres: np.ndarray, size: int = CROP_SIZE) -> torch.Tensor:
    """Binary masks (N, 1, size, size) uint8 of the centre cell only (``ids[i]``) in each crop; other cells are background."""
    crops = crop_patches(torch.from_numpy(np.asarray(labels, dtype=np.int32))[None], centres, size)
    # reflection padding may mirror the centre cell across the border; that mirrored copy is not part of this cell
    padded_ok = _inside_image_mask(labels.shape, centres, size)
    return ((crops == torch.as_tensor(ids).view(-1, 1, 1, 1)) & padded_ok).to(torch.uint8)


def _inside_image_mask(shape, centres, size) -> torch.Tensor:
    """(N, 1, size, size) bool, True where the crop pixel lies inside the image."""
    centres = torch.round(torch.as_tensor(np.asarray(centres), dtype=torch.float32).reshape(-1, 2)).long()
    offsets = torch.arange(size) - size // 2
    rows = centres[:, 0, None] + offsets
    cols = centres[:, 1, None] + offsets
    ok_r = (rows >= 0) & (rows < shape[0])
    ok_c = (cols >= 0) & (cols < shape[1])
    return (ok_r[:, :, None] & ok_c[:, None, :])[:, None]


def centre_crop(x: torch.Tensor, size: int = PATCH_SIZE) -> torch.Tensor:
    """The central ``size`` x ``size`` window of (..., H, W)."""
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def _coordinates(h: int, w: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Display coordinates (x = column, y = -row), each (H, W): y points up so angles are counter-clockwise on screen."""
    rows = torch.arange(h, dtype=torch.float32, device=device)[:, None].expand(h, w)
    cols = torch.arange(w, dtype=torch.float32, device=device)[None, :].expand(h, w)
    return cols, -rows


def _weighted_moments(weights: torch.Tensor):
    """Centroid and second central moments of non-negative weights (N, 1, H, W) in display coordinates."""
    x, y = _coordinates(*weights.shape[-2:], device=weights.device)
    w = weights[:, 0].float()
    total = w.sum(dim=(-2, -1)).clamp_min(1e-6)
    mx = (w * x).sum(dim=(-2, -1)) / total
    my = (w * y).sum(dim=(-2, -1)) / total
    dx = x - mx[:, None, None]
    dy = y - my[:, None, None]
    cxx = (w * dx * dx).sum(dim=(-2, -1)) / total
    cyy = (w * dy * dy).sum(dim=(-2, -1)) / total
    cxy = (w * dx * dy).sum(dim=(-2, -1)) / total
    return dx, dy, cxx, cyy, cxy


def principal_angle(masks: torch.Tensor) -> torch.Tensor:
    """Orientation (N,) in degrees [0, 180) of the major axis of each mask (N, 1, H, W), from its second moments."""
    _, _, cxx, cyy, cxy = _weighted_moments(masks)
    theta = 0.5 * torch.atan2(2 * cxy, cxx - cyy)
    return torch.rad2deg(theta) % 180.0


def elongation(masks: torch.Tensor) -> torch.Tensor:
    """Axis ratio (N,) >= 1 of each mask (N, 1, H, W): sqrt of the ratio of its second-moment eigenvalues. A round
    nucleus (ratio near 1) has no meaningful orientation."""
    _, _, cxx, cyy, cxy = _weighted_moments((masks > 0.5).float())
    half_trace, root = (cxx + cyy) / 2, torch.sqrt(((cxx - cyy) / 2) ** 2 + cxy**2)
    return torch.sqrt((half_trace + root) / (half_trace - root).clamp_min(1e-6))


def orientation_ramp(masks: torch.Tensor) -> torch.Tensor:
    """The orientation label (N, 1, H, W) float32 of masks (N, 1, H, W): a ramp along the major axis, in [-1, 1] inside
    the mask, 0 outside."""
    m = (masks > 0.5).float()
    dx, dy, cxx, cyy, cxy = _weighted_moments(m)
    theta = 0.5 * torch.atan2(2 * cxy, cxx - cyy)
    along = dx * torch.cos(theta)[:, None, None] + dy * torch.sin(theta)[:, None, None]
    along = along * m[:, 0]
    extent = along.abs().amax(dim=(-2, -1)).clamp_min(1e-6)
    return (along / extent[:, None, None])[:, None]


def orientation_from_ramp(ramp: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """Read the orientation (N,) in degrees [0, 180) back from a (possibly warped) ramp (N, 1, H, W).

    The axis is the direction of the ramp's first moment over the mask, sum r(p) (p - mean p): from the ramp's
    negative end to its positive end. (A least-squares plane fit, the ramp's gradient, turns towards the short axis
    under an anisotropic stretch; the first moment follows the stretched shape's ends.)
    """
    w = (masks > 0.5).float()[:, 0]
    x, y = _coordinates(*ramp.shape[-2:], device=ramp.device)
    r = ramp[:, 0].float() * w
    total = w.sum(dim=(-2, -1)).clamp_min(1e-6)
    mx = (w * x).sum(dim=(-2, -1)) / total
    my = (w * y).sum(dim=(-2, -1)) / total
    a = (r * (x - mx[:, None, None])).sum(dim=(-2, -1))
    b = (r * (y - my[:, None, None])).sum(dim=(-2, -1))
    return torch.rad2deg(torch.atan2(b, a)) % 180.0


def angle_difference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Absolute difference of axis angles in degrees, in [0, 90] (an axis at 179 deg is 2 deg from one at 1 deg)."""
    d = (a - b).abs() % 180.0
    return torch.minimum(d, 180.0 - d)
