"""The synthetic-shape sanity check: shapes warped by a known diffeomorphism with consistent labels."""

import numpy as np
import pytest
import torch

from bundle.benchmarks.synthetic import (
    SHAPES,
    SYNTHETIC_MAX_DEGREES,
    registration_scores,
    shape_image,
    shape_mask,
    synthetic_family,
    synthetic_pairs,
)
from bundle.augment import Rotation
from bundle.fields import jacobian_determinant, warp

N, S = 10, 64
KEYS = ("moving_image", "moving_mask", "fixed_image", "fixed_mask", "true_ddf")


@pytest.fixture(scope="module")
def pairs():
    return synthetic_pairs(N, seed=0, size=S)


def test_shapes_and_dtypes(pairs):
    channels = {"moving_image": 3, "moving_mask": 1, "fixed_image": 3, "fixed_mask": 1, "true_ddf": 2}
    for key, c in channels.items():
        assert pairs[key].shape == (N, c, S, S), key
        assert pairs[key].dtype == torch.float32, key
    assert isinstance(pairs["shape"], list) and len(pairs["shape"]) == N
    for key in ("moving_image", "fixed_image"):
        assert pairs[key].min() >= 0 and pairs[key].max() <= 1


def test_deterministic_under_seed(pairs):
    again = synthetic_pairs(N, seed=0, size=S)
    for key in KEYS:
        assert torch.equal(again[key], pairs[key]), key
    assert again["shape"] == pairs["shape"]
    other = synthetic_pairs(3, seed=1, size=S)
    assert not torch.equal(other["true_ddf"], pairs["true_ddf"][:3])


def test_masks_binary_and_nonempty(pairs):
    for key in ("moving_mask", "fixed_mask"):
        m = pairs[key]
        assert torch.all((m == 0) | (m == 1)), key
        assert (m.sum(dim=(1, 2, 3)) > 50).all(), key
        assert m[..., 0, :].sum() == 0 and m[..., -1, :].sum() == 0, key  # the shape stays inside the patch


def test_labels_consistent_with_true_field(pairs):
    assert torch.equal(warp(pairs["moving_mask"], pairs["true_ddf"], "nearest"), pairs["fixed_mask"])
    assert torch.allclose(warp(pairs["moving_image"], pairs["true_ddf"]), pairs["fixed_image"], atol=1e-5)
    scores = registration_scores(pairs["true_ddf"], pairs)
    assert torch.allclose(scores["dice"], torch.ones(N)) and torch.allclose(scores["epe"], torch.zeros(N))


def test_every_shape_present(pairs):
    assert set(pairs["shape"]) == set(SHAPES)


def test_warp_nontrivial_and_without_folding(pairs):
    ddf = pairs["true_ddf"]
    assert ddf.norm(dim=1).mean() > 0.5
    assert (jacobian_determinant(ddf) > 0).all()
    identity = registration_scores(torch.zeros_like(ddf), pairs)
    assert identity["dice"].mean() < 0.97  # the masks really moved


def test_default_family_has_moderate_rotation_only():
    rotations = [m for m in synthetic_family() if isinstance(m, Rotation)]
    assert len(rotations) == 1 and rotations[0].max_degrees == SYNTHETIC_MAX_DEGREES


def test_empty_family_gives_identity():
    p = synthetic_pairs(2, seed=4, size=32, family=[])
    assert torch.equal(p["true_ddf"], torch.zeros(2, 2, 32, 32))
    assert torch.equal(p["fixed_image"], p["moving_image"]) and torch.equal(p["fixed_mask"], p["moving_mask"])


@pytest.mark.parametrize("name", SHAPES)
def test_shape_mask_centred_and_sized(name):
    m = shape_mask(name, S, np.random.RandomState(7))
    assert m.shape == (1, S, S) and m.dtype == torch.float32
    assert torch.all((m == 0) | (m == 1))
    rr, cc = np.mgrid[:S, :S]
    area = float(m.sum())
    centroid = np.array([(rr * m[0].numpy()).sum(), (cc * m[0].numpy()).sum()]) / area
    assert np.abs(centroid - (S - 1) / 2).max() < 1.5
    assert 0.25 * np.pi * (S / 5) ** 2 < area < 1.2 * np.pi * (S / 4) ** 2


def test_shape_mask_random_rotation_and_errors():
    a = shape_mask("ellipse", S, np.random.RandomState(0))
    b = shape_mask("ellipse", S, np.random.RandomState(1))
    assert not torch.equal(a, b)
    assert torch.equal(shape_mask("star", S, 5), shape_mask("star", S, np.random.RandomState(5)))
    with pytest.raises(ValueError):
        shape_mask("hexagon")


def test_shape_image_looks_like_he():
    m = shape_mask("circle", S, 0)
    img = shape_image(m, np.random.RandomState(0))
    assert img.shape == (3, S, S) and img.dtype == torch.float32
    assert img.min() >= 0 and img.max() <= 1
    inside, outside = img[:, m[0] > 0].mean(dim=1), img[:, m[0] == 0].mean(dim=1)
    assert (inside < outside).all()  # dark shape on a bright background
    assert inside[2] > inside[1] and outside[0] > outside[1]  # purple nucleus, pink background
    assert img[:, m[0] > 0].std(dim=1).min() > 0.01  # texture, not a flat fill
