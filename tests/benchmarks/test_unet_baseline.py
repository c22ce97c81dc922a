"""The U-Net baseline: trained on bank labels only (centre cell + ring), instances from connected components."""

import numpy as np
import pytest
import torch

from bundle.bank import extract_cells, take
from bundle.benchmarks.baselines.unet import background_patches, loss_weights, train_unet, unet_instances

ITERATIONS = 20


def _tile(seed, shape=(160, 200)):
    from conftest import synthetic_tile

    rgb, labels = synthetic_tile(seed, shape)
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255.0, labels


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The nets are tiny: one thread is faster than several competing ones on a shared machine; restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_bank():
    """Half of the cells of one synthetic tile: the 10 % budget in miniature."""
    image, labels = _tile(0)
    cells = extract_cells(image, labels)
    return take(cells, np.arange(0, len(cells["cell_ids"]), 2))


@pytest.fixture(scope="module")
def trained(tiny_bank):
    return train_unet(tiny_bank, iterations=ITERATIONS, seed=0, progress=False, batch_size=8)


def _pixel_f1(pred, truth):
    p, t = pred > 0, truth > 0
    return 2 * (p & t).sum() / max(p.sum() + t.sum(), 1)


def test_instances_overlap_truth_on_held_out_tile(trained):
    image, labels = _tile(5)
    pred = unet_instances(trained, image)
    # measured 0.92-0.95 (seeds 0, 1; held-out tiles 5, 6) after 20 iterations; the floor leaves a wide margin
    assert _pixel_f1(pred, labels) > 0.8
    assert 7 <= pred.max() <= 28  # about the tile's 14 nuclei as separate instances, not one blob nor confetti


def test_output_shape_and_dtype_for_odd_sized_image(trained):
    image, _ = _tile(3, shape=(101, 77))
    pred = unet_instances(trained, image)
    assert pred.dtype == np.int32
    assert pred.shape == (101, 77)
    assert pred.min() >= 0


def test_training_is_reproducible(tiny_bank):
    a = train_unet(tiny_bank, iterations=2, seed=3, progress=False, batch_size=4)
    b = train_unet(tiny_bank, iterations=2, seed=3, progress=False, batch_size=4)
    c = train_unet(tiny_bank, iterations=2, seed=4, progress=False, batch_size=4)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)


def test_loss_ignores_pixels_outside_mask_and_ring():
    mask = torch.zeros(1, 1, 32, 32)
    mask[0, 0, 12:20, 12:20] = 1
    target, weight = loss_weights(mask, ring=3)
    assert torch.equal(target, mask)
    assert (weight[mask > 0] == 1).all()  # foreground supervised
    assert weight[0, 0, 16, 22] == 1 and weight[0, 0, 9, 16] == 1  # the ring: known background
    assert weight[0, 0, 16, 24] == 0 and weight[0, 0, 0, 0] == 0  # beyond the ring: ignored
    assert ((weight > 0) & (target == 0)).sum() > 0
    assert weight.sum() < mask.numel() / 2


def test_empty_bank_raises():
    empty = {
        "images": torch.zeros(0, 3, 96, 96, dtype=torch.uint8),
        "masks": torch.zeros(0, 1, 96, 96, dtype=torch.uint8),
    }
    with pytest.raises(ValueError, match="empty|no cells"):
        train_unet(empty, iterations=1, progress=False)


def test_background_patches_hold_no_nucleus_and_are_seeded(tiny_dataset):
    patches = background_patches(tiny_dataset, n=6, size=64, seed=0, organ="Kidney")
    assert patches.shape == (6, 3, 64, 64) and patches.dtype == torch.uint8
    # synthetic nuclei have green <= 80, their pink surround >= 160: no nucleus pixel may appear in a patch
    assert patches[:, 1].min() > 120
    assert torch.equal(patches, background_patches(tiny_dataset, n=6, size=64, seed=0, organ="Kidney"))
    assert not torch.equal(patches, background_patches(tiny_dataset, n=6, size=64, seed=1, organ="Kidney"))


def test_background_patches_enter_training_and_the_budget(tiny_bank, tiny_dataset):
    patches = background_patches(tiny_dataset, n=3, size=64, seed=0)
    net = train_unet(tiny_bank, patches, iterations=1, seed=0, progress=False, batch_size=4)
    info = net.info
    assert info["cells"] == len(tiny_bank["images"])
    assert info["background_patches"] == 3 and info["background_pixels"] == 3 * 64 * 64
    assert info["cell_pixels"] == int(tiny_bank["masks"].sum()) and info["ring_pixels"] > 0
    with pytest.raises(ValueError, match="smaller than the training crop"):
        train_unet(tiny_bank, patches[:, :, :32, :32], iterations=1, progress=False)
