"""augment: realistic diffeomorphisms of cell-centred patches, as MONAI dictionary transforms.

Used to make many deformed views of each annotated cell (training ``DiffeoInvariantNet``) and to make registration
training pairs with a known true field (training ``DiffeoMappingNet``). Field conventions: ``bundle.fields``.

Geometry is about the patch centre ``c = ((H - 1) / 2, (W - 1) / 2)``. The affine members describe how the *content*
moves by a forward 2x2 matrix F in (row, col) coordinates, content point q -> c + F (q - c); their field is the
pull-back ``ddf(p) = (F^-1 - I)(p - c)`` (``fields.affine_field``), so the content area is multiplied by det F.
Positive rotation angles turn the content COUNTER-CLOCKWISE as displayed (row 0 at the top): ``Rotation`` by +90
degrees equals ``torch.rot90(x, 1, dims=(-2, -1))`` for a square patch.

Each deformation family member samples one random field with
``sample(shape, rng, device) -> (2, H, W)`` (or ``sample_batch(n, shape, rng, device) -> (n, 2, H, W)``) and has a
magnitude parameter for which 0 gives exactly the zero field. ``RandDiffeomorphismd`` composes the members into one
field and interpolates each key once, because repeated interpolation blurs.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from monai.data import MetaTensor
from monai.transforms import MapTransform, RandomizableTransform
from monai.utils import ensure_tuple_rep

from .fields import ScalingAndSquaring, affine_field, check_warp_mode, compose, identity_grid, warp

__all__ = [
    "Deformation",
    "AffineDeformation",
    "Rotation",
    "UniformStretch",
    "DirectionalStretch",
    "AreaPreservingStretch",
    "PartialStretch",
    "SmoothVelocityField",
    "RandDiffeomorphismd",
    "default_family",
]


def _unit_vectors(n: int, rng: np.random.RandomState) -> np.ndarray:
    """n random directions (n, 2) in (row, col) coordinates, uniform in angle."""
    angle = rng.uniform(0.0, np.pi, size=n)  # a direction and its opposite stretch the same way
    return np.stack([np.cos(angle), np.sin(angle)], axis=-1)


# ----------------------------------------------------------------------------------------------------------------
# The deformation family


class Deformation:
    """A family of random fields about the patch centre. Subclasses implement ``sample_batch``."""

    def sample_batch(self, n: int, shape: Sequence[int], rng: np.random.RandomState, device=None) -> torch.Tensor:
        """n independent fields (n, 2, H, W), float32, on ``device``."""
        raise NotImplementedError

    def sample(self, shape: Sequence[int], rng: np.random.RandomState, device=None) -> torch.Tensor:
        """One field (2, H, W) in pixels."""
        return self.sample_batch(1, shape, rng, device)[0]

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({args})"


class AffineDeformation(Deformation):
    """A random linear map of the content about the patch centre. Subclasses implement ``matrices``."""

    def matrices(self, n: int, rng: np.random.RandomState) -> np.ndarray:
        """n forward content maps F (n, 2, 2) in (row, col) coordinates, float64."""
        raise NotImplementedError

    def sample_batch(self, n, shape, rng, device=None):
        return affine_field(self.matrices(n, rng), shape, device)


class Rotation(AffineDeformation):
    """Rotation by an angle ~ U(-max_degrees, max_degrees); positive is counter-clockwise as displayed."""

    def __init__(self, max_degrees: float = 180.0):
        self.max_degrees = float(max_degrees)

    def matrices(self, n, rng):
        return self.matrix(rng.uniform(-self.max_degrees, self.max_degrees, size=n))

    @staticmethod
    def matrix(degrees) -> np.ndarray:
        """Forward content maps (n, 2, 2) for angles (n,) in degrees."""
        theta = np.deg2rad(np.atleast_1d(np.asarray(degrees, dtype=np.float64)))
        cos, sin = np.cos(theta), np.sin(theta)
        # Counter-clockwise as displayed: with rows pointing down, (row, col) -> (cos row - sin col, sin row + cos col).
        return np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], axis=-2)


class UniformStretch(AffineDeformation):
    """Isotropic scaling of the content by 1 + s, s ~ U(-max_factor, max_factor); area changes by (1 + s)^2."""

    def __init__(self, max_factor: float = 0.2):
        self.max_factor = float(max_factor)

    def matrices(self, n, rng):
        s = rng.uniform(-self.max_factor, self.max_factor, size=n)
        return (1 + s)[:, None, None] * np.eye(2)


class DirectionalStretch(AffineDeformation):
    """Stretch of the content by 1 + s along one random direction d only: F = I + s d d^T; area changes by 1 + s."""

    def __init__(self, max_factor: float = 0.3):
        self.max_factor = float(max_factor)

    def matrices(self, n, rng):
        d = _unit_vectors(n, rng)
        s = rng.uniform(-self.max_factor, self.max_factor, size=n)
        return np.eye(2) + s[:, None, None] * np.einsum("ni,nj->nij", d, d)


class AreaPreservingStretch(AffineDeformation):
    """Stretch by f = 1 + s along a random direction d and squeeze by 1 / f along the perpendicular e; det F = 1."""

    def __init__(self, max_factor: float = 0.3):
        self.max_factor = float(max_factor)

    def matrices(self, n, rng):
        d = _unit_vectors(n, rng)
        e = np.stack([-d[:, 1], d[:, 0]], axis=-1)
        f = 1 + rng.uniform(-self.max_factor, self.max_factor, size=n)
        dd, ee = np.einsum("ni,nj->nij", d, d), np.einsum("ni,nj->nij", e, e)
        return np.eye(2) + (f - 1)[:, None, None] * dd + (1 / f - 1)[:, None, None] * ee


class PartialStretch(Deformation):
    """Stretch of one side of the cell only: the half-plane beyond the centre along a random direction d.

    Along d the pull-back is t -> t + a g(t), with t = (p - c) . d, a = 1 / (1 + s) - 1, s ~ U(-max_factor, max_factor)
    and g(t) = w (softplus(t / w) - log 2) a smooth ramp: about 0 behind the centre, about t beyond it, g(0) = 0 so
    the centre stays put. g' = sigmoid(t / w) is in (0, 1) and a > -1, so the map is monotone along d (Jacobian
    1 + a g'(t) > 0) and a diffeomorphism; far beyond the centre the content is stretched by 1 + s.

    Args:
        max_factor: largest |s|; must be < 1.
        width: softness w of the transition across the centre, in pixels.
    """

    def __init__(self, max_factor: float = 0.3, width: float = 8.0):
        if not 0 <= max_factor < 1:
            raise ValueError(f"max_factor must be in [0, 1), got {max_factor}")
        self.max_factor = float(max_factor)
        self.width = float(width)

    def parameters(self, n: int, rng: np.random.RandomState) -> tuple[np.ndarray, np.ndarray]:
        """n random directions d (n, 2) in (row, col) coordinates and stretch factors s (n,)."""
        return _unit_vectors(n, rng), rng.uniform(-self.max_factor, self.max_factor, size=n)

    def field(self, directions: np.ndarray, factors: np.ndarray, shape: Sequence[int], device=None) -> torch.Tensor:
        """DDF (n, 2, H, W) stretching the content by 1 + factors beyond the centre along directions."""
        d = torch.as_tensor(directions, dtype=torch.float32, device=device)
        a = torch.as_tensor(1 / (1 + np.asarray(factors)) - 1, dtype=torch.float32, device=device)
        t = torch.einsum("ni,ihw->nhw", d, identity_grid(shape, device))
        g = self.width * (F.softplus(t / self.width) - math.log(2.0))
        return (a[:, None, None] * g)[:, None] * d[:, :, None, None]

    def sample_batch(self, n, shape, rng, device=None):
        return self.field(*self.parameters(n, rng), shape, device)


class SmoothVelocityField(Deformation):
    """A random stationary velocity field v, exponentiated by scaling and squaring (``fields.ScalingAndSquaring``):
    invertible, exp(-v) is its inverse.

    v is Gaussian white noise smoothed (periodically) by a Gaussian of std ``sigma`` pixels, scaled so that
    max |v| = ``magnitude`` pixels for each field. The noise comes from a torch generator on ``device`` seeded from ``rng``, so the field is
    made where it is used (CPU and CUDA give different, each deterministic, fields).
    """

    def __init__(self, magnitude: float = 2.0, sigma: float = 8.0, num_steps: int = 7):
        self.magnitude = float(magnitude)
        self.sigma = float(sigma)
        self.num_steps = int(num_steps)
        self._exp = ScalingAndSquaring(self.num_steps)

    def sample_velocity(self, n, shape, rng, device=None) -> torch.Tensor:
        """n velocity fields (n, 2, H, W), max |v| = magnitude pixels each."""
        h, w = int(shape[0]), int(shape[1])
        seed = int(rng.randint(0, 2**31 - 1))
        gen = torch.Generator(device=torch.device(device or "cpu")).manual_seed(seed)
        v = torch.randn((n, 2, h, w), generator=gen, device=device)
        if self.sigma > 0:
            # Gaussian smoothing as a product in Fourier space: several times faster than a 6-sigma-wide convolution
            # on CPU. The smoothed noise is periodic across the patch, which is harmless for random noise.
            fr = torch.fft.fftfreq(h, device=device)[:, None]
            fc = torch.fft.rfftfreq(w, device=device)[None, :]
            gain = torch.exp(-2 * math.pi**2 * self.sigma**2 * (fr**2 + fc**2))
            v = torch.fft.irfft2(torch.fft.rfft2(v) * gain, s=(h, w))
        peak = v.norm(dim=1).amax(dim=(1, 2)).clamp_min(1e-12)
        return v * (self.magnitude / peak)[:, None, None, None]

    def exp(self, velocity: torch.Tensor) -> torch.Tensor:
        """DDF (B, 2, H, W) of the flow of a stationary velocity field (B, 2, H, W)."""
        return self._exp(velocity)

    def sample_batch(self, n, shape, rng, device=None):
        return self.exp(self.sample_velocity(n, shape, rng, device))


def default_family() -> list[Deformation]:
    """A realistic family for cell patches: any orientation, moderate stretches, a gentle smooth wobble."""
    return [
        Rotation(max_degrees=180),
        UniformStretch(max_factor=0.1),
        DirectionalStretch(max_factor=0.15),
        AreaPreservingStretch(max_factor=0.2),
        PartialStretch(max_factor=0.2),
        SmoothVelocityField(magnitude=2.0, sigma=8.0),
    ]


# ----------------------------------------------------------------------------------------------------------------
# The dictionary transform


class RandDiffeomorphismd(RandomizableTransform, MapTransform):
    """Warp the image and every label key by one random diffeomorphism composed from ``family``.

    Each key is (C, H, W), or (B, C, H, W) for a batch (then B independent fields, each applied with probability
    ``prob``). All keys share H, W (and B). The members are sampled and composed in list order (the first acts first)
    into one DDF, and each key is interpolated once with its own ``mode``. The last field, (2, H, W) or (B, 2, H, W),
    zero where nothing was applied, is kept in ``last_ddf`` (the true field for registration training).

    Args:
        keys: keys to warp.
        family: deformation family members (``default_family()`` when None).
        mode: "bilinear" or "nearest", one for all keys or one per key ("nearest" keeps masks binary).
        padding_mode: "border", "zeros" or "reflection", one for all keys or one per key.
        prob: probability of deforming an item.
        allow_missing_keys: skip missing keys instead of raising.
    """

    def __init__(
        self,
        keys,
        family: Sequence[Deformation] | None = None,
        mode: str | Sequence[str] = "bilinear",
        padding_mode: str | Sequence[str] = "border",
        prob: float = 1.0,
        allow_missing_keys: bool = False,
    ):
        MapTransform.__init__(self, keys, allow_missing_keys)
        RandomizableTransform.__init__(self, prob)
        self.family = list(default_family() if family is None else family)
        self.mode = ensure_tuple_rep(mode, len(self.keys))
        self.padding_mode = ensure_tuple_rep(padding_mode, len(self.keys))
        for m, p in zip(self.mode, self.padding_mode):
            check_warp_mode(m, p)  # fail at construction (config parsing), not at the first batch
        self.last_ddf: torch.Tensor | None = None
        self._apply = np.zeros(0, dtype=bool)

    def randomize(self, n: int) -> None:  # type: ignore[override]
        self._apply = self.R.rand(n) < self.prob
        self._do_transform = bool(self._apply.any())

    def sample_ddf(self, n: int, shape: Sequence[int], device=None) -> torch.Tensor:
        """One composed field per item (n, 2, H, W), drawn from this transform's random state."""
        fields, linear = [], None
        for member in self.family:
            if isinstance(member, AffineDeformation):
                # A run of affine members is one matrix product (later members act last): exact, and one field
                # composition (an interpolation of the field) per run instead of one per member.
                f = member.matrices(n, self.R)
                linear = f if linear is None else f @ linear
                continue
            if linear is not None:
                fields.append(affine_field(linear, shape, device))
                linear = None
            fields.append(member.sample_batch(n, shape, self.R, device))
        if linear is not None:
            fields.append(affine_field(linear, shape, device))
        ddf = fields[0] if fields else torch.zeros((n, 2, *shape), device=device)
        for u in fields[1:]:
            ddf = compose(ddf, u)
        return ddf

    def __call__(self, data: Mapping[Hashable, torch.Tensor]) -> dict[Hashable, torch.Tensor]:
        d = dict(data)
        keys = list(self.key_iterator(d))
        if not keys:
            return d
        first = torch.as_tensor(d[keys[0]])
        batched = first.ndim == 4
        n, shape, device = (first.shape[0] if batched else 1), tuple(first.shape[-2:]), first.device

        self.randomize(n)
        ddf = torch.zeros((n, 2, *shape), device=device)
        if self._do_transform:
            idx = torch.as_tensor(np.flatnonzero(self._apply), device=device)
            ddf[idx] = self.sample_ddf(len(idx), shape, device)
        self.last_ddf = ddf if batched else ddf[0]
        if not self._do_transform:
            return d

        apply = torch.as_tensor(self._apply, device=device)[:, None, None, None]
        for key, mode, padding in self.key_iterator(d, self.mode, self.padding_mode):
            x = d[key]
            plain = x.as_tensor() if isinstance(x, MetaTensor) else torch.as_tensor(x)
            if plain.ndim != (4 if batched else 3) or tuple(plain.shape[-2:]) != shape:
                raise ValueError(f"key {key!r}: shape {tuple(plain.shape)} does not match {tuple(first.shape)}")
            x4 = plain if batched else plain[None]
            out = warp(x4.float(), ddf.to(x4.device), mode, padding)
            if not plain.is_floating_point():
                out = out.round()
            out = torch.where(apply.to(x4.device), out.to(plain.dtype), x4)
            out = out if batched else out[0]
            d[key] = MetaTensor(out, meta=x.meta) if isinstance(x, MetaTensor) else out
        return d
