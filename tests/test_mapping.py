"""DiffeoMappingNet: shapes, exp(v) and its inverse, identity at init, it learns a shift, checkpoints."""

import warnings

import pytest
import torch
import torch.nn.functional as F
from monai.networks.blocks import DVF2DDF

from bundle.networks.mapping import BACKBONES, DiffeoMappingNet
from bundle.fields import compose, warp

P = 64


@pytest.fixture(autouse=True)
def quick_cpu():
    # Early Adam steps hit subnormal floats and ran ~50x slower on CPU without flushing them. One thread: on a CPU
    # shared with other jobs, intra-op threads waiting on each other made a 1 s test take minutes.
    threads = torch.get_num_threads()
    torch.set_flush_denormal(True)
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
    torch.set_flush_denormal(False)


def perturbed(backbone: str, seed: int = 0, target_peak: float = 3.0) -> DiffeoMappingNet:
    """A network in eval mode whose zero-initialised head is randomised so that max |v| is about target_peak px."""
    torch.manual_seed(seed)
    net = DiffeoMappingNet(3, backbone).eval()
    for p in net.head.parameters():
        torch.nn.init.normal_(p, std=0.01)
    with torch.no_grad():
        peak = net.velocity(pair(seed, b=1)).abs().max().item()
        for p in net.head.parameters():
            p.mul_(target_peak / peak)
    return net


def exp_reference(v: torch.Tensor) -> torch.Tensor:
    """MONAI's own scaling and squaring, built independently of the network."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return DVF2DDF(num_steps=7, mode="bilinear", padding_mode="border")(v)


def pair(seed: int = 0, b: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((b, 6, P // 8, P // 8), generator=g)
    return F.interpolate(x, size=(P, P), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("backbone", BACKBONES)
def test_shapes_and_identity_at_init(backbone):
    net = DiffeoMappingNet(3, backbone)
    x = pair(b=3)
    v = net.velocity(x)
    phi = net(x)
    assert v.shape == phi.shape == (3, 2, P, P)
    # zero-initialised head: zero velocity, identity map, the archetype is left as it is
    assert torch.equal(v, torch.zeros_like(v)) and torch.equal(phi, torch.zeros_like(phi))
    with pytest.raises(ValueError):
        net(torch.rand(1, 3, P, P))  # one image, not a pair


@pytest.mark.parametrize("backbone", BACKBONES)
def test_forward_is_exp_of_velocity_and_fields_are_inverse(backbone):
    net = perturbed(backbone)
    x = pair(1)
    with torch.no_grad():
        v = net.velocity(x)
        phi = net(x)
        phi2, inv = net.fields(x)
    reference = exp_reference(v)
    assert phi.abs().max() > 1.0  # a real deformation, not the identity
    assert torch.allclose(phi, reference, atol=1e-5)
    assert torch.allclose(phi2, phi, atol=1e-5)
    assert torch.allclose(inv, exp_reference(-v), atol=1e-5)
    # phi then phi^-1, and phi^-1 then phi, are both (nearly) the identity; phi then phi is not
    assert compose(phi, inv).abs().mean() < 0.1
    assert compose(inv, phi).abs().mean() < 0.1
    assert compose(phi, phi).abs().mean() > 0.5


@pytest.mark.parametrize("backbone", BACKBONES)
def test_backward_reaches_every_layer(backbone):
    net = perturbed(backbone).train()
    net(pair(2)).square().mean().backward()
    assert all(p.grad is not None for p in net.parameters() if p.requires_grad)


def blob(centre, size=P, radius=10.0, soft=2.0) -> torch.Tensor:
    rows = torch.arange(size, dtype=torch.float32)[:, None]
    cols = torch.arange(size, dtype=torch.float32)[None, :]
    r = ((rows - centre[0]) ** 2 + (cols - centre[1]) ** 2).sqrt()
    return torch.sigmoid((radius - r) / soft)[None, None]


@pytest.mark.parametrize("backbone", BACKBONES)
def test_learns_a_shift(backbone):
    # 32 px patches (any multiple of 16 works) keep this to about a second on a shared CPU
    torch.manual_seed(0)
    n = 32
    moving = blob((15.5, 15.5), size=n, radius=7.0).expand(1, 3, n, n)  # the archetype
    fixed = blob((18.5, 13.5), size=n, radius=7.0).expand(1, 3, n, n)  # the cell: the disk 3 px down, 2 px left
    net = DiffeoMappingNet(3, backbone)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    x = torch.cat([moving, fixed], dim=1)

    def loss_fn():
        return F.mse_loss(warp(moving, net(x)), fixed)

    with torch.no_grad():
        start = loss_fn().item()
    for _ in range(40):
        opt.zero_grad()
        loss = loss_fn()
        loss.backward()
        opt.step()
    with torch.no_grad():
        end = loss_fn().item()
    assert end < 0.5 * start
    # the field at the disk centre points the right way: pull from 3 px up and 2 px right, (-3, +2)
    with torch.no_grad():
        centre = net(x)[0, :, 18, 13]
    assert centre[0] < -1 and centre[1] > 0.5


def test_unknown_backbone():
    with pytest.raises(ValueError, match="localnet"):
        DiffeoMappingNet(3, "unet")


@pytest.mark.parametrize("backbone", BACKBONES)
def test_checkpoint_round_trip(tmp_path, backbone):
    net = perturbed(backbone, seed=4)
    path = tmp_path / "model.pt"
    torch.save({"model": net.state_dict()}, path)
    other = DiffeoMappingNet(3, backbone).eval()
    other.load_state_dict(torch.load(path, weights_only=True)["model"])
    x = pair(5, b=1)
    with torch.no_grad():
        out = other(x)
        assert torch.equal(out, net(x))
        assert out.abs().max() > 0.5
