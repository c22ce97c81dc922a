"""register: the register and warp stages of DiffKillR.

Each new cell has been matched to one archetype (``bundle.match``). Here the archetype is

1. pre-aligned to the cell by the best of the 8 flips / quarter turns (``dihedral_align``, ``fields.dihedral``): exact
   pixel permutations, so this costs no interpolation and takes the large, discrete part of the orientation off the
   network;
2. registered onto the cell by ``DiffeoMappingNet`` (archetype = moving, cell = fixed; see
   ``bundle.networks.mapping``), which predicts ``phi`` with ``warped(p) = archetype(p + phi(p))``;
3. its labels (mask, orientation ramp) are pulled through ``phi``: they become the cell's predicted labels.

Shapes: images (B, C, P, P) in [0, 1], masks and ramps (B, 1, P, P), DDFs (B, 2, P, P) in pixels (channel 0 rows).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .fields import DIHEDRAL, dihedral, dihedral_index, jacobian_determinant, warp

__all__ = [
    "mutual_information",
    "normalized_cross_correlation",
    "centre_window",
    "dihedral_align",
    "warp_labels",
    "register",
]

# sigma (px) of the centred Gaussian weight of the dihedral choice: unweighted, the neighbours that fill a 64 px patch
# decide the choice instead of the cell (docs/README.md)
CENTRE_SIGMA = 8.0

_METRICS = ("mi", "ncc")


# ----------------------------------------------------------------------------------------------------------------
# Similarity metrics (batched over N pairs)


def mutual_information(a: torch.Tensor, b: torch.Tensor, bins: int = 32, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mutual information (N,) in nats of each pair of images a, b (N, H, W) with intensities in [0, 1].

    A joint histogram with ``bins`` x ``bins`` hard bins per pair, all N histograms built by one ``bincount`` on the
    flattened index ``n * bins**2 + i * bins + j``. ``mask`` (N, H, W) or (H, W), optional non-negative pixel weights
    (e.g. a window on the patch centre). MI depends only on which intensities co-occur, not on their values: it is
    unchanged by an intensity inversion (stain or modality differences), unlike correlation. Not differentiable;
    meant for choosing among candidates.
    """
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"expected a, b of equal shape (N, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    n = a.shape[0]
    ia = (a.float().clamp(0, 1) * bins).long().clamp_(max=bins - 1).reshape(n, -1)
    ib = (b.float().clamp(0, 1) * bins).long().clamp_(max=bins - 1).reshape(n, -1)
    flat = (torch.arange(n, device=a.device)[:, None] * bins * bins + ia * bins + ib).reshape(-1)
    weights = None
    if mask is not None:
        weights = torch.broadcast_to(mask.float(), a.shape).reshape(-1)
    joint = torch.bincount(flat, weights=weights, minlength=n * bins * bins).view(n, bins, bins).float()
    joint = joint / joint.sum(dim=(1, 2), keepdim=True).clamp_min(1e-12)
    pa = joint.sum(dim=2, keepdim=True)  # (N, bins, 1)
    pb = joint.sum(dim=1, keepdim=True)  # (N, 1, bins)
    # Empty cells contribute 0 (p log p -> 0); where() keeps log(0) out of the sum.
    ratio = joint / (pa * pb).clamp_min(1e-12)
    terms = torch.where(joint > 0, joint * torch.log(ratio.clamp_min(1e-12)), torch.zeros_like(joint))
    return terms.sum(dim=(1, 2))


