"""Label-free nucleus proposals, and the scores of counting and registration."""

import numpy as np
import pytest
import torch
from PIL import Image

from bundle.baselines.segmentation import log_blobs
from bundle.bank import build_bank
from bundle.detect import (LOCAL_BLOCK, MIN_SIZE_PERCENTILE, calibrate_proposals, found_once, hematoxylin,
                           nuclear_foreground, nucleus_proposals, otsu_foreground)
from bundle.metrics import counting_scores, dice_iou, n_components, registration_scores
from bundle.patches import cell_centroids, orientation_ramp
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
    assert counting_scores(log_blobs(image), truth)["recall"] >= 0.8


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


def test_counting_matches_within_the_radius_one_to_one_on_a_non_square_image():
    truth = np.array([[5.0, 90.0], [30.0, 10.0]])  # (row, col) on a 40 x 100 image
    detected = np.array([[6.0, 88.0], [7.0, 91.0], [10.0, 60.0]])  # two near the first nucleus, one far from all
    s = counting_scores(detected, truth, radius=12)
    assert s["tp"] == 1 and s["precision"] == pytest.approx(1 / 3) and s["recall"] == pytest.approx(0.5)
    transposed = counting_scores(detected[:, ::-1], truth, radius=12)  # the paper's x/y swap loses the match
    assert transposed["tp"] == 0


def test_counting_edge_cases():
    nothing = counting_scores(np.zeros((0, 2)), np.zeros((0, 2)))
    assert nothing["precision"] == 1.0 and nothing["recall"] == 1.0  # nothing to find, nothing found
    assert counting_scores(np.zeros((0, 2)), np.array([[1.0, 1.0]]))["recall"] == 0.0


def test_registration_scores_of_a_perfect_warp():
    masks = torch.zeros(2, 1, 32, 32)
    masks[0, 0, 8:20, 10:16] = 1
    masks[1, 0, 5:9, 5:25] = 1
    s = registration_scores(masks, orientation_ramp(masks), masks, torch.zeros(2, 2, 32, 32))
    assert np.allclose(s["dice"], 1) and np.allclose(s["iou"], 1)
    assert np.allclose(s["neg_jac_pct"], 0) and np.allclose(s["one_component_pct"], 100)
    assert np.all(s["dtheta_deg"] < 1.0)


def test_dice_iou_and_components():
    a = torch.zeros(1, 1, 10, 10)
    a[0, 0, :, :5] = 1
    b = torch.zeros(1, 1, 10, 10)
    b[0, 0, :, 2:7] = 1
    dice, iou = dice_iou(a, b)
    assert float(dice) == pytest.approx(0.6) and float(iou) == pytest.approx(30 / 70)
    two = torch.zeros(1, 1, 10, 10)
    two[0, 0, 0:2, 0:2] = 1
    two[0, 0, 6:8, 6:8] = 1
    assert list(n_components(two)) == [2]


def test_headroom_oracle_splits_each_piece_into_as_many_proposals_as_it_holds_nuclei():
    import importlib
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    best_split = importlib.import_module("detection_headroom").best_split
    rows, cols = np.mgrid[:80, :120]
    pair = ((rows - 40) ** 2 + (cols - 30) ** 2 < 14**2) | ((rows - 40) ** 2 + (cols - 46) ** 2 < 14**2)
    single = (rows - 40) ** 2 + (cols - 100) ** 2 < 12**2
    foreground = pair | single
    assert len(best_split(foreground, np.array([[40.0, 30.0], [40.0, 46.0], [40.0, 100.0]]))) == 3
    # annotated as one nucleus, the overlapping pair is left whole (only the widest spacing does that)
    assert len(best_split(foreground, np.array([[40.0, 38.0], [40.0, 100.0]]))) == 2
