"""Cell patches and the orientation label."""

import numpy as np
import pytest
import torch
from skimage.draw import ellipse

from bundle.patches import (
    angle_difference,
    cell_centroids,
    centre_crop,
    crop_cell_masks,
    crop_patches,
    orientation_from_ramp,
    orientation_ramp,
    principal_angle,
)


def ellipse_mask(size=64, angle_deg=30.0, r_major=14, r_minor=6):
    """A mask (1, 1, S, S) whose major axis is at angle_deg counter-clockwise from the x axis as displayed."""
    m = np.zeros((size, size), np.float32)
    # skimage's rotation is clockwise in (row, col) = counter-clockwise as displayed, from the row axis for r_radius
    rr, cc = ellipse(size / 2, size / 2, r_minor, r_major, shape=m.shape, rotation=np.deg2rad(angle_deg))
    m[rr, cc] = 1
    return torch.from_numpy(m)[None, None]


@pytest.mark.parametrize("angle", [0.0, 30.0, 90.0, 135.0, 170.0])
def test_principal_angle_is_counter_clockwise_from_x_axis_as_displayed(angle):
    measured = principal_angle(ellipse_mask(angle_deg=angle))
    assert float(angle_difference(measured, torch.tensor([angle]))) < 2.0


def test_a_nucleus_pointing_up_and_right_has_angle_near_45():
    m = torch.zeros(1, 1, 32, 32)
    for i in range(20):  # a diagonal bar from bottom-left to top-right on screen
        m[0, 0, 25 - i, 5 + i] = 1
        m[0, 0, 25 - i, 6 + i] = 1
    assert float(angle_difference(principal_angle(m), torch.tensor([45.0]))) < 3.0


def test_ramp_lies_in_unit_range_inside_the_mask_and_is_zero_outside():
    mask = ellipse_mask(angle_deg=60)
    ramp = orientation_ramp(mask)
    assert ramp.shape == mask.shape
    assert float(ramp[mask == 0].abs().max()) == 0.0
    assert float(ramp.max()) == pytest.approx(1.0) or float(-ramp.min()) == pytest.approx(1.0)
    assert float(ramp.abs().max()) <= 1.0 + 1e-6


@pytest.mark.parametrize("angle", [10.0, 75.0, 120.0])
def test_orientation_is_read_back_from_the_ramp(angle):
    mask = ellipse_mask(angle_deg=angle)
    assert float(angle_difference(orientation_from_ramp(orientation_ramp(mask), mask), torch.tensor([angle]))) < 2.0


def test_angle_difference_wraps_at_180():
    assert float(angle_difference(torch.tensor([179.0]), torch.tensor([1.0]))) == pytest.approx(2.0)
    assert float(angle_difference(torch.tensor([90.0]), torch.tensor([0.0]))) == pytest.approx(90.0)


def test_crops_are_centred_on_the_given_row_and_column_of_a_non_square_image():
    image = torch.zeros(1, 40, 100)
    image[0, 10, 70] = 1.0  # row 10, column 70
    crops = crop_patches(image, np.array([[10.0, 70.0], [30.0, 20.0]]), size=16)
    assert crops.shape == (2, 1, 16, 16)
    assert float(crops[0, 0, 8, 8]) == 1.0
    assert float(crops[1].sum()) == 0.0


def test_cell_masks_hold_only_the_centre_cell_even_at_the_border():
    labels = np.zeros((30, 50), np.int32)
    labels[0:6, 0:6] = 1  # a cell in the corner: the crop reaches outside the image
    labels[0:6, 8:12] = 2  # its neighbour
    ids, centres = cell_centroids(labels)
    masks = crop_cell_masks(labels, ids, centres, size=24)
    assert list(ids) == [1, 2]
    assert int(masks[0].sum()) == 36  # the reflected copies outside the image are not part of the cell
    assert int(masks[1].sum()) == 24


def test_centre_crop_takes_the_middle():
    x = torch.arange(96 * 96).view(1, 96, 96)
    assert torch.equal(centre_crop(x, 64), x[:, 16:80, 16:80])


def test_elongation_tells_round_from_elongated_nuclei():
    from bundle.patches import elongation

    assert float(elongation(ellipse_mask(r_major=14, r_minor=6))) == pytest.approx(14 / 6, rel=0.1)
    assert float(elongation(ellipse_mask(r_major=9, r_minor=9))) < 1.1
