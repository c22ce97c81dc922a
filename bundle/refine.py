"""refine: archetype shapes that follow the image.

DiffeoMappingNet registers the archetype's *image* onto the cell's; the mask it carries over can still miss the cell's
outline (the registration sees texture, not the boundary). Here each warped mask is deformed once more, by a
diffeomorphism fitted at test time to the image evidence of its cell, the student's foreground (``bundle.student``):

    refined(p) = mask(p + r(p)),  r = exp(v),  v = argmin 1 - softDice(mask o exp(v), evidence) + SMOOTH |v|^2

v is a coarse stationary velocity field (a control point every ``CONTROL * SCALE`` px, interpolated bilinearly), fitted
for ``STEPS`` Adam steps on all cells at once at half resolution, then integrated at full resolution by scaling and
squaring. The fit warps by the first-order ``exp(v) ~ id + v`` (one warp per step instead of one per squaring; v is
smooth and a few pixels large), and only the final field is the exact exponential. The output is a deformed prior shape (the template-transformer idea): it stays one smooth component and
does not fold, whatever the evidence looks like, and its orientation ramp follows the same field.

Shapes: masks and evidence (N, 1, P, P); fields (N, 2, P, P) in pixels (``bundle.fields`` conventions).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from .fields import ScalingAndSquaring, warp
from .patches import crop_patches

__all__ = ["cell_evidence", "dice", "follow_image"]

# Tuned on six train tiles (one or two per organ), and on four of them zoomed to 140 % (larger nuclei than the
# archetypes, a stand-in for another scanner or magnification): with SMOOTH 1e-3 the shapes stayed larger than their
# evidence and could not follow the change of scale (object Dice .669 zoomed, against .706 now). A fit at full
# resolution gained under a hundredth and doubled the refinement's time, which the 3 s per tile budget cannot pay.
STEPS = 10
LR = 0.8  # px of velocity per Adam step at half resolution
SCALE = 2  # the fit runs at 1 / SCALE resolution: 4x fewer pixels, and nuclei are > 10 px wide
CONTROL = 4  # px between velocity control points at that resolution
SMOOTH = 1e-4  # keeps v small where the evidence says nothing (e.g. an empty window)
# cells fitted together: on 2 CPU cores 2,400 cells took 1.8 s in one batch and 1.0 s in chunks of 256 (128 to 512
# alike), the working set of a chunk staying in cache
CHUNK = 256


def dice(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Soft Dice (N,) of two stacks (N, 1, P, P) in [0, 1]; 1 when both are empty."""
    inter = (a * b).flatten(1).sum(1)
    total = a.flatten(1).sum(1) + b.flatten(1).sum(1)
    return torch.where(total > 0, 2 * inter / total.clamp_min(1e-6), torch.ones_like(total))


def cell_evidence(foreground: np.ndarray, instances: np.ndarray, centres: np.ndarray, size: int) -> torch.Tensor:
    """Per cell, the image evidence of its outline (N, 1, size, size) in [0, 1]: the foreground probability (H, W)
    around each centre (N, 2), with the pixels of *other* instances (H, W) removed so a shape is not pulled into its
    neighbours. A cell's own instance is the one under its centre (none: the background's evidence only)."""
    probability = crop_patches(torch.from_numpy(foreground)[None], centres, size)
    pieces = crop_patches(torch.from_numpy(instances.astype(np.int32))[None], centres, size)
    own = pieces[:, :, size // 2, size // 2].reshape(-1, 1, 1, 1)
    foreign = (pieces > 0) & (pieces != own)
    return probability.float() * (~foreign).float()


def follow_image(masks: torch.Tensor, evidence: torch.Tensor, steps: int = STEPS) -> torch.Tensor:
    """The refining field r (N, 2, P, P) with ``masks`` o r fitted to ``evidence`` (see the module docstring).

    Runs with gradients enabled whatever the caller's mode (the fit is an optimisation), on the masks' device, ``CHUNK``
    cells at a time: each cell's fit is its own (Adam works element by element), so chunks change nothing but speed."""
    if len(masks) > CHUNK:
        return torch.cat([follow_image(masks[i : i + CHUNK], evidence[i : i + CHUNK], steps)
                          for i in range(0, len(masks), CHUNK)])
    n, _, p, _ = masks.shape
    if n == 0:
        return masks.new_zeros(n, 2, p, p)
    small = p // SCALE
    grid = small // CONTROL + 1
    moving = F.avg_pool2d(masks.float(), SCALE)
    target = F.avg_pool2d(evidence.float(), SCALE)
    with torch.enable_grad():
        velocity = torch.zeros(n, 2, grid, grid, device=masks.device, requires_grad=True)
        optimiser = torch.optim.Adam([velocity], lr=LR)
        for _ in range(steps):
            field = F.interpolate(velocity, size=(small, small), mode="bilinear", align_corners=True)
            loss = (1 - dice(warp(moving, field, "bilinear", "zeros"), target)).sum() + SMOOTH * velocity.pow(2).sum()
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
    velocity = F.interpolate(velocity.detach(), size=(p, p), mode="bilinear", align_corners=True) * SCALE
    return ScalingAndSquaring(num_steps=5)(velocity)  # |v| is a few px: 2^5 steps keep each under a pixel
