"""baselines: classical registration baselines for the registration benchmark.

The benchmark registers an archetype patch (moving) onto a new cell patch (fixed) and warps the archetype's labels.
Each baseline here has the contract of the learned ``DiffeoMappingNet``:

    register(moving (B, C, H, W), fixed (B, C, H, W)) -> ddf (B, 2, H, W) float32

in this project's convention (``bundle.fields``): pixels, channel 0 rows, channel 1 columns, pulling,
``warped(p) = moving(p + ddf(p))``, i.e. ``bundle.fields.warp(moving, ddf)`` is aligned with ``fixed``.
Images are registered as grey (mean over channels), one pair at a time (SimpleITK and ANTs work per image).

Field conventions of the toolkits (both verified by the translation tests in ``tests/test_registration_baselines.py`` on a
non-square asymmetric pair):

* SimpleITK (``DiffeomorphicDemonsRegistrationFilter.Execute(fixed, moving)``) returns a displacement field on the
  fixed image's grid that maps a fixed point x to the moving point ``x + d(x)``: a pull, like ours. Its vector
  components are in physical (x, y) order = (column, row); with unit spacing and zero origin (what
  ``sitk.GetImageFromArray`` gives) physical units are pixels. ``GetArrayFromImage`` returns (H, W, 2), so
  our ddf is ``stack([a[..., 1], a[..., 0]])``.
* ANTs (``ants.registration(fixed, moving)``) writes the forward warp ``fwdtransforms[0]``, a displacement field on
  the fixed grid in physical points; ``ants.apply_transforms(fixed, moving, fwdtransforms)`` samples the moving image
  at ``x + d(x)``: again a pull. ANTsPy images from numpy arrays index ``[row, col]`` as physical (x, y) = (row, col)
  (ANTsPy does not transpose), so the components come in (row, col) order already; the tests check that.
"""

from __future__ import annotations

import importlib
import os
import tempfile

import numpy as np
import torch

__all__ = ["demons_register", "ants_available", "ants_register"]


def _grey(x: torch.Tensor) -> np.ndarray:
    """(B, C, H, W) or (B, H, W) tensor -> (B, H, W) float32 numpy grey images (mean over channels)."""
    x = torch.as_tensor(x).detach().float().cpu()
    if x.ndim == 4:
        x = x.mean(dim=1)
    if x.ndim != 3:
        raise ValueError(f"expected (B, C, H, W) images, got shape {tuple(x.shape)}")
    return x.numpy().astype(np.float32, copy=False)