def normalized_cross_correlation(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Global normalised cross-correlation (N,) in [-1, 1] of images a, b (N, H, W); ``mask`` optional pixel weights
    (N, H, W) or (H, W). A constant image has NCC 0 with anything."""
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"expected a, b of equal shape (N, H, W), got {tuple(a.shape)} and {tuple(b.shape)}")
    a, b = a.float(), b.float()
    w = torch.ones_like(a) if mask is None else torch.broadcast_to(mask.float(), a.shape)
    total = w.sum(dim=(1, 2)).clamp_min(1e-12)

    def mean(v):
        return (w * v).sum(dim=(1, 2)) / total

    da = a - mean(a)[:, None, None]
    db = b - mean(b)[:, None, None]
    cov = mean(da * db)
    return cov / (mean(da * da) * mean(db * db)).sqrt().clamp_min(1e-12)


def centre_window(size: int, sigma: float = CENTRE_SIGMA, device=None) -> torch.Tensor:
    """A centred Gaussian weight (P, P), maximum 1. Radial and centred, so the dihedral group leaves it unchanged."""
    r = torch.arange(size, dtype=torch.float32, device=device) - (size - 1) / 2
    return torch.exp(-(r[:, None] ** 2 + r[None, :] ** 2) / (2 * sigma**2))


def dihedral_align(
    archetypes: torch.Tensor, cells: torch.Tensor, metric: str = "mi", sigma: float | None = CENTRE_SIGMA
) -> torch.Tensor:
    """The dihedral element k (B,) int64 for which ``dihedral(archetypes, k)`` looks most like ``cells``.

    archetypes, cells (B, C, P, P) images in [0, 1], compared in grey (channel mean). metric: "mi" (mutual
    information, robust to stain differences; the paper found it better) or "ncc". Pixels are weighted by a centred
    Gaussian of ``sigma`` px (``centre_window``) so that the cell rather than its neighbours decides; None weighs all
    pixels alike. All 8 * B comparisons are one batched metric call. Ties go to the smaller k (k = 0 first).
    """
    if metric not in _METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {_METRICS}")
    if archetypes.shape != cells.shape:
        raise ValueError(f"archetypes {tuple(archetypes.shape)} and cells {tuple(cells.shape)} differ in shape")
    b, _, h, w = archetypes.shape
    grey_a = archetypes.float().mean(dim=1)  # (B, H, W)
    grey_c = cells.float().mean(dim=1)
    if sigma is not None and 4 * sigma < h:
        # beyond 2 sigma the window weighs < e^-2: score only the centred square it sees (4x fewer pixels at sigma 8).
        # A centred square is mapped onto itself by the group, so cropping commutes with the 8 elements.
        size = int(math.ceil(4 * sigma))
        size += (h - size) % 2
        top = (h - size) // 2
        grey_a, grey_c = (g[:, top : top + size, top : top + size] for g in (grey_a, grey_c))
        h = w = size
    # All 8 candidates of every archetype, item-major: row b * 8 + k is dihedral(archetype b, k).
    index = dihedral_index(h, archetypes.device)  # (8, H*W)
    cand = grey_a.reshape(b, 1, h * w).expand(b, DIHEDRAL, h * w).gather(-1, index[None].expand(b, -1, -1))
    cand = cand.reshape(b * DIHEDRAL, h, w)
    target = grey_c[:, None].expand(b, DIHEDRAL, h, w).reshape(b * DIHEDRAL, h, w)
    score_fn = mutual_information if metric == "mi" else normalized_cross_correlation
    window = None if sigma is None else centre_window(h, sigma, archetypes.device)
    scores = score_fn(cand, target, mask=window).view(b, DIHEDRAL)
    return scores.argmax(dim=1)


# ----------------------------------------------------------------------------------------------------------------
# Warping labels


def warp_labels(labels: torch.Tensor, ddf: torch.Tensor, kind: str) -> torch.Tensor:
    """Pull labels (B, 1, P, P) through ddf (B, 2, P, P): ``out(p) = labels(p + ddf(p))``.

    kind "mask": bilinear warp of the float mask, then threshold at 0.5; returns float {0, 1}. (Nearest-neighbour
    warping aliases more on smooth boundaries, and has zero gradient for training; the bilinear value before the
    threshold is the soft label to train on.) kind "continuous": bilinear only (the orientation ramp). Zero padding:
    outside the patch there is background.
    """
    if kind == "mask":
        return (warp(labels.float(), ddf, "bilinear", "zeros") > 0.5).float()
    if kind == "continuous":
        return warp(labels.float(), ddf, "bilinear", "zeros")
    raise ValueError(f"unknown label kind {kind!r}; choose 'mask' or 'continuous'")


# ----------------------------------------------------------------------------------------------------------------
# The stage


def register(
    network: nn.Module,
    archetypes: dict,
    cells: torch.Tensor,
    align: str | None = "mi",
    batch_size: int = 512,
) -> dict:
    """Register each matched archetype onto its cell and carry its labels over.

    Args:
        network: a ``DiffeoMappingNet`` (anything mapping ``cat([archetype, cell], 1)`` to the DDF phi).
        archetypes: {"image": (B, C, P, P), "mask": (B, 1, P, P), "ramp": (B, 1, P, P)}, item i matched to cell i;
            "mask" and "ramp" may be left out.
        cells: (B, C, P, P) images in [0, 1].
        align: "mi" or "ncc" to pre-align each archetype by the best dihedral element, None to skip that.
        batch_size: items per network call.

    Returns (on the device of ``cells``), all in the cell's frame:
        "ddf" (B, 2, P, P): phi, from the dihedrally aligned archetype to the cell;
        "image" (B, C, P, P): the aligned archetype image warped by phi (bilinear, border padding);
        "mask" (B, 1, P, P) float {0, 1}; "ramp" (B, 1, P, P), zero outside the warped mask (the ramp convention);
        "dihedral" (B,) int64: the k applied to the archetype first (``dihedral(archetype, k)``; 0 if align is None);
        "folded_pct" (B,): percentage of (interior) pixels where the Jacobian determinant of phi is <= 0.

    The network runs in eval mode under ``torch.no_grad`` (batch norm must use its running statistics, not the
    statistics of whichever cells share a batch); its training flag is restored afterwards.
    """
    if align is not None and align not in _METRICS:
        raise ValueError(f"unknown align {align!r}; choose one of {_METRICS} or None")
    image = archetypes["image"]
    if image.shape != cells.shape:
        raise ValueError(f"archetype images {tuple(image.shape)} and cells {tuple(cells.shape)} differ in shape")
    label_keys = [key for key in ("mask", "ramp") if key in archetypes]
    try:
        device = next(network.parameters()).device
    except StopIteration:
        device = cells.device
    out_device = cells.device
    results: dict[str, list[torch.Tensor]] = {k: [] for k in ("ddf", "image", "dihedral", "folded_pct", *label_keys)}

    was_training = network.training
    network.eval()
    try:
        with torch.no_grad():
            for s in range(0, cells.shape[0], batch_size):
                cell = cells[s : s + batch_size].to(device).float()
                moving = {"image": image[s : s + batch_size].to(device).float()}
                for key in label_keys:
                    moving[key] = archetypes[key][s : s + batch_size].to(device).float()
                if align is None:
                    k = torch.zeros(cell.shape[0], dtype=torch.long, device=device)
                else:
                    k = dihedral_align(moving["image"], cell, align)
                    # Labels get the same exact pixel permutation as the image, so they stay consistent with it.
                    moving = {key: dihedral(v, k) for key, v in moving.items()}
                ddf = network(torch.cat([moving["image"], cell], dim=1))
                results["ddf"].append(ddf)
                results["image"].append(warp(moving["image"], ddf, "bilinear", "border"))
                results["dihedral"].append(k)
                if "mask" in moving:
                    mask = warp_labels(moving["mask"], ddf, "mask")
                    results["mask"].append(mask)
                if "ramp" in moving:
                    ramp = warp_labels(moving["ramp"], ddf, "continuous")
                    results["ramp"].append(ramp * mask if "mask" in moving else ramp)
                folded = (jacobian_determinant(ddf) <= 0).float().mean(dim=(1, 2)) * 100
                results["folded_pct"].append(folded)
    finally:
        network.train(was_training)
    if cells.shape[0] == 0:  # no cells in the image: empty results of the documented shapes
        b, c, h, w = cells.shape
        empty = {"ddf": (0, 2, h, w), "image": (0, c, h, w), "mask": (0, 1, h, w), "ramp": (0, 1, h, w)}
        out = {key: torch.zeros(empty[key], device=out_device) for key in ("ddf", "image", *label_keys)}
        out["dihedral"] = torch.zeros(0, dtype=torch.long, device=out_device)
        out["folded_pct"] = torch.zeros(0, device=out_device)
        return out
    return {key: torch.cat(v).to(out_device) for key, v in results.items()}
