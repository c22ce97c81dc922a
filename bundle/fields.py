"""fields: displacement fields and the exact symmetries of a square patch, shared by every stage.

Conventions (MONAI's), used by the whole bundle:

* A displacement field (DDF) is a tensor (2, H, W), or (B, 2, H, W) for a batch, in PIXELS. Channel 0 is the
  displacement along rows (downwards as displayed, row 0 at the top), channel 1 along columns (to the right).
* Warping pulls: ``out(p) = in(p + ddf(p))`` (``monai.networks.blocks.Warp``; ``grid_sample`` with
  ``align_corners=True``, so pixel i sits at normalised coordinate -1 + 2 i / (N - 1)).
* Composition: applying field A first and then field B is the single warp by ``u = uB + warp(uA, uB)``
  (``compose(uA, uB)``).
* A stationary velocity field v integrates to the DDF ``exp(v)`` by scaling and squaring (``ScalingAndSquaring``,
  MONAI's ``DVF2DDF``); ``exp(-v)`` is its inverse.
* The dihedral group D4 (the 8 flips and quarter turns of a square) acts by exact pixel permutations
  (``dihedral``): no interpolation, so labels stay exactly consistent with their image.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF

__all__ = [
    "ScalingAndSquaring",
    "warp",
    "compose",
    "jacobian_determinant",
    "identity_grid",
    "affine_field",
    "DIHEDRAL",
    "dihedral",
    "dihedral_inverse",
    "dihedral_index",
]

_MODES = ("nearest", "bilinear", "bicubic")
_PADDINGS = ("zeros", "border", "reflection")


def _quietly(factory, *args, **kwargs):
    """Build a MONAI warping module without its 'Using PyTorch native grid_sample' warning (expected on CPU)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*Using PyTorch native grid_sample.*")
        return factory(*args, **kwargs)


def check_warp_mode(mode: str, padding_mode: str) -> None:
    """Raise ValueError for a mode or padding name ``warp`` does not support (at config parsing, not at a batch)."""
    if mode not in _MODES or padding_mode not in _PADDINGS:
        raise ValueError(f"unsupported mode {mode!r} or padding_mode {padding_mode!r}")


_GRIDS: dict[tuple, torch.Tensor] = {}


def _pixel_grid(h: int, w: int, device, dtype) -> torch.Tensor:
    """Pixel coordinates (1, H, W, 2) in grid_sample's (x, y) = (col, row) order, cached per shape and device."""
    key = (h, w, str(device), dtype)
    grid = _GRIDS.get(key)
    if grid is None:
        rows, cols = torch.meshgrid(torch.arange(h, device=device, dtype=dtype),
                                    torch.arange(w, device=device, dtype=dtype), indexing="ij")
        grid = torch.stack([cols, rows], -1)[None]
        if type(grid) is torch.Tensor:  # never a tracer's stand-in (torch.export): it would poison every later call
            _GRIDS[key] = grid
    return grid


def warp(image: torch.Tensor, ddf: torch.Tensor, mode: str = "bilinear", padding_mode: str = "border") -> torch.Tensor:
    """Pull ``image`` (B, C, H, W) through ``ddf`` (B, 2, H, W): ``out(p) = image(p + ddf(p))``.

    MONAI's ``Warp``, arithmetic for arithmetic (pixel grid + ddf, normalised to [-1, 1], ``grid_sample`` with
    ``align_corners=True``; ``tests/test_register.py`` holds the two equal), on a cached grid: MONAI's block rebuilds
    and reorders its grid at every call, which on CPU costs ten times the sampling itself for a batch of 64 px
    patches, and shape refinement warps at every step.
    """
    check_warp_mode(mode, padding_mode)
    h, w = ddf.shape[-2:]
    extent = torch.tensor([max(w - 1, 1), max(h - 1, 1)], device=ddf.device, dtype=ddf.dtype)
    grid = (_pixel_grid(h, w, ddf.device, ddf.dtype) + ddf.flip(1).permute(0, 2, 3, 1)) * 2 / extent - 1
    return F.grid_sample(image.to(ddf.dtype), grid, mode=mode, padding_mode=padding_mode, align_corners=True)


def compose(first: torch.Tensor, then: torch.Tensor) -> torch.Tensor:
    """One DDF equal to warping by ``first`` and then by ``then``: ``then + warp(first, then)``. Shapes (B, 2, H, W)."""
    # Border padding: outside the patch the displacement is continued, not dropped to zero.
    return then + warp(first, then, "bilinear", "border")


class _CachedWarp(nn.Module):
    """``warp`` as a module, to stand in for the ``Warp`` inside MONAI's ``DVF2DDF`` (same sampling, cached grid)."""

    def __init__(self, mode: str, padding_mode: str):
        super().__init__()
        self.mode, self.padding_mode = mode, padding_mode

    def forward(self, image: torch.Tensor, ddf: torch.Tensor) -> torch.Tensor:
        return warp(image, ddf, self.mode, self.padding_mode)


