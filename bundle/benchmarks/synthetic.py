"""synthetic: the synthetic-shape sanity check of registration (the paper's Table II).

Simple shapes (circle, ellipse, triangle, square, star) drawn as H&E-like patches, each warped by a known random
diffeomorphism. Registering the original (moving, the "archetype") onto the warped copy (fixed, the "cell") can then
be scored against the known answer, without any annotation:

* ``true_ddf`` is the field that made the fixed patch: ``fixed = warp(moving, true_ddf)`` (pull, this project's
  convention, see ``bundle.fields``), so it is exactly what a registration method ``register(moving, fixed)``
  should return;
* ``fixed_mask = warp(moving_mask, true_ddf, "nearest")``: labels consistent with the fixed image.

The deformations come from ``bundle.augment.RandDiffeomorphismd`` with ``synthetic_family()`` by default: the
project's ``default_family()`` with its any-angle rotation (up to 180 degrees) replaced by a moderate one (up to
``SYNTHETIC_MAX_DEGREES`` = 20 degrees). Large rotations are the matching step's job (the archetype bank and the
dihedral search); the paper's sanity check used random diffeomorphisms of moderate size, which this mirrors. Pass
``family=bundle.augment.default_family()`` for the full family.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.ndimage import gaussian_filter
from skimage.draw import polygon as draw_polygon

from ..augment import Deformation, RandDiffeomorphismd, Rotation, default_family
from ..fields import warp

__all__ = [
    "SHAPES",
    "SYNTHETIC_MAX_DEGREES",
    "shape_mask",
    "shape_image",
    "synthetic_family",
    "synthetic_pairs",
    "registration_scores",
]

SHAPES = ("circle", "ellipse", "triangle", "square", "star")
SYNTHETIC_MAX_DEGREES = 20.0

BACKGROUND_RGB = (0.92, 0.72, 0.85)  # eosin pink
NUCLEUS_RGB = (0.35, 0.20, 0.55)  # haematoxylin purple


def _as_rng(rng) -> np.random.RandomState:
    """None / int seed / RandomState / Generator -> a RandomState."""
    if isinstance(rng, np.random.RandomState):
        return rng
    if isinstance(rng, np.random.Generator):
        return np.random.RandomState(int(rng.integers(0, 2**31 - 1)))
    return np.random.RandomState(rng)


def _polygon_mask(vertices: np.ndarray, size: int) -> np.ndarray:
    """Filled polygon with vertices (k, 2) in (row, col) pixel coordinates -> (size, size) bool."""
    out = np.zeros((size, size), bool)
    rr, cc = draw_polygon(vertices[:, 0], vertices[:, 1], shape=(size, size))
    out[rr, cc] = True
    return out


def shape_mask(name: str, size: int = 64, rng=None) -> torch.Tensor:
    """A binary shape centred in a (1, size, size) float patch.

    The size (radius, or circumradius for polygons) is uniform in [size / 5, size / 4]; everything but the circle gets
    a random rotation, the ellipse a random aspect ratio in [0.5, 0.8] and the star a random inner radius ratio.

    Args:
        name: one of ``SHAPES``.
        size: patch side in pixels.
        rng: None, an int seed, a ``np.random.RandomState`` or ``np.random.Generator``.
    """
    if name not in SHAPES:
        raise ValueError(f"unknown shape {name!r}; expected one of {SHAPES}")
    rng = _as_rng(rng)
    c = (size - 1) / 2
    r = rng.uniform(size / 5, size / 4)
    theta = rng.uniform(0, 2 * np.pi)
    rows, cols = np.mgrid[:size, :size].astype(np.float64)
    y, x = rows - c, cols - c
    if name == "circle":
        mask = y**2 + x**2 <= r**2
    elif name == "ellipse":
        b = r * rng.uniform(0.5, 0.8)
        u = np.cos(theta) * y + np.sin(theta) * x
        v = -np.sin(theta) * y + np.cos(theta) * x
        mask = (u / r) ** 2 + (v / b) ** 2 <= 1
    else:
        if name == "triangle":
            k, radii = 3, np.full(3, 1.15 * r)  # a triangle of circumradius r is small: enlarge it a little
        elif name == "square":
            k, radii = 4, np.full(4, r)
        else:  # star
            k = 10
            radii = np.where(np.arange(k) % 2 == 0, 1.1 * r, 1.1 * r * rng.uniform(0.45, 0.6))
        a = theta + 2 * np.pi * np.arange(k) / k
        mask = _polygon_mask(np.stack([c + radii * np.sin(a), c + radii * np.cos(a)], axis=-1), size)
    return torch.from_numpy(mask.astype(np.float32))[None]


def shape_image(mask: torch.Tensor, rng=None) -> torch.Tensor:
    """An H&E-like RGB patch (3, H, W) in [0, 1] for a mask (1, H, W): a dark purple shape on a pink background.

    The shape's edge is slightly blurred, both regions get a smooth random intensity variation (low-frequency shading,
    plus a finer "chromatin" texture inside the shape) and mild pixel noise, so intensity registration has edges and
    texture to work with.
    """
    rng = _as_rng(rng)
    m = torch.as_tensor(mask, dtype=torch.float32).reshape(-1, *mask.shape[-2:])[0].cpu().numpy()
    h, w = m.shape
    alpha = np.clip(gaussian_filter(m, 0.7), 0, 1)[None]  # soft edge

    def smooth_noise(sigma: float, amplitude: float) -> np.ndarray:
        z = gaussian_filter(rng.standard_normal((h, w)), sigma, mode="wrap")
        return amplitude * z / max(float(np.abs(z).max()), 1e-12)

    shading = smooth_noise(8.0, 0.06)[None]  # illumination / stain variation over the patch
    chromatin = smooth_noise(1.5, 0.08)[None]  # nuclear texture
    tint = rng.uniform(-0.04, 0.04, size=(3, 1, 1))  # stain colour variation between patches
    background = np.asarray(BACKGROUND_RGB)[:, None, None] + tint + shading
    nucleus = np.asarray(NUCLEUS_RGB)[:, None, None] + tint + shading + chromatin
    image = (1 - alpha) * background + alpha * nucleus + rng.normal(0, 0.015, size=(3, h, w))
    return torch.from_numpy(np.clip(image, 0, 1).astype(np.float32))


def synthetic_family() -> list[Deformation]:
    """``default_family()`` with the any-angle rotation replaced by one of at most ``SYNTHETIC_MAX_DEGREES``."""
    return [Rotation(SYNTHETIC_MAX_DEGREES) if isinstance(m, Rotation) else m for m in default_family()]


def synthetic_pairs(n: int, seed: int = 0, size: int = 64, family=None) -> dict:
    """n registration pairs with a known answer.

    Shapes cycle through ``SHAPES`` in a random order (so any n >= len(SHAPES) holds every shape); each pair is one
    shape drawn as an image (moving, the archetype) and the same image and mask warped by one random diffeomorphism
    (fixed, the cell), all pairs deformed in one batched ``RandDiffeomorphismd`` call. Deterministic for a seed.

    Returns:
        ``{"moving_image": (n, 3, S, S), "moving_mask": (n, 1, S, S), "fixed_image": (n, 3, S, S),
        "fixed_mask": (n, 1, S, S), "true_ddf": (n, 2, S, S), "shape": list[str]}``, float32, masks in {0, 1};
        ``fixed_image = warp(moving_image, true_ddf)`` and ``fixed_mask = warp(moving_mask, true_ddf, "nearest")``.
    """
    n = int(n)
    rng = np.random.RandomState(seed)
    offset = rng.randint(len(SHAPES))
    names = [SHAPES[(offset + k) % len(SHAPES)] for k in range(n)]
    names = [names[i] for i in rng.permutation(n)]
    masks, images = [], []
    for name in names:
        mask = shape_mask(name, size, rng)
        masks.append(mask)
        images.append(shape_image(mask, rng))
    moving_image = torch.stack(images) if n else torch.zeros((0, 3, size, size))
    moving_mask = torch.stack(masks) if n else torch.zeros((0, 1, size, size))

    transform = RandDiffeomorphismd(
        keys=["image", "mask"],
        family=synthetic_family() if family is None else family,
        mode=("bilinear", "nearest"),
        padding_mode="border",
    )
    transform.set_random_state(seed=int(rng.randint(0, 2**31 - 1)))
    out = transform({"image": moving_image, "mask": moving_mask})
    return {
        "moving_image": moving_image,
        "moving_mask": moving_mask,
        "fixed_image": out["image"].float(),
        "fixed_mask": out["mask"].float(),
        "true_ddf": transform.last_ddf.float(),
        "shape": names,
    }


def registration_scores(ddf: torch.Tensor, pairs: dict) -> dict:
    """Score predicted fields (n, 2, S, S) (moving -> fixed, pull) on ``synthetic_pairs`` output, per pair.

    Returns ``{"dice": (n,), "epe": (n,)}``: Dice of the moving mask warped by ``ddf`` (nearest) against the fixed
    mask, and the mean end-point error |ddf - true_ddf| in pixels over the fixed mask.
    """
    ddf = torch.as_tensor(ddf, dtype=torch.float32)
    warped = warp(pairs["moving_mask"], ddf, "nearest")
    fixed = pairs["fixed_mask"]
    inter = (warped * fixed).sum(dim=(1, 2, 3))
    dice = 2 * inter / (warped.sum(dim=(1, 2, 3)) + fixed.sum(dim=(1, 2, 3))).clamp_min(1e-8)
    err = (ddf - pairs["true_ddf"]).norm(dim=1)  # (n, S, S)
    epe = (err * fixed[:, 0]).sum(dim=(1, 2)) / fixed[:, 0].sum(dim=(1, 2)).clamp_min(1)
    return {"dice": dice, "epe": epe}
