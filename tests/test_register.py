"""The register + warp stages: dihedral pre-alignment, similarity metrics, label warping, the register() stage."""

import numpy as np
import pytest
import torch
from skimage.draw import ellipse

from bundle.networks.mapping import DiffeoMappingNet
from bundle.patches import angle_difference, orientation_from_ramp, orientation_ramp, principal_angle
from bundle.augment import Rotation, SmoothVelocityField
from bundle.fields import DIHEDRAL, affine_field, dihedral, dihedral_inverse, jacobian_determinant, warp
from bundle.register import (
    dihedral_align,
    mutual_information,
    normalized_cross_correlation,
    register,
    warp_labels,
)

P = 64


@pytest.fixture(autouse=True)
def one_thread():
    # On a CPU shared with other jobs, intra-op threads waiting on each other turn fractions of a second into minutes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def ellipse_mask(angle_deg=10.0, centre=(31.5, 31.5), axes=(14, 6), size=P) -> torch.Tensor:
    """(1, 1, size, size) float mask of an ellipse whose major axis is at angle_deg, counter-clockwise as displayed."""
    m = np.zeros((size, size), np.float32)
    # skimage's rotation turns the row axis towards the column axis; as displayed that is counter-clockwise for the
    # column (x) axis when the major axis is given as c_radius.
    rr, cc = ellipse(centre[0], centre[1], axes[1], axes[0], shape=m.shape, rotation=np.deg2rad(angle_deg))
    m[rr, cc] = 1
    return torch.from_numpy(m)[None, None]


