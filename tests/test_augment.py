"""Specification of ``bundle.augment`` (the random diffeomorphism family and ``RandDiffeomorphismd``) and of the
field utilities of ``bundle.fields`` it builds on."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml
from monai.bundle import ConfigParser
from monai.data import MetaTensor
from monai.transforms import Compose

from bundle.augment import (
    AffineDeformation,
    AreaPreservingStretch,
    DirectionalStretch,
    PartialStretch,
    RandDiffeomorphismd,
    Rotation,
    SmoothVelocityField,
    UniformStretch,
    default_family,
)
from bundle.fields import affine_field, compose, jacobian_determinant, warp

P = 96
SHAPE = (P, P)


def disk(radius: float = 20.0, size: int = P) -> torch.Tensor:
    """Binary disk (1, H, W) at the patch centre."""
    r, c = torch.meshgrid(torch.arange(size) - (size - 1) / 2, torch.arange(size) - (size - 1) / 2, indexing="ij")
    return ((r**2 + c**2) <= radius**2).float()[None]


def square_item(size: int = P) -> dict[str, torch.Tensor]:
    """A bright off-centre square in a dim image, the same square as a mask, and a smooth ramp."""
    mask = torch.zeros(1, size, size)
    mask[:, 30:60, 40:70] = 1
    image = 0.1 + 0.8 * mask.repeat(3, 1, 1)
    ramp = torch.linspace(-1, 1, size)[None, None, :].expand(1, size, size).clone()
    return {"image": image, "mask": mask, "ramp": ramp}


def iou(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a & b).sum() / (a | b).sum())


# ---------------------------------------------------------------------------------------------------------------
# Family members


ZERO_MEMBERS = [
    Rotation(max_degrees=0),
    UniformStretch(max_factor=0),
    DirectionalStretch(max_factor=0),
    AreaPreservingStretch(max_factor=0),
    PartialStretch(max_factor=0),
    SmoothVelocityField(magnitude=0),
]


@pytest.mark.parametrize("member", ZERO_MEMBERS, ids=lambda m: type(m).__name__)
def test_zero_magnitude_is_exactly_the_zero_field(member):
    u = member.sample(SHAPE, np.random.RandomState(0), "cpu")
    assert u.shape == (2, *SHAPE)
    assert torch.count_nonzero(u) == 0


def test_zero_magnitude_family_is_the_identity_transform():
    item = square_item()
    item["image"] = torch.rand(3, P, P)
    t = RandDiffeomorphismd(["image", "mask", "ramp"], ZERO_MEMBERS, mode=["bilinear", "nearest", "bilinear"])
    out = t.set_random_state(0)(item)
    for key in item:
        torch.testing.assert_close(out[key], item[key], atol=1e-5, rtol=0)


@pytest.mark.parametrize("member", default_family(), ids=lambda m: type(m).__name__)
def test_members_draw_only_from_the_given_random_state(member):
    a = member.sample(SHAPE, np.random.RandomState(0), "cpu")
    torch.manual_seed(123)  # the global torch state must not matter
    b = member.sample(SHAPE, np.random.RandomState(0), "cpu")
    assert torch.equal(a, b)
    rng = np.random.RandomState(0)
    first, second = member.sample(SHAPE, rng, "cpu"), member.sample(SHAPE, rng, "cpu")
    assert not torch.allclose(first, second, atol=1e-3)


def test_rotation_by_90_degrees_is_counter_clockwise_as_displayed():
    x = torch.rand(1, 2, P, P)  # asymmetric
    out = warp(x, affine_field(Rotation.matrix(90), SHAPE))
    torch.testing.assert_close(out, torch.rot90(x, 1, dims=(-2, -1)), atol=1e-4, rtol=0)
    assert (out - torch.rot90(x, -1, dims=(-2, -1))).abs().mean() > 0.1


def test_rotation_matrices_are_rotations_within_the_range():
    f = Rotation(max_degrees=30).matrices(100, np.random.RandomState(0))
    np.testing.assert_allclose(f @ f.transpose(0, 2, 1), np.broadcast_to(np.eye(2), f.shape), atol=1e-12)
    angles = np.degrees(np.arctan2(f[:, 1, 0], f[:, 0, 0]))
    assert np.abs(angles).max() <= 30 and np.abs(angles).max() > 20


def mask_area_after(member: AffineDeformation, seed: int) -> tuple[float, np.ndarray]:
    """Area ratio of the warped disk (nearest) and the forward matrix drawn by the same random numbers."""
    f = member.matrices(1, np.random.RandomState(seed))[0]
    u = member.sample(SHAPE, np.random.RandomState(seed), "cpu")
    m = disk(30.0)  # large enough that the pixel lattice does not quantise a few percent of area
    out = warp(m[None], u[None], "nearest")
    return float(out.sum() / m.sum()), f


def test_area_preserving_stretch_preserves_area_and_changes_shape():
    member = AreaPreservingStretch(max_factor=0.3)
    changed = 0
    for seed in range(6):
        ratio, f = mask_area_after(member, seed)
        assert np.linalg.det(f) == pytest.approx(1.0, abs=1e-12)
        assert ratio == pytest.approx(1.0, abs=0.03)
        changed += np.abs(np.linalg.svd(f, compute_uv=False) - 1).max() > 0.1
    assert changed >= 2  # the disk did become an ellipse in some draws


@pytest.mark.parametrize("member", [DirectionalStretch(0.3), UniformStretch(0.2)], ids=lambda m: type(m).__name__)
def test_stretches_change_area_by_their_determinant(member):
    dets = []
    for seed in range(6):
        ratio, f = mask_area_after(member, seed)
        dets.append(np.linalg.det(f))
        assert ratio == pytest.approx(dets[-1], rel=0.03)
    assert max(abs(d - 1) for d in dets) > 0.1  # not vacuous


def test_uniform_stretch_is_isotropic_and_directional_stretch_fixes_the_perpendicular():
    f = UniformStretch(0.2).matrices(5, np.random.RandomState(0))
    np.testing.assert_allclose(f[:, 0, 1], 0)
    np.testing.assert_allclose(f[:, 0, 0], f[:, 1, 1])
    f = DirectionalStretch(0.3).matrices(5, np.random.RandomState(0))
    eig = np.sort(np.linalg.eigvalsh(f), axis=1)  # symmetric: one eigenvalue 1 + s, the other exactly 1
    assert np.all(np.isclose(eig, 1.0).sum(axis=1) >= 1)


def test_partial_stretch_stretches_one_side_only_without_folding():
    member = PartialStretch(max_factor=0.9, width=4.0)
    d, s = member.parameters(4, np.random.RandomState(3))
    det = jacobian_determinant(member.field(d, s, SHAPE))  # (4, P-2, P-2)
    assert det.min() > 0
    t = torch.einsum("ni,ihw->nhw", torch.as_tensor(d, dtype=torch.float32), _centred_grid(P - 2))
    for i in range(4):
        behind, beyond = det[i][t[i] < -35], det[i][t[i] > 35]
        assert torch.allclose(behind, torch.ones(()), atol=1e-3)  # that side is only translated
        # the pull-back compresses by 1 / (1 + s), i.e. the content is stretched by 1 + s
        assert torch.allclose(beyond, torch.tensor(1 / (1 + s[i]), dtype=torch.float32), atol=1e-3)
    assert np.abs(s).max() > 0.3
    odd = member.field(d, s, (P - 1, P - 1))
    assert odd[:, :, (P - 2) // 2, (P - 2) // 2].abs().max() < 1e-5  # the cell centre stays put


def _centred_grid(size: int) -> torch.Tensor:
    r = torch.arange(size, dtype=torch.float32) - (size - 1) / 2
    return torch.stack(torch.meshgrid(r, r, indexing="ij"))


@pytest.mark.parametrize("seed", range(5))
def test_smooth_velocity_field_does_not_fold(seed):
    member = SmoothVelocityField()  # default magnitude 2 px, sigma 8 px
    u = member.sample_batch(4, SHAPE, np.random.RandomState(seed), "cpu")
    assert u.abs().max() > 0.5  # a real deformation
    assert jacobian_determinant(u).min() > 0


def test_smooth_velocity_field_inverse_is_exp_of_minus_v():
    member = SmoothVelocityField(magnitude=3.0)
    v = member.sample_velocity(4, SHAPE, np.random.RandomState(0), "cpu")
    assert v.norm(dim=1).amax(dim=(1, 2)) == pytest.approx([3.0] * 4, abs=1e-4)
    forward, backward = member.exp(v), member.exp(-v)
    assert forward.norm(dim=1).mean() > 1.0
    assert compose(forward, backward).norm(dim=1).mean() < 0.05
    assert compose(backward, forward).norm(dim=1).mean() < 0.05


def test_transform_composes_the_family_in_list_order():
    stretch, rotation = DirectionalStretch(0.3), Rotation(180)
    t = RandDiffeomorphismd(["image"], [stretch, rotation]).set_random_state(0)
    rng = np.random.RandomState(0)  # the same random numbers, drawn member by member
    expected = compose(stretch.sample_batch(3, SHAPE, rng), rotation.sample_batch(3, SHAPE, rng))
    inner = (slice(None), slice(None), slice(25, -25), slice(25, -25))  # away from border padding of the fields
    torch.testing.assert_close(t.sample_ddf(3, SHAPE)[inner], expected[inner], atol=1e-3, rtol=0)


def test_jacobian_determinant_of_known_fields():
    assert torch.allclose(jacobian_determinant(torch.zeros(2, 2, 10, 12)), torch.ones(2, 8, 10))
    stretched = affine_field(np.diag([2.0, 1.5])[None], (10, 12))  # pull-back of a content map with det 3
    assert torch.allclose(jacobian_determinant(stretched[0]), torch.full((8, 10), 1 / 3))
    fold = affine_field(np.diag([-1.0, 1.0])[None], (10, 12))  # a mirror is not a diffeomorphism of the plane
    assert (jacobian_determinant(fold) <= 0).all()


def test_compose_applies_first_then_second():
    x = torch.rand(1, 1, P, P)
    a = affine_field(Rotation.matrix(90), SHAPE)
    b = affine_field(np.diag([1.0, 1.25])[None], SHAPE)
    once = warp(x, compose(a, b))
    twice = warp(warp(x, a), b)
    inner = (slice(None), slice(None), slice(20, -20), slice(20, -20))  # away from border padding
    torch.testing.assert_close(once[inner], twice[inner], atol=0.05, rtol=0)
    assert (once - warp(x, compose(b, a)))[inner].abs().mean() > 0.05  # order matters


# ---------------------------------------------------------------------------------------------------------------
# The dictionary transform


def make_transform(**kwargs) -> RandDiffeomorphismd:
    kwargs.setdefault("mode", ["bilinear", "nearest", "bilinear"])
    return RandDiffeomorphismd(["image", "mask", "ramp"], default_family(), **kwargs)


@pytest.mark.parametrize("seed", range(4))
def test_image_and_mask_stay_aligned_and_mask_stays_binary(seed):
    item = square_item()
    out = make_transform().set_random_state(seed)(item)
    bright, mask = out["image"][0] > 0.5, out["mask"][0] > 0.5
    assert iou(bright, mask) > 0.9
    assert set(out["mask"].unique().tolist()) <= {0.0, 1.0}
    assert iou(mask, item["mask"][0] > 0.5) < 0.9  # it did move
    assert out["ramp"].min() >= -1 and out["ramp"].max() <= 1
    assert out["image"].shape == (3, P, P) and out["mask"].shape == (1, P, P)


def test_per_key_modes():
    item = square_item()
    out = make_transform(mode=["bilinear", "nearest", "bilinear"]).set_random_state(0)(item)
    values = out["image"][0].unique()
    assert ((values > 0.15) & (values < 0.85)).any()  # bilinear blends the square's edge
    assert set(out["mask"].unique().tolist()) == {0.0, 1.0}


def test_last_ddf_is_the_field_that_was_applied():
    item = square_item()
    t = make_transform()
    out = t.set_random_state(1)(item)
    assert t.last_ddf.shape == (2, P, P)
    torch.testing.assert_close(out["ramp"], warp(item["ramp"][None], t.last_ddf[None])[0])
    assert jacobian_determinant(t.last_ddf).min() > 0


def test_same_seed_same_output_different_seed_different_output():
    item = square_item()
    torch.manual_seed(0)
    a = make_transform().set_random_state(5)(item)
    torch.manual_seed(1)  # the global torch state must not matter
    b = make_transform().set_random_state(5)(item)
    c = make_transform().set_random_state(6)(item)
    for key in item:
        assert torch.equal(a[key], b[key])
    assert not torch.equal(a["image"], c["image"])


def test_compose_set_random_state_reaches_the_transform():
    item = square_item()
    a = Compose([make_transform()]).set_random_state(3)(item)
    b = Compose([make_transform()]).set_random_state(3)(item)
    assert torch.equal(a["mask"], b["mask"])


def test_batch_mode_samples_independent_fields():
    item = {k: v[None].repeat(4, 1, 1, 1) for k, v in square_item().items()}
    t = make_transform()
    out = t.set_random_state(0)(item)
    assert out["image"].shape == (4, 3, P, P) and t.last_ddf.shape == (4, 2, P, P)
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.equal(out["image"][i], out["image"][j])
        assert iou(out["image"][i, 0] > 0.5, out["mask"][i, 0] > 0.5) > 0.9


def test_batch_mode_prob_applies_per_item():
    item = {k: v[None].repeat(16, 1, 1, 1) for k, v in square_item().items()}
    t = make_transform(prob=0.5)
    out = t.set_random_state(0)(item)
    unchanged = [torch.equal(out["image"][i], item["image"][i]) for i in range(16)]
    zero_field = [not t.last_ddf[i].any() for i in range(16)]
    assert unchanged == zero_field
    assert 0 < sum(unchanged) < 16


def test_prob_zero_returns_data_unchanged():
    item = square_item()
    t = make_transform(prob=0.0)
    out = t.set_random_state(0)(item)
    for key in item:
        assert out[key] is item[key]
    assert not t.last_ddf.any()


def test_missing_keys():
    item = square_item()
    del item["ramp"]
    out = make_transform(allow_missing_keys=True).set_random_state(0)(item)
    assert set(out) == {"image", "mask"}
    with pytest.raises(KeyError):
        make_transform()(item)


def test_unknown_mode_is_refused():
    with pytest.raises(ValueError):
        RandDiffeomorphismd(["image"], mode="bilinar")


def test_meta_tensor_and_integer_mask_keep_their_type():
    item = square_item()
    item["image"] = MetaTensor(item["image"], meta={"name": "cell-7"})
    item["mask"] = item["mask"].to(torch.uint8)
    out = make_transform().set_random_state(0)(item)
    assert isinstance(out["image"], MetaTensor) and out["image"].meta["name"] == "cell-7"
    assert out["mask"].dtype == torch.uint8 and set(out["mask"].unique().tolist()) == {0, 1}


YAML = """
augment:
  _target_: bundle.augment.RandDiffeomorphismd
  keys: [image, mask, ramp]
  mode: [bilinear, nearest, bilinear]
  family:
    - {_target_: bundle.augment.Rotation, max_degrees: 180}
    - {_target_: bundle.augment.AreaPreservingStretch, max_factor: 0.3}
    - {_target_: bundle.augment.SmoothVelocityField, magnitude: 2.0, sigma: 8.0}
"""


def test_yaml_declaration_parses_and_runs():
    parser = ConfigParser(yaml.safe_load(YAML))
    t = parser.get_parsed_content("augment")
    assert isinstance(t, RandDiffeomorphismd)
    assert [type(m) for m in t.family] == [Rotation, AreaPreservingStretch, SmoothVelocityField]
    assert t.family[2].sigma == 8.0 and t.mode == ("bilinear", "nearest", "bilinear")
    item = square_item()
    out = t.set_random_state(0)(item)
    assert iou(out["image"][0] > 0.5, out["mask"][0] > 0.5) > 0.9


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_stays_on_device():
    item = {k: v.cuda() for k, v in square_item().items()}
    t = make_transform()
    out = t.set_random_state(0)(item)
    assert all(v.is_cuda for v in out.values()) and t.last_ddf.is_cuda
    assert iou(out["image"][0] > 0.5, out["mask"][0] > 0.5) > 0.9
    batch = {k: v[None].repeat(8, 1, 1, 1) for k, v in item.items()}
    assert make_transform().set_random_state(0)(batch)["image"].is_cuda