def _check_pair(moving: torch.Tensor, fixed: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    m, f = _grey(moving), _grey(fixed)
    if m.shape != f.shape:
        raise ValueError(f"moving {tuple(moving.shape)} and fixed {tuple(fixed.shape)} differ in batch or size")
    return m, f


def demons_register(
    moving: torch.Tensor,
    fixed: torch.Tensor,
    iterations: int = 100,
    sigma: float = 1.5,
    histogram_matching: bool = True,
) -> torch.Tensor:
    """Diffeomorphic demons (SimpleITK) of each moving image onto its fixed image.

    Args:
        moving, fixed: (B, C, H, W) float images; registered as grey (channel mean).
        iterations: demons iterations.
        sigma: standard deviation (pixels) of the Gaussian smoothing of the displacement field at each iteration.
        histogram_matching: first match the moving grey histogram to the fixed one (256 levels, 7 match points,
            threshold at mean intensity), as in the classical demons recipe.

    Returns:
        DDF (B, 2, H, W) float32 on ``moving``'s device: channel 0 rows, 1 columns, pull
        (``warp(moving, ddf)`` ~ ``fixed``).
    """
    import SimpleITK as sitk

    m_all, f_all = _check_pair(moving, fixed)
    out = np.zeros((m_all.shape[0], 2, *m_all.shape[1:]), np.float32)
    for i, (m, f) in enumerate(zip(m_all, f_all)):
        fixed_img = sitk.GetImageFromArray(f)  # spacing 1, origin 0: physical units are pixels
        moving_img = sitk.GetImageFromArray(m)
        if histogram_matching:
            matcher = sitk.HistogramMatchingImageFilter()
            matcher.SetNumberOfHistogramLevels(256)
            matcher.SetNumberOfMatchPoints(7)
            matcher.ThresholdAtMeanIntensityOn()
            moving_img = matcher.Execute(moving_img, fixed_img)  # (image, reference)
        demons = sitk.DiffeomorphicDemonsRegistrationFilter()
        demons.SetNumberOfIterations(int(iterations))
        demons.SetStandardDeviations(float(sigma))
        demons.SmoothDisplacementFieldOn()
        field = demons.Execute(fixed_img, moving_img)
        a = sitk.GetArrayFromImage(field)  # (H, W, 2): physical (x, y) = (col, row), pull
        out[i, 0] = a[..., 1]
        out[i, 1] = a[..., 0]
    return torch.from_numpy(out).to(torch.as_tensor(moving).device)


def ants_available() -> bool:
    """True when ``antspyx`` (module ``ants``) imports."""
    try:
        importlib.import_module("ants")
    except Exception:  # ImportError, or a broken binary install
        return False
    return True


def ants_register(moving: torch.Tensor, fixed: torch.Tensor, type_of_transform: str = "SyNOnly",
                  random_seed: int = 1) -> torch.Tensor:
    """ANTs registration (``ants.registration``, default ``SyNOnly``) of each moving image onto its fixed image.

    Same contract as :func:`demons_register`: (B, C, H, W) images in, DDF (B, 2, H, W) float32 out, channel 0 rows,
    1 columns, pull. ``random_seed`` (a positive integer: with 0, results varied from process to process as unseeded
    ones do) seeds ANTs' metric sampling, so results repeat. Raises ``RuntimeError`` when antspyx is not installed.
    """
    try:
        ants = importlib.import_module("ants")
    except Exception as e:
        raise RuntimeError("antspyx is not installed; pip install antspyx") from e
    # Unseeded, ANTs draws its affine stage's metric samples from the clock: "SyN" missed a 5 px translation in about
    # one process in seven. antspyx passes ``--random-seed`` only from ``ants.config._random_seed``; its public setter
    # (``set_ants_deterministic``) would also reseed numpy's global RNG and pin ITK to one thread, so the seed is set
    # here for this call alone.
    if random_seed < 1:
        raise ValueError(f"random_seed must be a positive integer, got {random_seed}")
    config = getattr(ants, "config", None)
    previous = getattr(config, "_random_seed", None)
    if config is not None:
        config._random_seed = int(random_seed)
    try:
        return _ants_fields(ants, moving, fixed, type_of_transform)
    finally:
        if config is not None:
            config._random_seed = previous


def _ants_fields(ants, moving: torch.Tensor, fixed: torch.Tensor, type_of_transform: str) -> torch.Tensor:
    """The loop behind :func:`ants_register`: one ``ants.registration`` per pair, its transforms as one pull DDF."""
    m_all, f_all = _check_pair(moving, fixed)
    out = np.zeros((m_all.shape[0], 2, *m_all.shape[1:]), np.float32)
    for i, (m, f) in enumerate(zip(m_all, f_all)):
        fixed_img = ants.from_numpy(np.ascontiguousarray(f, dtype=np.float32))  # spacing 1, origin 0, axes (row, col)
        moving_img = ants.from_numpy(np.ascontiguousarray(m, dtype=np.float32))
        with tempfile.TemporaryDirectory(prefix="ants_reg_") as tmp:
            reg = ants.registration(
                fixed=fixed_img, moving=moving_img, type_of_transform=type_of_transform, outprefix=os.path.join(tmp, "r")
            )
            fwd = list(reg["fwdtransforms"])
            if len(fwd) == 1 and fwd[0].endswith((".nii.gz", ".nii")):
                path = fwd[0]  # SyNOnly & co: the displacement field itself
            else:
                # Several transforms (e.g. "SyN" = affine + warp, or a pure affine): let antsApplyTransforms compose
                # them into one displacement field on the fixed grid.
                path = ants.apply_transforms(fixed_img, moving_img, fwd, compose=os.path.join(tmp, "c"))
            a = ants.image_read(path).numpy()  # (H, W, 2): components in physical axis order = (row, col), pull
            out[i, 0] = a[..., 0]
            out[i, 1] = a[..., 1]
    return torch.from_numpy(out).to(torch.as_tensor(moving).device)
