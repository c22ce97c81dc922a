"""The benchmarks' scores of counting and registration."""

import numpy as np
import pytest
import torch

from bundle.benchmarks.metrics import counting_scores, dice_iou, mean_sd, n_components, registration_scores
from bundle.patches import orientation_ramp


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


def test_a_figure_over_runs_is_the_mean_and_the_sample_sd_of_its_finite_values():
    assert mean_sd("f1", [0.8, 0.9, float("nan"), None]) == pytest.approx({"f1": 0.85, "f1_sd": np.std([0.8, 0.9], ddof=1)})
    assert mean_sd("f1", [0.7]) == {"f1": 0.7, "f1_sd": 0.0}
    empty = mean_sd("f1", [])
    assert np.isnan(empty["f1"]) and np.isnan(empty["f1_sd"])
