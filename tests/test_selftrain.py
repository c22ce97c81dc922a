"""Self-training's pseudo-labels: confident cells are labels, uncertain pixels teach nothing, the bank's truth wins."""

import numpy as np

from bundle.selftrain import BANK_RING, MARGIN, OUTLINE, best_overlap, pseudo_labels, student_targets


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
