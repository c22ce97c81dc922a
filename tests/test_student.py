"""The student: centre-ness targets, instances from its two maps, and a training run that learns."""

import numpy as np
import torch
from skimage.draw import disk

from bundle.student import (MARKER_HEIGHT, MIN_CENTRE, MIN_PIECE, build_student, centre_ness, slope_mismatch,
                            student_instances, student_maps, train_student)


def two_touching_disks(shape=(64, 96)):
    labels = np.zeros(shape, np.int32)
    labels[disk((32, 30), 12, shape=shape)] = 1
    labels[disk((32, 52), 12, shape=shape)] = 2  # overlaps the first: they touch along a chord
    return labels


def test_centre_ness_is_one_at_a_nucleus_centre_and_low_at_its_edge_and_zero_outside():
    labels = np.zeros((40, 40), np.int32)
    labels[disk((20, 20), 10)] = 1
    c = centre_ness(labels)
    assert c[20, 20] == 1.0
    assert c[20, 11] < 0.25 and c[0, 0] == 0.0
    assert c.min() >= 0 and c.max() <= 1


def test_touching_nuclei_meet_in_a_valley_of_centre_ness():
    c = centre_ness(two_touching_disks())
    assert c[32, 30] > 0.9 and c[32, 52] > 0.9
    assert c[32, 41] < 0.2  # the chord where they touch


def test_instances_split_touching_nuclei_at_the_centre_ness_valley():
    labels = two_touching_disks()
    instances = student_instances((labels > 0).astype(np.float32), centre_ness(labels))
    assert instances.max() == 2
    assert instances[32, 30] != instances[32, 52]


def test_the_slope_loss_charges_a_filled_valley_and_ignores_unlabelled_pixels():
    labels = two_touching_disks()
    target = torch.from_numpy(centre_ness(labels))[None, None]
    labelled = torch.from_numpy(labels > 0).float()[None, None]
    assert slope_mismatch(target, target, labelled) == 0
    filled = target.clone()
    filled[..., 26:39, 36:47] = 0.6  # one dome over both nuclei: the valley the split needs is gone
    assert slope_mismatch(filled, target, labelled) > 1e-3
    unlabelled = labelled.clone()
    unlabelled[..., 20:45, 34:49] = 0  # the same prediction where nobody labelled the valley teaches nothing
    assert slope_mismatch(filled, target, unlabelled) == 0


def two_humped_centre(valley: float) -> tuple[np.ndarray, np.ndarray]:
    """A 20 x 40 px piece whose centre-ness has two maxima of 1 along its length, ``valley`` between them."""
    foreground = np.zeros((40, 60), np.float32)
    foreground[10:30, 10:50] = 1
    cols = np.arange(60)
    humps = valley + (1 - valley) * np.abs(np.sin((cols - 10) * np.pi / 20))  # 1 at cols 20 and 40
    return foreground, (foreground * humps[None, :]).astype(np.float32)


def test_a_nucleus_splits_only_where_its_centre_ness_valley_is_deep():
    shallow = student_instances(*two_humped_centre(valley=1 - MARKER_HEIGHT / 2))
    deep = student_instances(*two_humped_centre(valley=1 - 2 * MARKER_HEIGHT))
    assert shallow.max() == 1  # a dent in one nucleus' centre-ness is not a second nucleus
    assert deep.max() == 2 and deep[20, 20] != deep[20, 40]
    assert set(np.unique(deep)) == {0, 1, 2}  # numbered 1..N, whatever markers were dropped


def test_a_piece_whose_centre_ness_stays_low_is_not_a_nucleus_and_specks_are_dropped():
    foreground = np.zeros((60, 60), np.float32)
    centre = np.zeros((60, 60), np.float32)
    foreground[10:20, 10:20] = 1  # 100 px with a centre the student believes in
    centre[10:20, 10:20] = MIN_CENTRE + 0.1
    foreground[10:20, 40:50] = 1  # 100 px of nucleus-like foreground without one: clutter
    centre[10:20, 40:50] = MIN_CENTRE - 0.1
    foreground[40:44, 40:44] = 1  # 16 px < MIN_PIECE: a speck
    centre[40:44, 40:44] = 1
    assert 16 < MIN_PIECE
    instances = student_instances(foreground, centre)
    assert instances.max() == 1 and (instances == 1).sum() == 100 and instances[15, 15] == 1


def test_maps_cover_any_image_size_with_probabilities():
    network = build_student().eval()
    foreground, centre = student_maps(network, torch.rand(3, 50, 70))
    assert foreground.shape == centre.shape == (50, 70)
    assert 0 <= foreground.min() and foreground.max() <= 1


def test_training_on_labelled_nuclei_separates_them_from_background():
    rng = np.random.default_rng(0)
    labels = np.zeros((128, 128), np.int32)
    for i, (r, c) in enumerate(rng.integers(16, 112, (8, 2)), start=1):
        labels[disk((r, c), 7, shape=labels.shape)] = i
    image = torch.full((3, 128, 128), 0.85)
    image[:, torch.from_numpy(labels > 0)] = torch.tensor([0.35, 0.2, 0.55])[:, None]
    target = torch.from_numpy(np.stack([(labels > 0).astype(np.float32), centre_ness(labels), np.ones(labels.shape, np.float32)]))
    network = train_student([image], [target], iterations=150, batch_size=2, crop=64, progress=False)
    foreground, _ = student_maps(network, image)
    inside, outside = foreground[labels > 0], foreground[labels == 0]
    assert inside.mean() > 0.5 > outside.mean() and inside.mean() - outside.mean() > 0.4
    assert network.info["iterations"] == 150