def textured(n=1, seed=0, channels=3) -> torch.Tensor:
    """(n, C, P, P) in [0, 1]: smooth random texture plus an off-centre dark blob; no dihedral symmetry."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.rand((n, channels, P // 8, P // 8), generator=g)
    img = torch.nn.functional.interpolate(noise, size=(P, P), mode="bilinear", align_corners=False)
    img = 0.6 * img + 0.4 * torch.rand((n, channels, P, P), generator=g) * 0.2
    img[:, :, 10:22, 40:50] *= 0.3
    return img.clamp(0, 1)


def centroid(m: torch.Tensor) -> torch.Tensor:
    """(row, col) centroid of a (1, 1, H, W) weight image."""
    rows = torch.arange(m.shape[-2], dtype=torch.float32)[:, None]
    cols = torch.arange(m.shape[-1], dtype=torch.float32)[None, :]
    w = m[0, 0]
    return torch.stack([(w * rows).sum() / w.sum(), (w * cols).sum() / w.sum()])


# ----------------------------------------------------------------------------------------------------------------
# dihedral


def test_dihedral_convention():
    x = textured(2)
    assert torch.equal(dihedral(x, 1), torch.rot90(x, 1, dims=(-2, -1)))
    assert torch.equal(dihedral(x, 4), x.flip(-1))  # k = 4: a left-right flip, no turn
    assert torch.equal(dihedral(x, 5), torch.rot90(x, 1, dims=(-2, -1)).flip(-1))  # turn first, then flip
    # the tensor path (per-item k) agrees with the int path
    for k in range(DIHEDRAL):
        assert torch.equal(dihedral(x, torch.full((2,), k)), dihedral(x, k))


def test_dihedral_eight_distinct_and_invertible():
    x = textured(1)
    outs = [dihedral(x, k) for k in range(DIHEDRAL)]
    for i in range(DIHEDRAL):
        for j in range(i + 1, DIHEDRAL):
            assert not torch.equal(outs[i], outs[j]), (i, j)
    for k in range(DIHEDRAL):
        assert torch.equal(dihedral(outs[k], dihedral_inverse(k)), x)
    ks = torch.arange(DIHEDRAL)
    assert torch.equal(dihedral(dihedral(x.expand(8, -1, -1, -1), ks), dihedral_inverse(ks)), x.expand(8, -1, -1, -1))


def test_dihedral_batched_per_item():
    x = textured(5, seed=1)
    k = torch.tensor([3, 0, 6, 7, 1])
    out = dihedral(x, k)
    for i in range(5):
        assert torch.equal(out[i : i + 1], dihedral(x[i : i + 1], int(k[i])))


@pytest.mark.parametrize("metric", ["mi", "ncc"])
def test_dihedral_align_recovers_known_k(metric):
    arch = textured(DIHEDRAL, seed=2)
    k = torch.tensor([5, 0, 3, 7, 1, 6, 2, 4])
    cells = dihedral(arch, k)
    # a little independent noise on the cell so the match is not bit-exact
    cells = (cells + 0.02 * torch.randn(cells.shape, generator=torch.Generator().manual_seed(3))).clamp(0, 1)
    assert torch.equal(dihedral_align(arch, cells, metric), k)


def test_dihedral_align_follows_the_centre_cell_not_its_neighbours():
    """A horizontal nucleus with a large dark neighbour in one corner; the cell is the same nucleus turned upright,
    beside the same neighbour. Weighting all pixels alike, the neighbour decides (k = 0); the centred window turns the
    nucleus."""
    yy, xx = torch.meshgrid(torch.arange(64.0) - 31.5, torch.arange(64.0) - 31.5, indexing="ij")
    background = torch.full((64, 64), 0.9)
    background[:18, 30:] = 0.2  # the neighbour: larger than the nucleus, off-centre, moved by every k but 0
    horizontal = torch.where((xx / 12) ** 2 + (yy / 5) ** 2 <= 1, torch.tensor(0.3), background)
    upright = torch.where((xx / 5) ** 2 + (yy / 12) ** 2 <= 1, torch.tensor(0.3), background)
    arch, cell = horizontal.expand(1, 3, 64, 64), upright.expand(1, 3, 64, 64)
    assert int(dihedral_align(arch, cell, "mi", sigma=None)) == 0
    k = dihedral_align(arch, cell, "mi")
    turned = dihedral(arch, k)[0, 0]
    assert (turned[24:40, 30:34] < 0.5).all()  # the nucleus now lies along the rows, as in the cell


def test_dihedral_align_rejects_unknown_metric():
    x = textured(1)
    with pytest.raises(ValueError, match="mi"):
        dihedral_align(x, x, "ssd")


# ----------------------------------------------------------------------------------------------------------------
# metrics


def test_mutual_information_self_beats_noise():
    x = textured(1, seed=4, channels=1)[:, 0]
    noise = torch.rand(x.shape, generator=torch.Generator().manual_seed(5))
    mi = mutual_information(torch.cat([x, x]), torch.cat([x, noise]))
    assert mi.shape == (2,)
    assert mi[0] > 1.0 and mi[1] < 0.5 * mi[0]


def test_mutual_information_is_invariant_to_inversion_and_ncc_is_not():
    x = textured(1, seed=6, channels=1)[:, 0]
    mi_same, mi_inv = mutual_information(torch.cat([x, x]), torch.cat([x, 1 - x]))
    assert mi_inv == pytest.approx(mi_same.item(), rel=0.02)
    ncc = normalized_cross_correlation(torch.cat([x, x]), torch.cat([x, 1 - x]))
    assert ncc[0] == pytest.approx(1.0, abs=1e-4) and ncc[1] == pytest.approx(-1.0, abs=1e-4)


def test_mutual_information_mask_restricts_pixels():
    x = textured(1, seed=7, channels=1)[:, 0]
    y = x.clone()
    y[:, :, : P // 2] = torch.rand((1, P, P // 2), generator=torch.Generator().manual_seed(8))  # left half unrelated
    right = torch.zeros(P, P)
    right[:, P // 2 :] = 1
    assert mutual_information(x, y, mask=right) > mutual_information(x, y) + 0.2


# ----------------------------------------------------------------------------------------------------------------
# the warp machinery


def test_constant_field_translates_by_minus_ddf():
    blob = ellipse_mask(0.0, centre=(30.0, 33.0), axes=(6, 6))
    ddf = torch.zeros(1, 2, P, P)
    ddf[:, 0], ddf[:, 1] = 3.0, -5.0  # pull: out(p) = in(p + d), so the content moves by -d
    moved = warp_labels(blob, ddf, "mask")
    assert torch.allclose(centroid(moved), centroid(blob) - torch.tensor([3.0, -5.0]), atol=1e-3)


def test_rotation_field_90_equals_rot90():
    mask = ellipse_mask(20.0, centre=(28.0, 35.0))
    ddf = affine_field(Rotation.matrix(90.0), (P, P))
    assert torch.equal(warp_labels(mask, ddf, "mask"), torch.rot90(mask, 1, dims=(-2, -1)))


def test_rotation_field_30_turns_principal_axis():
    mask = ellipse_mask(10.0)
    before = principal_angle(mask)
    assert angle_difference(before, torch.tensor([10.0])) < 2
    after = principal_angle(warp_labels(mask, affine_field(Rotation.matrix(30.0), (P, P)), "mask"))
    assert angle_difference(after, before + 30) < 2


def test_warped_label_lands_where_the_image_lands():
    mask = ellipse_mask(35.0)
    image = (0.9 - 0.6 * mask).expand(1, 3, P, P)  # a dark cell on a bright background
    rng = np.random.RandomState(0)
    ddf = SmoothVelocityField(magnitude=5.0, sigma=8.0).sample_batch(1, (P, P), rng)
    assert ddf.abs().max() > 2  # a deformation that matters
    warped_image = warp(image, ddf)
    warped_mask = warp_labels(mask, ddf, "mask")
    dark = (warped_image.mean(1, keepdim=True) < 0.6).float()
    iou = (dark * warped_mask).sum() / ((dark + warped_mask) > 0).float().sum()
    assert iou > 0.9
    # teeth: the label pushed the wrong way (-ddf) does not land with the image
    wrong = warp_labels(mask, -ddf, "mask")
    assert (dark * wrong).sum() / ((dark + wrong) > 0).float().sum() < 0.9


def test_warp_labels_mask_stays_binary_and_ramp_keeps_orientation():
    mask = ellipse_mask(10.0)
    ramp = orientation_ramp(mask)
    ddf = affine_field(Rotation.matrix(30.0), (P, P))
    wm = warp_labels(mask, ddf, "mask")
    assert set(torch.unique(wm).tolist()) == {0.0, 1.0}
    wr = warp_labels(ramp, ddf, "continuous")
    assert len(torch.unique(wr)) > 10  # bilinear, not thresholded
    from_ramp, from_mask = orientation_from_ramp(wr, wm), principal_angle(wm)
    assert angle_difference(from_ramp, from_mask) < 3
    assert angle_difference(from_ramp, torch.tensor([40.0])) < 3
    with pytest.raises(ValueError):
        warp_labels(mask, ddf, "nearest")


# ----------------------------------------------------------------------------------------------------------------
# register()


class FixedVelocityNet(DiffeoMappingNet):
    """A DiffeoMappingNet whose velocity is a given field, whatever the input."""

    def __init__(self, v: torch.Tensor):
        super().__init__(in_channels=3, backbone="voxelmorph")
        self.register_buffer("v", v)

    def velocity(self, pair):
        return self.v.expand(pair.shape[0], -1, -1, -1)


def test_integrated_svf_never_folds():
    v = SmoothVelocityField(magnitude=8.0, sigma=5.0).sample_velocity(2, (P, P), np.random.RandomState(1))
    # the same field used directly as a displacement folds: the test has teeth
    assert (jacobian_determinant(v) <= 0).any()
    net = FixedVelocityNet(v[:1])
    cells = textured(3, seed=9)
    arch = {"image": textured(3, seed=10), "mask": ellipse_mask().expand(3, 1, P, P)}
    out = register(net, arch, cells, align=None)
    assert out["ddf"].abs().max() > 3
    assert torch.equal(out["folded_pct"], torch.zeros(3))
    assert (jacobian_determinant(out["ddf"]) > 0).all()


def test_register_identity_network_undoes_the_dihedral_turn():
    net = DiffeoMappingNet(3, "voxelmorph")  # zero head: phi = identity
    net.train()
    arch_img = textured(4, seed=11)
    masks = torch.cat([ellipse_mask(a, centre=(25.0, 36.0)) for a in (0.0, 30.0, 60.0, 100.0)])
    arch = {"image": arch_img, "mask": masks, "ramp": orientation_ramp(masks)}
    k = torch.tensor([1, 6, 0, 3])
    cells = dihedral(arch_img, k)
    out = register(net, arch, cells, align="mi", batch_size=3)  # two network batches
    assert net.training  # mode restored
    assert set(out) == {"ddf", "mask", "ramp", "image", "dihedral", "folded_pct"}
    assert out["ddf"].shape == (4, 2, P, P) and out["ramp"].shape == (4, 1, P, P) and out["image"].shape == (4, 3, P, P)
    assert torch.equal(out["dihedral"], k)
    assert torch.equal(out["mask"], dihedral(masks, k))
    assert torch.allclose(out["image"], cells, atol=1e-5)
    assert torch.equal(out["folded_pct"], torch.zeros(4))
    # the carried ramp gives the orientation of the carried mask
    assert (angle_difference(orientation_from_ramp(out["ramp"], out["mask"]), principal_angle(out["mask"])) < 2).all()
    # without alignment nothing is turned
    plain = register(net, arch, cells, align=None)
    assert torch.equal(plain["dihedral"], torch.zeros(4, dtype=torch.long))
    assert torch.equal(plain["mask"], masks)
    with pytest.raises(ValueError):
        register(net, arch, cells, align="ssd")


@pytest.mark.parametrize("mode", ["bilinear", "nearest", "bicubic"])
@pytest.mark.parametrize("padding_mode", ["zeros", "border", "reflection"])
def test_warp_samples_exactly_as_monais_warp_block(mode, padding_mode):
    from monai.networks.blocks import Warp

    from bundle.fields import warp

    torch.manual_seed(0)
    image, ddf = torch.rand(3, 2, 20, 26), torch.randn(3, 2, 20, 26) * 4
    expected = Warp(mode=mode, padding_mode=padding_mode)(image, ddf)
    assert torch.allclose(warp(image, ddf, mode, padding_mode), expected, atol=1e-4)


def test_scaling_and_squaring_integrates_exactly_as_monais_dvf2ddf():
    from monai.networks.blocks import DVF2DDF

    from bundle.fields import ScalingAndSquaring

    torch.manual_seed(0)
    velocity = torch.randn(2, 2, 32, 32) * 3
    expected = DVF2DDF(num_steps=7, mode="bilinear", padding_mode="border")(velocity)
    assert torch.allclose(ScalingAndSquaring(7)(velocity), expected, atol=1e-4)
