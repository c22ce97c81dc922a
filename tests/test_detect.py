"""Label-free nucleus proposals from the hematoxylin stain, calibrated on the bank."""

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.bank import build_bank
from bundle.detect import (LOCAL_BLOCK, MIN_SIZE_PERCENTILE, calibrate_proposals, found_once, hematoxylin,
                           nuclear_foreground, nucleus_proposals, otsu_foreground)
from bundle.benchmarks.metrics import counting_scores
from bundle.patches import cell_centroids
from conftest import synthetic_tile


def test_proposals_calibrated_on_a_bank_find_the_nuclei_of_a_new_tile(tiny_dataset):
    # the speck floor comes from the sizes of the bank's own nuclei, not from a constant tuned for MoNuSeg
    bank = build_bank(tiny_dataset, fraction=0.5, seed=0, progress=False)
    params = bank["meta"]["proposals"]
    areas = bank["masks"].flatten(1).sum(1).numpy()
    assert params["min_size"] == int(np.percentile(areas, MIN_SIZE_PERCENTILE))
    assert bank["meta"]["proposals_found"] >= 0.7  # most bank cells hold exactly one proposal
    # the whole grid is kept, and the chosen point finds the most bank cells in it
    shares = [share for _, share, _ in bank["meta"]["proposals_grid"]]
    assert bank["meta"]["proposals_found"] == max(shares) and len(shares) == 10
    rgb, labels = synthetic_tile(0, shape=(120, 200))
    image = torch.from_numpy(rgb).permute(2, 0, 1).float() / 255
    _, truth = cell_centroids(labels)
    assert counting_scores(nucleus_proposals(image, params), truth)["f1"] >= 0.9


def test_the_detector_foreground_keeps_a_nucleus_on_dense_stroma_but_not_the_stroma_around_it():
    # a band of dense stroma across the tile passes the tile's Otsu threshold; a nucleus is darker than its neighbours
    stain = np.full((400, 400), 0.1, np.float32)
    stain[100:300, :] = 0.6
    rows, cols = np.mgrid[:400, :400]
    nucleus = (rows - 200) ** 2 + (cols - 200) ** 2 < 12**2
    stain[nucleus] = 0.95
    # the middle of the band, farther than a window's reach from its edges and from the nucleus
    stroma = (abs(rows - 200) < 30) & ~((rows - 200) ** 2 + (cols - 200) ** 2 < 30**2)
    assert LOCAL_BLOCK // 2 < 100 - 30
    assert otsu_foreground(stain, min_size=100)[stroma].all()
    foreground = nuclear_foreground(stain, opening_radius=1, min_size=100)
    assert foreground[nucleus].all()
    assert not foreground[stroma].any()


def test_a_bank_cell_is_found_when_exactly_one_proposal_lies_inside_its_mask():
    masks = torch.zeros(3, 1, 9, 9, dtype=torch.bool)
    masks[:, :, 2:7, 2:7] = True
    dots = torch.zeros(3, 1, 9, 9)
    dots[1, 0, 4, 4] = 1  # one proposal inside: found
    dots[2, 0, 3, 3] = dots[2, 0, 5, 5] = 1  # two inside: a split
    dots[0, 0, 0, 0] = 1  # only outside: a miss (or a merge whose centroid fell between nuclei)
    assert found_once(dots, masks).tolist() == [False, True, False]


def test_calibration_needs_the_banks_source_images(tiny_dataset, tmp_path):
    bank = build_bank(tiny_dataset, fraction=0.5, seed=0, progress=False)
    (tmp_path / "images").mkdir()
    Image.fromarray(synthetic_tile(5)[0]).save(tmp_path / "images" / "another_slide.png")
    with pytest.raises(ValueError, match="source images"):
        calibrate_proposals(bank, tmp_path, progress=False)


def test_hematoxylin_is_high_on_nuclei_and_low_on_background():
    rgb, labels = synthetic_tile(1)
    h = hematoxylin(torch.from_numpy(rgb).permute(2, 0, 1).float() / 255)
    assert h[labels > 0].mean() > h[labels == 0].mean() + 0.3


def test_hematoxylin_needs_rgb():
    with pytest.raises(ValueError, match="RGB"):
        hematoxylin(torch.rand(1, 10, 10))
