"""Self-training's pseudo-labels: confident cells are labels, uncertain pixels teach nothing, the bank's truth wins."""

import numpy as np
import torch
from scipy import ndimage
from skimage.draw import disk

from bundle.selftrain import (BANK_RING, MARGIN, OUTLINE, best_overlap, pseudo_labels, student_targets,
                              touching_pairs)


def square(labels, value, top, left, size=10):
    labels[top : top + size, left : left + size] = value


def test_best_overlap_is_the_iou_with_the_most_overlapping_instance():
    a = np.zeros((30, 30), np.int32)
    b = np.zeros((30, 30), np.int32)
    square(a, 1, 0, 0)  # 100 px
    square(b, 5, 0, 5)  # 50 px shared: IoU 50 / 150
    square(a, 2, 20, 20)  # overlaps nothing
    assert np.allclose(best_overlap(a, b), [50 / 150, 0.0])


def test_cells_both_sources_agree_on_are_labels_and_the_others_are_left_unlabelled():
    teacher = np.zeros((60, 60), np.int32)
    pieces = np.zeros((60, 60), np.int32)
    square(teacher, 1, 5, 5)
    square(pieces, 1, 5, 6)  # agrees (IoU 90 / 110)
    square(teacher, 2, 40, 40)  # no stain piece: unsure
    instances, weight = pseudo_labels(teacher, pieces)
    assert (instances[5:15, 6:15] > 0).all() and weight[6:14, 7:14].min() == 1
    assert weight[5:15, 5].max() == 0  # the teacher alone claims this column: unsure, not background
    band = slice(40 - MARGIN, 50 + MARGIN)
    assert instances[40:50, 40:50].max() == 0 and weight[band, 45].max() == 0 and weight[45, band].max() == 0
    assert weight[30, 30] == 1 and instances[30, 30] == 0  # nobody proposes a cell here: background


def test_a_pseudo_cells_outline_teaches_nothing_but_a_bank_cells_outline_does():
    teacher = np.zeros((60, 60), np.int32)
    pieces = np.zeros((60, 60), np.int32)
    square(teacher, 1, 5, 5)
    square(pieces, 1, 5, 5)
    bank = np.zeros((60, 60), np.int32)
    square(bank, 3, 40, 40)
    instances, weight = pseudo_labels(teacher, pieces, bank)
    pseudo = slice(5, 15)
    assert (instances[pseudo, pseudo] > 0).all()  # still a nucleus for the centre-ness map
    assert weight[pseudo, 5 : 5 + OUTLINE].max() == 0 and weight[pseudo, 15 - OUTLINE : 15].max() == 0
    assert weight[5 + OUTLINE : 15 - OUTLINE, 5 + OUTLINE : 15 - OUTLINE].min() == 1
    assert weight[pseudo, 15].min() == 1 and instances[pseudo, 15].max() == 0  # background just outside
    assert weight[40:50, 40:50].min() == 1  # the truth is taught up to its edge


def test_the_banks_cells_override_pseudo_labels_with_their_ring_of_background():
    teacher = np.zeros((60, 60), np.int32)
    pieces = np.zeros((60, 60), np.int32)
    square(teacher, 1, 20, 20)
    square(pieces, 1, 20, 20)
    bank = np.zeros((60, 60), np.int32)
    square(bank, 7, 22, 22, size=12)  # the true cell is larger and shifted
    instances, weight = pseudo_labels(teacher, pieces, bank)
    truth = bank > 0
    assert (instances[truth] > 0).all() and len(np.unique(instances[truth])) == 1 and (weight[truth] == 1).all()
    assert instances[20, 20] == 0 and weight[20, 20] == 0  # the pseudo-cell it replaced
    ring = (slice(22 + 12, 22 + 12 + BANK_RING), slice(25, 30))
    assert (weight[ring] == 1).all() and (instances[ring] == 0).all()


def test_targets_stack_foreground_centre_ness_and_weight():
    instances = np.zeros((20, 20), np.int32)
    square(instances, 3, 5, 5)
    targets = student_targets(instances, np.ones((20, 20), np.float32))
    assert targets.shape == (3, 20, 20)
    assert targets[0].sum() == 100 and targets[1].max() == 1 and targets[2].min() == 1


def one_labelled_nucleus_and_one_bank_cell():
    """A 64 x 128 image: a labelled pseudo-cell (id 1) on the left, a bank cell (id 2; bank id 1) on the right, a pale
    unlabelled stretch in between; everything else labelled background."""
    shape = (64, 128)
    image = torch.rand(3, *shape, generator=torch.Generator().manual_seed(0))
    instances = np.zeros(shape, np.int32)
    instances[disk((32, 30), 9, shape=shape)] = 1
    bank = np.zeros(shape, np.int32)
    bank[disk((32, 100), 7, shape=shape)] = 1
    instances[bank > 0] = 2
    weight = np.ones(shape, np.float32)
    weight[:, 56:64] = 0
    return image, instances, weight, bank


def test_bank_cells_are_pasted_touching_a_labelled_nucleus_and_covering_no_other():
    image, instances, weight, bank = one_labelled_nucleus_and_one_bank_cell()
    before = (image.clone(), instances.copy(), weight.copy())
    pasted_image, pasted, pasted_weight = touching_pairs(image, instances, weight, bank, np.random.default_rng(0), n=3)
    assert torch.equal(image, before[0]) and (instances == before[1]).all() and (weight == before[2]).all()
    new = pasted > instances.max()
    assert 1 <= len(np.unique(pasted[new])) <= 3
    for cell in np.unique(pasted[new]):
        footprint = pasted == cell
        assert footprint.sum() == (bank == 1).sum()  # the bank cell whole, with its own pixels
        assert np.isclose(pasted_image[:, torch.from_numpy(footprint)].sum(), image[:, torch.from_numpy(bank == 1)].sum())
        assert (pasted_weight[footprint] == 1).all()
        under = np.unique(instances[footprint])
        neighbours = np.unique(pasted[ndimage.binary_dilation(footprint) & ~footprint])
        assert len(set(under) - {0}) <= 1  # over background and at most the one nucleus it was pasted against
        assert set(neighbours) - {0, cell}  # which it touches
    assert (pasted_image[:, torch.from_numpy(~new)] == image[:, torch.from_numpy(~new)]).all()


def test_an_image_without_a_bank_cell_has_no_touching_pairs():
    image, instances, weight, bank = one_labelled_nucleus_and_one_bank_cell()
    assert touching_pairs(image, instances, weight, np.zeros_like(bank), np.random.default_rng(0)) is None