class ScalingAndSquaring(nn.Module):
    """``exp(v)``: the DDF (B, 2, H, W) of the time-1 flow of a stationary velocity field v (B, 2, H, W) in pixels.

    MONAI's ``DVF2DDF``: v is divided by 2 ** num_steps and the small field is composed with itself num_steps times.
    Border padding continues the velocity beyond the patch instead of dropping it to zero at the edge, so fields near
    the edge are not pulled towards the identity. Its compositions sample through ``warp`` (MONAI's ``Warp``
    arithmetic on a cached grid): the squarings are most of DiffeoMappingNet's time on CPU.
    """

    def __init__(self, num_steps: int = 7):
        super().__init__()
        self.num_steps = int(num_steps)
        self.dvf2ddf = _quietly(DVF2DDF, num_steps=self.num_steps, mode="bilinear", padding_mode="border")
        self.dvf2ddf.warp_layer = _CachedWarp("bilinear", "border")

    def forward(self, velocity: torch.Tensor) -> torch.Tensor:
        return self.dvf2ddf(velocity)


def jacobian_determinant(ddf: torch.Tensor) -> torch.Tensor:
    """Determinant of the Jacobian of the map p -> p + ddf(p), by central differences.

    ddf (B, 2, H, W) -> (B, H - 2, W - 2); a single field (2, H, W) -> (H - 2, W - 2). Values <= 0 mark folding.
    """
    single = ddf.ndim == 3
    u = ddf[None] if single else ddf
    d_row = (u[:, :, 2:, 1:-1] - u[:, :, :-2, 1:-1]) / 2  # d u / d row, (B, 2, H-2, W-2)
    d_col = (u[:, :, 1:-1, 2:] - u[:, :, 1:-1, :-2]) / 2  # d u / d col
    det = (1 + d_row[:, 0]) * (1 + d_col[:, 1]) - d_col[:, 0] * d_row[:, 1]
    return det[0] if single else det


def identity_grid(shape: Sequence[int], device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel coordinates relative to the patch centre, (2, H, W): channel 0 row - (H-1)/2, channel 1 col - (W-1)/2."""
    h, w = int(shape[0]), int(shape[1])
    rows = torch.arange(h, device=device, dtype=dtype) - (h - 1) / 2
    cols = torch.arange(w, device=device, dtype=dtype) - (w - 1) / 2
    return torch.stack(torch.meshgrid(rows, cols, indexing="ij"), dim=0)


def affine_field(forward: np.ndarray, shape: Sequence[int], device=None) -> torch.Tensor:
    """DDF (n, 2, H, W) moving the content by forward matrices (n, 2, 2) about the centre: ``(F^-1 - I)(p - c)``.

    F maps a content point q to ``c + F (q - c)`` in (row, col) coordinates, c the patch centre; the field is its
    pull-back, so the content area is multiplied by det F.
    """
    # Callers write F as I + (terms that vanish at magnitude 0), and inv(I) is exactly I: magnitude 0 gives exactly
    # the zero field.
    pull = torch.as_tensor(np.linalg.inv(forward) - np.eye(2), dtype=torch.float32, device=device)
    return torch.einsum("nij,jhw->nihw", pull, identity_grid(shape, device))


# ----------------------------------------------------------------------------------------------------------------
# The 8 flips / quarter turns of a square patch (the dihedral group D4)

DIHEDRAL = 8


def dihedral_index(size: int, device=None) -> torch.Tensor:
    """(8, size * size) int64: row k lists, for each output pixel, the flat input pixel that ``dihedral(., k)`` reads."""
    base = torch.arange(size * size, device=device).view(size, size)
    maps = []
    for k in range(DIHEDRAL):
        m = torch.rot90(base, k % 4, dims=(-2, -1))
        maps.append((m.flip(-1) if k >= 4 else m).reshape(-1))
    return torch.stack(maps)


def dihedral(x: torch.Tensor, k: torch.Tensor | int) -> torch.Tensor:
    """Apply dihedral element k to each image: ``k % 4`` quarter turns counter-clockwise as displayed
    (``torch.rot90(x, k % 4, dims=(-2, -1))``), THEN a left-right flip (``flip(-1)``) if ``k >= 4``.

    So k = 0..3 are the rotations by 0, 90, 180, 270 degrees and k = 4..7 are the reflections
    ``flip(rot90(x, k - 4))``. Reflections are their own inverses; rotation k is undone by ``(4 - k) % 4``
    (``dihedral_inverse``).

    x (B, C, H, W) with H == W when any k is odd; k (B,) integers in 0..7, or one int for all. Returns (B, C, H, W).
    Batched: every item's permutation is one ``gather`` (no loop over items).
    """
    if isinstance(k, int):
        k = k % DIHEDRAL
        y = torch.rot90(x, k % 4, dims=(-2, -1))
        return y.flip(-1) if k >= 4 else y
    b, c, h, w = x.shape
    k = torch.as_tensor(k, device=x.device).long().reshape(-1)
    if k.numel() != b:
        raise ValueError(f"k has {k.numel()} entries for {b} images")
    if h != w:
        raise ValueError(f"per-item dihedral elements need square images, got {h}x{w}")
    index = dihedral_index(h, x.device)[k % DIHEDRAL]  # (B, H*W)
    out = x.reshape(b, c, h * w).gather(-1, index[:, None, :].expand(b, c, h * w))
    return out.view(b, c, h, w)


def dihedral_inverse(k: torch.Tensor | int) -> torch.Tensor | int:
    """The element undoing k: ``dihedral(dihedral(x, k), dihedral_inverse(k)) == x``."""
    if isinstance(k, int):
        k = k % DIHEDRAL
        return k if k >= 4 else (4 - k) % 4
    k = torch.as_tensor(k).long() % DIHEDRAL
    return torch.where(k >= 4, k, (4 - k) % 4)
