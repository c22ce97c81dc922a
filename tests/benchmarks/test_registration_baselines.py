"""Classical registration baselines: field conventions checked on known translations (non-square, asymmetric)."""

import numpy as np
import pytest
import torch
from scipy.ndimage import gaussian_filter

from bundle.benchmarks.baselines import registration as baselines
from bundle.benchmarks.baselines.registration import ants_available, ants_register, demons_register
from bundle.fields import warp

H, W = 40, 64  # non-square on purpose: a row/col swap or a transposed array cannot pass
DY, DX = 3.0, -5.0  # different signs and sizes along the two axes


def _blob(shape, centre, radii=(7.0, 10.0)):
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    return ((((rr - centre[0]) / radii[0]) ** 2 + ((cc - centre[1]) / radii[1]) ** 2) <= 1).astype(np.float32)


def _rgb(mask: np.ndarray) -> torch.Tensor:
    """(1, 3, H, W): dark blob on a bright background, channels differing (registration uses the channel mean)."""
    soft = gaussian_filter(mask, 1.0)
    bg, fg = np.array([0.92, 0.72, 0.85]), np.array([0.35, 0.20, 0.55])
    img = bg[:, None, None] * (1 - soft) + fg[:, None, None] * soft
    return torch.from_numpy(img.astype(np.float32))[None]


def _centroid(mask: np.ndarray) -> np.ndarray:
    rr, cc = np.mgrid[: mask.shape[0], : mask.shape[1]]
    return np.array([(rr * mask).sum(), (cc * mask).sum()]) / mask.sum()


@pytest.fixture(scope="module")
def translated_pair():
    """Moving blob off-centre at (17, 27); fixed = the same blob moved by (DY, DX) rows/cols."""
    moving_mask = _blob((H, W), (17, 27))
    fixed_mask = _blob((H, W), (17 + DY, 27 + DX))
    return moving_mask, fixed_mask, _rgb(moving_mask), _rgb(fixed_mask)


def _check_translation(ddf, pair):
    moving_mask, fixed_mask, _, _ = pair
    assert ddf.shape == (1, 2, H, W) and ddf.dtype == torch.float32
    warped = warp(torch.from_numpy(moving_mask)[None, None], ddf, "nearest")[0, 0].numpy()
    assert np.abs(_centroid(warped) - _centroid(fixed_mask)).max() < 1.0
    dice = 2 * (warped * fixed_mask).sum() / (warped.sum() + fixed_mask.sum())
    assert dice > 0.85
    # Pull convention, (row, col) channels: at the fixed blob's centre the field points back to the moving blob.
    u = ddf[0, :, int(17 + DY), int(27 + DX)].numpy()
    assert u[0] < -1.5 and u[1] > 2.5, u


def test_demons_recovers_translation(translated_pair):
    _, _, moving, fixed = translated_pair
    _check_translation(demons_register(moving, fixed), translated_pair)


def test_demons_without_histogram_matching(translated_pair):
    _, _, moving, fixed = translated_pair
    _check_translation(demons_register(moving, fixed, histogram_matching=False), translated_pair)


def test_demons_identical_images_give_zero_field(translated_pair):
    _, _, moving, _ = translated_pair
    ddf = demons_register(moving, moving.clone())
    assert ddf.abs().mean() < 0.1


def test_demons_batch_shape_and_dtype(translated_pair):
    _, _, moving, fixed = translated_pair
    ddf = demons_register(torch.cat([moving, fixed]), torch.cat([fixed, moving]), iterations=10)
    assert ddf.shape == (2, 2, H, W) and ddf.dtype == torch.float32
    # the second pair is the inverse translation: the field points the other way
    c = (int(17 + DY), int(27 + DX))
    assert ddf[0, 1, c[0], c[1]] > 0 and ddf[1, 1, 17, 27] < 0


def test_demons_rejects_mismatched_pairs(translated_pair):
    _, _, moving, fixed = translated_pair
    with pytest.raises(ValueError):
        demons_register(moving, fixed[..., :32])


def test_demons_improves_synthetic_pairs():
    from bundle.benchmarks.synthetic import registration_scores, synthetic_pairs

    pairs = synthetic_pairs(4, seed=3)
    ddf = demons_register(pairs["moving_image"], pairs["fixed_image"], iterations=50)
    identity = registration_scores(torch.zeros_like(ddf), pairs)
    demons = registration_scores(ddf, pairs)
    assert demons["dice"].mean() > identity["dice"].mean() + 0.05
    assert demons["epe"].mean() < identity["epe"].mean()


def test_ants_missing_raises_clear_error(monkeypatch, translated_pair):
    real = baselines.importlib.import_module

    def fake(name, *args, **kwargs):
        if name == "ants":
            raise ImportError("no ants")
        return real(name, *args, **kwargs)

    monkeypatch.setattr(baselines.importlib, "import_module", fake)
    assert not ants_available()
    _, _, moving, fixed = translated_pair
    with pytest.raises(RuntimeError, match="pip install antspyx"):
        ants_register(moving, fixed)


@pytest.mark.skipif(not ants_available(), reason="antspyx is not installed")
@pytest.mark.parametrize("kind", ["SyNOnly", "SyN"])
def test_ants_recovers_translation(translated_pair, kind):
    _, _, moving, fixed = translated_pair
    _check_translation(ants_register(moving, fixed, type_of_transform=kind), translated_pair)


@pytest.mark.skipif(not ants_available(), reason="antspyx is not installed")
def test_ants_needs_a_positive_seed(translated_pair):
    _, _, moving, fixed = translated_pair
    with pytest.raises(ValueError, match="positive"):
        ants_register(moving, fixed, random_seed=0)
