"""The label-free segmentation baselines (LoG blobs, Otsu + watershed), on synthetic tiles only."""

import math

import numpy as np
import pytest
import torch
from skimage.draw import disk as draw_disk
from skimage.feature import blob_log

from bundle.benchmarks.baselines.segmentation import (
    blob_candidates,
    circle_overlap,
    log_blobs,
    log_blobs_with_radii,
    log_scale_space,
    log_sigmas,
    otsu_watershed,
    prune_overlapping,
    select_blobs,
    stain_of,
)
from bundle.benchmarks.metrics import counting_scores, segmentation_scores
from bundle.patches import cell_centroids
from conftest import synthetic_tile

PINK, PURPLE = (0.92, 0.72, 0.85), (0.35, 0.2, 0.55)


def as_image(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb).permute(2, 0, 1).float() / 255


def disks_image(shape, centres, radius, seed=0) -> tuple[torch.Tensor, np.ndarray]:
    """An H&E-like image (3, H, W) of purple disks on pink, with their instance labels (H, W) (later disks on top)."""
    rng = np.random.default_rng(seed)
    rgb = np.empty(shape + (3,), np.float32)
    rgb[:] = PINK
    labels = np.zeros(shape, np.int32)
    for i, (r, c) in enumerate(centres, start=1):
        rr, cc = draw_disk((r, c), radius, shape=shape)
        rgb[rr, cc] = PURPLE
        labels[rr, cc] = i
    rgb += rng.normal(0, 0.02, rgb.shape)
    return torch.from_numpy(np.clip(rgb, 0, 1)).permute(2, 0, 1).float(), labels


# synthetic_tile nuclei are ellipses of semi-axes 6-11 x 4-7 px, about half the size of MoNuSeg's at 40x (median
# extent ~27 px) for which the defaults were tuned; the scale range is given in proportion where that matters
SMALL = {"min_sigma": 4.0, "max_sigma": 6.0}


# ---------------------------------------------------------------------------------------------------------------- LoG


def test_log_finds_the_synthetic_nuclei_with_few_false_positives():
    for seed in range(4):
        rgb, labels = synthetic_tile(seed, shape=(160, 200))
        _, truth = cell_centroids(labels)
        image = as_image(rgb)
        # scales in proportion to these small nuclei: (nearly) every nucleus once
        scores = counting_scores(log_blobs(image, **SMALL), truth)
        assert scores["recall"] >= 0.95 and scores["precision"] >= 0.9, (seed, scores)
        # the MoNuSeg defaults (scales for nuclei twice as large) miss some small ones but invent none
        scores = counting_scores(log_blobs(image), truth)
        assert scores["recall"] >= 0.7 and scores["precision"] >= 0.95, (seed, scores)


def test_log_centres_are_row_col_on_a_non_square_image():
    image, _ = disks_image((90, 260), [(25, 200), (62, 40)], radius=13)
    centres, radii = log_blobs_with_radii(image)
    assert centres.dtype == np.float32 and centres.shape == (2, 2)
    found = centres[np.argsort(centres[:, 0])]
    np.testing.assert_allclose(found, [[25, 200], [62, 40]], atol=1.5)
    assert radii.shape == (2,) and radii.dtype == np.float32


def test_log_radius_follows_the_nucleus_size():
    # a disk of radius r answers most at sigma = r / sqrt(2): the reported radius is sigma * sqrt(2)
    for radius in (7, 10, 14):
        image, _ = disks_image((80, 80), [(40, 40)], radius=radius)
        centres, radii = log_blobs_with_radii(image, min_sigma=3, max_sigma=14)
        assert len(centres) == 1
        assert abs(radii[0] - radius) <= 1.5, (radius, radii)
        assert np.abs(log_sigmas(3, 14) - radii[0] / math.sqrt(2)).min() < 1e-4  # one of the scales


def test_log_separates_two_touching_nuclei():
    image, labels = disks_image((80, 120), [(40, 47), (40, 73)], radius=13)  # disks 26 px apart: they touch
    _, truth = cell_centroids(labels)
    scores = counting_scores(log_blobs(image), truth, radius=6)
    assert scores["tp"] == 2 and scores["n_detected"] == 2, scores


def test_log_on_a_blank_image_finds_nothing():
    for image in (torch.full((3, 64, 96), 0.9), torch.zeros(3, 64, 96)):
        centres, radii = log_blobs_with_radii(image)
        assert centres.shape == (0, 2) and centres.dtype == np.float32
        assert radii.shape == (0,)


def test_scale_space_maxima_are_those_of_skimage_blob_log():
    # without pruning (overlap 1), the staged detector gives exactly skimage.feature.blob_log's blobs
    rgb, _ = synthetic_tile(3, shape=(120, 150))
    stain = stain_of(as_image(rgb))
    sigmas = log_sigmas(3, 7)
    centres, radii = select_blobs(*blob_candidates(log_scale_space(stain, sigmas), sigmas), threshold=0.1, overlap=1.0)
    reference = blob_log(stain, min_sigma=3, max_sigma=7, num_sigma=5, threshold=0.1, overlap=1.0)
    assert len(centres) == len(reference) > 10
    ours = {(int(r), int(c), round(float(s), 3)) for (r, c), s in zip(centres, radii / math.sqrt(2))}
    theirs = {(int(r), int(c), round(float(s), 3)) for r, c, s in reference}
    assert ours == theirs


def test_circle_overlap_fractions():
    assert circle_overlap(0.0, 5, 5) == pytest.approx(1.0)
    assert circle_overlap(2.0, 3, 10) == pytest.approx(1.0)  # the small one lies inside
    assert circle_overlap(10.0, 5, 5) == pytest.approx(0.0)  # tangent
    assert circle_overlap(12.0, 5, 5) == pytest.approx(0.0)
    # equal circles one radius apart: lens area (2 pi / 3 - sqrt(3) / 2) r^2
    assert circle_overlap(5.0, 5, 5) == pytest.approx((2 * math.pi / 3 - math.sqrt(3) / 2) / math.pi)
    assert circle_overlap(7.0, 4, 6) == pytest.approx(circle_overlap(7.0, 6, 4))


def test_pruning_is_greedy_by_strength():
    # A (strongest) covers 39% of B, B 39% of C, A does not reach C: B goes, so C stays
    centres = np.array([[0, 0], [0, 5], [0, 10], [40, 40]], np.float32)
    radii = np.full(4, 5.0)
    np.testing.assert_array_equal(prune_overlapping(centres, radii, overlap=0.3), [0, 2, 3])
    np.testing.assert_array_equal(prune_overlapping(centres, radii, overlap=0.9), [0, 1, 2, 3])
    assert prune_overlapping(np.zeros((0, 2)), np.zeros(0), 0.3).shape == (0,)


def test_stain_needs_rgb_or_one_channel():
    with pytest.raises(ValueError, match="RGB"):
        log_blobs(torch.zeros(2, 32, 32))
    with pytest.raises(ValueError, match="RGB"):
        otsu_watershed(torch.zeros(32, 32))
    bright = torch.zeros(1, 64, 64)
    rr, cc = draw_disk((32, 32), 12, shape=(64, 64))
    bright[0, rr, cc] = 1.0
    assert len(log_blobs(bright)) == 1
    assert otsu_watershed(bright).max() == 1


# ---------------------------------------------------------------------------------------------------------- watershed


def test_watershed_gives_one_instance_per_synthetic_nucleus():
    for seed in range(4):
        rgb, labels = synthetic_tile(seed, shape=(160, 200))
        _, truth = cell_centroids(labels)
        image = as_image(rgb)
        # min_size in proportion to these small nuclei (the default, 100 px, is for MoNuSeg's): one instance each
        found = otsu_watershed(image, min_size=30)
        assert found.dtype == np.int32 and found.shape == labels.shape
        assert np.array_equal(np.unique(found), np.arange(found.max() + 1))  # ids 0..N, no gaps
        assert found.max() == len(truth), (seed, found.max(), len(truth))
        assert counting_scores(cell_centroids(found)[1], truth)["f1"] == 1.0
        scores = segmentation_scores(found, labels)
        assert scores["aji"] >= 0.95 and scores["dice_obj"] >= 0.95 and scores["pq"] >= 0.95, (seed, scores)
        # the defaults drop the smallest nuclei, but every instance they keep is one nucleus, well outlined
        found = otsu_watershed(image)
        counts = counting_scores(cell_centroids(found)[1], truth)
        assert counts["precision"] == 1.0 and counts["recall"] >= 0.8, (seed, counts)
        assert segmentation_scores(found, labels)["aji"] >= 0.85


def test_watershed_splits_two_touching_nuclei():
    image, labels = disks_image((80, 120), [(40, 47), (40, 73)], radius=13)
    found = otsu_watershed(image)
    assert found.max() == 2
    # each instance lies (almost) within one disk, and the two take different disks
    owners = [np.bincount(labels[found == k], minlength=3).argmax() for k in (1, 2)]
    assert sorted(owners) == [1, 2]
    assert segmentation_scores(found, labels)["aji"] >= 0.8


def test_watershed_on_a_non_square_image_keeps_rows_and_columns():
    image, labels = disks_image((90, 260), [(25, 200), (62, 40)], radius=13)
    found = otsu_watershed(image)
    assert found.shape == (90, 260)
    _, centres = cell_centroids(found)
    np.testing.assert_allclose(centres[np.argsort(centres[:, 0])], [[25, 200], [62, 40]], atol=1.0)


def test_watershed_on_a_blank_image_is_empty():
    for image in (torch.full((3, 64, 96), 0.9), torch.zeros(3, 64, 96)):
        found = otsu_watershed(image)
        assert found.shape == (64, 96) and found.dtype == np.int32 and found.max() == 0


def test_watershed_drops_specks_below_min_size():
    image, _ = disks_image((80, 120), [(40, 30), (40, 90)], radius=13)
    rr, cc = draw_disk((10, 60), 3, shape=(80, 120))  # a 29-pixel speck
    image[:, rr, cc] = torch.tensor(PURPLE)[:, None]
    assert otsu_watershed(image).max() == 2
    assert otsu_watershed(image, min_size=10).max() == 3
