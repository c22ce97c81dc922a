"""Whole-image segmentation scores (object Dice/IoU, AJI, PQ, pixel F1) and the paper's box-counting rule.

Every expected value is worked out by hand on a few rectangles; a rectangle ``rows a:b, cols c:d`` has (b-a)(d-c) pixels.
"""

import numpy as np
import pytest
import torch
from monai.metrics import compute_panoptic_quality
from skimage.draw import disk
from skimage.measure import regionprops

from bundle.benchmarks import metrics
from bundle.benchmarks.metrics import (
    aggregated_jaccard_index,
    boxes_from_centres,
    boxes_from_labels,
    connected_components,
    counting_scores_paper_rule,
    object_dice_iou,
    panoptic_quality,
    pixel_f1,
    segmentation_scores,
)
from conftest import synthetic_tile

KEYS = {"dice_obj", "iou_obj", "aji", "pq", "f1_pixel"}


def paint(shape, *rectangles):
    """An instance map (H, W) with rectangle k (row0, row1, col0, col1) painted with id k + 1."""
    labels = np.zeros(shape, np.int32)
    for k, (r0, r1, c0, c1) in enumerate(rectangles):
        labels[r0:r1, c0:c1] = k + 1
    return labels


def asymmetric_tile():
    """A 40 x 70 map of elongated nuclei placed asymmetrically: a horizontal bar A (4 x 25), a vertical bar B (25 x 4)
    and a short horizontal bar C (4 x 12)."""
    return paint((40, 70), (2, 6, 5, 30), (10, 35, 50, 54), (20, 24, 10, 22))


def random_disks(seed, n, shape):
    """An instance map (H, W) of ``n`` random disks with random large ids (later disks overwrite earlier ones)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int64)
    for _ in range(n):
        rr, cc = disk(rng.uniform(0, shape[0], 2), rng.uniform(5, 12), shape=shape)
        labels[rr, cc] = rng.integers(1, 10**6)
    return labels


# ------------------------------------------------------------------------------------------------ segmentation scores


def test_perfect_prediction_scores_one_on_every_metric():
    truth = asymmetric_tile()
    assert segmentation_scores(truth.copy(), truth) == {key: 1.0 for key in KEYS}
    assert panoptic_quality(truth.copy(), truth) == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    _, boxes = boxes_from_labels(truth)
    assert counting_scores_paper_rule(boxes, boxes)["f1"] == 1.0


def test_segmentation_scores_are_floats_under_the_agreed_keys():
    truth = asymmetric_tile()
    scores = segmentation_scores(np.roll(truth, 2, axis=1), truth)
    assert set(scores) == KEYS
    assert all(type(value) is float and 0.0 <= value <= 1.0 for value in scores.values())


def test_object_dice_matches_hand_computed_value():
    # G1 rows 0:4 cols 0:4 (16 px), G2 rows 0:2 cols 10:14 (8 px); S1 rows 0:4 cols 2:6 (16 px) shares 8 px with G1,
    # S2 rows 6:8 cols 10:13 (6 px) overlaps nothing
    truth = paint((10, 20), (0, 4, 0, 4), (0, 2, 10, 14))
    pred = paint((10, 20), (0, 4, 2, 6), (6, 8, 10, 13))
    # D(G1, S1) = 2 * 8 / 32 = 1/2, IoU(G1, S1) = 8 / 24 = 1/3; G2 and S2 score 0
    # Dice: 0.5 * (16/24 * 1/2 + 16/22 * 1/2) = 23/66; IoU: 0.5 * (16/24 * 1/3 + 16/22 * 1/3) = 23/99
    dice, iou = object_dice_iou(pred, truth)
    assert dice == pytest.approx(23 / 66)
    assert iou == pytest.approx(23 / 99)


def test_object_dice_pairs_by_overlap_but_aji_pairs_by_iou():
    # G rows 0:4 cols 0:10 (40 px). S_big rows 2:12 (100 px) shares 20 px with G (IoU 20/120 = 1/6);
    # S_small rows 0:2 cols 0:8 (16 px) shares only 16 px but has the higher IoU 16/40
    truth = paint((12, 10), (0, 4, 0, 10))
    pred = paint((12, 10), (2, 12, 0, 10), (0, 2, 0, 8))
    # object Dice: G takes S_big (D = 40/140 = 2/7); S_big -> G (2/7, weight 100/116), S_small -> G (D = 32/56 = 4/7,
    # weight 16/116): 0.5 * (2/7 + 66/203) = 62/203
    assert object_dice_iou(pred, truth)[0] == pytest.approx(62 / 203)
    # AJI: G takes S_small: C = 16, U = 40, plus the unused S_big (100): 16/140
    assert aggregated_jaccard_index(pred, truth) == pytest.approx(16 / 140)


def test_aji_counts_unused_predictions_in_the_union():
    g1, g2 = (0, 4, 0, 4), (0, 2, 10, 14)  # 16 px and 8 px
    false_positive = (6, 8, 10, 13)  # 6 px, overlaps nothing
    truth = paint((10, 20), g1)
    assert aggregated_jaccard_index(paint((10, 20), g1, false_positive), truth) == pytest.approx(16 / (16 + 6))
    # a ground-truth object that overlaps nothing adds its area to the union too
    truth = paint((10, 20), g1, g2)
    assert aggregated_jaccard_index(paint((10, 20), g1, false_positive), truth) == pytest.approx(16 / (16 + 6 + 8))


def test_aji_charges_a_merged_prediction_once_per_nucleus_it_is_taken_by():
    # Kumar's algorithm: two nuclei (16 px each) both take the one prediction covering them (36 px), so each adds
    # |G u S| = 36 to the union: AJI = 32 / 72 (AJI+ with unique matching would give 32 / 52)
    truth = paint((4, 10), (0, 4, 0, 4), (0, 4, 5, 9))
    pred = paint((4, 10), (0, 4, 0, 9))
    assert aggregated_jaccard_index(pred, truth) == pytest.approx(32 / 72)


def test_panoptic_quality_of_one_match_one_miss_one_false_positive():
    # G1 rows 0:4 cols 0:5 (20 px) ~ S1 rows 0:4 cols 1:5 (16 px): IoU 0.8 > 0.5, a true positive;
    # G2 rows 8:10 cols 0:4 is missed; S2 rows 8:10 cols 10:14 is a false positive
    truth = paint((10, 20), (0, 4, 0, 5), (8, 10, 0, 4))
    pred = paint((10, 20), (0, 4, 1, 5), (8, 10, 10, 14))
    scores = panoptic_quality(pred, truth)
    assert scores["rq"] == pytest.approx(1 / (1 + 0.5 + 0.5))  # TP / (TP + FP/2 + FN/2)
    assert scores["sq"] == pytest.approx(0.8)
    assert scores["pq"] == pytest.approx(0.4)
    assert segmentation_scores(pred, truth)["pq"] == pytest.approx(0.4)


def test_panoptic_quality_needs_an_iou_strictly_above_the_threshold():
    truth = paint((4, 4), (0, 4, 0, 4))
    pred = paint((4, 4), (0, 4, 0, 2))  # IoU exactly 0.5: MONAI does not match it
    assert panoptic_quality(pred, truth) == {"pq": 0.0, "sq": 0.0, "rq": 0.0}
    assert panoptic_quality(pred, truth, iou_threshold=0.4)["pq"] == pytest.approx(0.5)


@pytest.mark.parametrize("threshold", [0.5, 0.3])
def test_panoptic_quality_agrees_with_monai_on_the_whole_map(monkeypatch, threshold):
    _, truth = synthetic_tile(3)
    # a prediction that shifts, merges (8-connected components of a dilated map) and adds a blob
    from scipy import ndimage

    pred = connected_components(ndimage.binary_dilation(np.roll(truth, 2, axis=0) > 0, iterations=3))
    pred[5:15, 5:15] = pred.max() + 1
    monkeypatch.setattr(metrics, "_PQ_OBJECTS_PER_CALL", 3)  # force several batches of MONAI calls
    ours = panoptic_quality(pred, truth, iou_threshold=threshold)
    for name in ("pq", "sq", "rq"):
        whole = compute_panoptic_quality(torch.from_numpy(pred), torch.from_numpy(truth), metric_name=name,
                                         match_iou_threshold=threshold, smooth_numerator=0.0)
        assert ours[name] == pytest.approx(float(whole), abs=1e-6)
    assert 0 < ours["pq"] < 1


def test_pixel_f1_is_the_dice_of_the_foregrounds():
    truth = paint((10, 20), (0, 4, 0, 4), (0, 2, 10, 14))  # 24 px
    pred = paint((10, 20), (0, 4, 2, 6))  # 16 px, 8 of them on the truth's foreground
    assert pixel_f1(pred, truth) == pytest.approx(2 * 8 / (24 + 16))
    assert pixel_f1(pred * 5 + 1, truth) == pytest.approx(2 * 24 / (200 + 24))  # every pixel is foreground


def test_connected_components_merge_touching_instances():
    labels = paint((10, 20), (0, 4, 0, 4), (0, 4, 4, 8), (4, 6, 8, 10), (8, 10, 15, 20))
    # 1 and 2 share an edge, 3 touches 2 only by a corner (8-connectivity still merges it), 4 stands apart
    components = connected_components(labels)
    assert components.shape == labels.shape
    assert len(np.unique(components[components > 0])) == 2
    assert len(np.unique(components[np.isin(labels, [1, 2, 3])])) == 1
    assert np.array_equal(components > 0, labels > 0)


def test_connected_components_forgive_a_split_of_one_nucleus():
    truth = paint((6, 12), (0, 6, 0, 10))
    halves = paint((6, 12), (0, 6, 0, 5), (0, 6, 5, 10))  # one nucleus cut into two touching instances
    assert segmentation_scores(halves, truth)["pq"] == 0.0  # each half has IoU 0.5: no match
    assert segmentation_scores(connected_components(halves), connected_components(truth)) == {k: 1.0 for k in KEYS}


def test_empty_maps():
    empty = np.zeros((10, 20), np.int32)
    some = paint((10, 20), (0, 4, 0, 4))
    assert segmentation_scores(empty, empty.copy()) == {key: 1.0 for key in KEYS}
    assert panoptic_quality(empty, empty.copy()) == {"pq": 1.0, "sq": 1.0, "rq": 1.0}
    assert segmentation_scores(empty, some) == {key: 0.0 for key in KEYS}
    assert segmentation_scores(some, empty) == {key: 0.0 for key in KEYS}
    assert connected_components(empty).max() == 0
    ids, boxes = boxes_from_labels(empty)
    assert ids.shape == (0,) and boxes.shape == (0, 4)
    nothing = counting_scores_paper_rule(np.zeros((0, 4)), np.zeros((0, 4)))
    assert (nothing["precision"], nothing["recall"], nothing["f1"], nothing["tp"]) == (1.0, 1.0, 1.0, 0)
    missed = counting_scores_paper_rule(np.zeros((0, 4)), boxes_from_labels(some)[1])
    assert (missed["precision"], missed["recall"], missed["f1"]) == (0.0, 0.0, 0.0)


def test_a_map_without_background_is_one_object():
    full = np.full((5, 7), 9)
    half = paint((5, 7), (0, 5, 0, 3))  # 15 of the 35 pixels
    assert segmentation_scores(full, full.copy()) == {key: 1.0 for key in KEYS}
    assert aggregated_jaccard_index(half, full) == pytest.approx(15 / 35)


def test_maps_must_have_the_same_shape():
    with pytest.raises(ValueError, match="shape"):
        segmentation_scores(np.zeros((4, 5), int), np.zeros((5, 4), int))


@pytest.mark.parametrize("scale", [1000, 10**7])  # small ids use a lookup table, huge ones a sort
def test_metrics_do_not_depend_on_label_ids(scale):
    rng = np.random.default_rng(0)
    _, truth = synthetic_tile(4)
    pred = np.roll(truth, (1, 3), axis=(0, 1))
    pred[pred == 5] = 0
    pred[40:50, 60:80] = 99

    def relabel(labels):
        # a random permutation of the ids, spread far apart
        ids = np.unique(labels[labels > 0])
        lookup = np.zeros(labels.max() + 1, np.int64)
        lookup[ids] = (rng.permutation(len(ids)) + 1) * scale + 7
        return lookup[labels]

    reference = segmentation_scores(pred, truth)
    assert segmentation_scores(relabel(pred), relabel(truth)) == pytest.approx(reference)
    assert segmentation_scores(pred.astype(np.uint16), truth.astype(np.uint16)) == pytest.approx(reference)
    assert panoptic_quality(relabel(pred), relabel(truth)) == pytest.approx(panoptic_quality(pred, truth))
    counts = counting_scores_paper_rule(boxes_from_labels(relabel(pred))[1], boxes_from_labels(relabel(truth))[1])
    assert counts == counting_scores_paper_rule(boxes_from_labels(pred)[1], boxes_from_labels(truth)[1])


# ------------------------------------------------------------------------------------------ counting: the paper's rule


def test_boxes_from_labels_are_regionprops_bboxes_with_exclusive_ends():
    labels = asymmetric_tile() * 3  # ids 3, 6, 9
    ids, boxes = boxes_from_labels(labels)
    assert ids.tolist() == [3, 6, 9]
    assert boxes.tolist() == [[2, 5, 6, 30], [10, 50, 35, 54], [20, 10, 24, 22]]
    assert boxes.tolist() == [list(region.bbox) for region in regionprops(labels)]


def test_boxes_from_centres_follow_the_same_convention():
    # a radius-0 detection is the box of its pixel, as boxes_from_labels gives for a one-pixel object
    one_pixel = np.zeros((30, 30), int)
    one_pixel[10, 20] = 1
    assert boxes_from_centres([[10, 20]], 0).tolist() == boxes_from_labels(one_pixel)[1].tolist()
    # radius 3 reaches rows 7..13 and cols 17..23
    assert boxes_from_centres([[10, 20]], 3.0).tolist() == [[7, 17, 14, 24]]
    boxes = boxes_from_centres(np.array([[10.0, 20.0], [5.0, 6.0]]), np.array([1.0, 2.0]))
    assert boxes.tolist() == [[9, 19, 12, 22], [3, 4, 8, 9]]


def test_paper_rule_is_greedy_and_unique():
    truth = np.array([[0, 0, 10, 10], [0, 9, 10, 19]], float)  # T0, T1
    # D0 overlaps T0 (IoU 90/110) and T1 (IoU 20/180 = 0.11); D1 overlaps T0 only (IoU 60/100)
    detected = np.array([[0, 1, 10, 11], [0, 0, 10, 6]], float)
    scores = counting_scores_paper_rule(detected, truth)
    # greedy: D0-T0 is taken first; D1 then finds T0 used, and D0 is used, so T1 stays unmatched, although the
    # matching D0-T1, D1-T0 would have found both
    assert scores["tp"] == 1
    assert scores["precision"] == pytest.approx(0.5) and scores["recall"] == pytest.approx(0.5)
    # without D1, D0 still matches only one nucleus (unique), the better one
    assert counting_scores_paper_rule(detected[:1], truth)["tp"] == 1
    # a second detection whose best nucleus is taken falls back to its next admissible one
    detected = np.array([[0, 1, 10, 11], [0, 2, 10, 12]], float)  # D1: IoU 80/120 with T0, 30/170 with T1
    assert counting_scores_paper_rule(detected, truth)["tp"] == 2


def test_paper_rule_threshold_is_inclusive():
    truth = np.array([[0, 0, 10, 10]], float)
    detected = np.array([[0, 0, 10, 1]], float)  # inside T0: IoU 10/100 = 0.1 exactly
    assert counting_scores_paper_rule(detected, truth)["tp"] == 1
    assert counting_scores_paper_rule(detected, truth, iou_threshold=0.11)["tp"] == 0
    far = np.array([[50, 50, 60, 60]], float)
    assert counting_scores_paper_rule(far, truth, iou_threshold=0.0)["tp"] == 0  # disjoint boxes never match


def test_transposed_ground_truth_scores_lower_on_asymmetric_tile():
    truth = asymmetric_tile()  # A (4 x 25), B (25 x 4), C (4 x 12), 100 + 100 + 48 px
    # the prediction finds A and B exactly, misses C and adds a 6 x 6 false positive D
    pred = truth.copy()
    pred[truth == 3] = 0
    pred[30:36, 30:36] = 4

    correct = segmentation_scores(pred, truth)
    assert correct["dice_obj"] == pytest.approx(0.5 * (200 / 248 + 200 / 236))
    assert correct["iou_obj"] == pytest.approx(0.5 * (200 / 248 + 200 / 236))
    assert correct["aji"] == pytest.approx(200 / (200 + 48 + 36))
    assert correct["pq"] == pytest.approx(2 / (2 + 0.5 + 0.5))
    assert correct["f1_pixel"] == pytest.approx(2 * 200 / (248 + 236))

    # the paper's slip: nuclei read as (y, x) but drawn as (x, y), i.e. the transposed map cut back to 40 x 70
    transposed = np.zeros_like(truth)
    transposed[:, :40] = truth.T[:40, :]
    wrong = segmentation_scores(pred, transposed)
    for key in KEYS:
        assert wrong[key] < correct[key] - 0.4, key

    _, pred_boxes = boxes_from_labels(pred)
    _, truth_boxes = boxes_from_labels(truth)
    right = counting_scores_paper_rule(pred_boxes, truth_boxes)
    assert (right["tp"], right["n_detected"], right["n_truth"]) == (2, 3, 3)
    assert right["precision"] == pytest.approx(2 / 3) and right["f1"] == pytest.approx(2 / 3)
    swapped = counting_scores_paper_rule(pred_boxes, truth_boxes[:, [1, 0, 3, 2]])  # (row, col) read as (col, row)
    assert swapped["tp"] == 0 and swapped["f1"] == 0.0


# ---------------------------------------------------------------------------------------------------- a full tile


def test_a_large_tile_with_hundreds_of_nuclei_scores():
    truth = random_disks(0, 600, (1000, 1000))
    pred = np.roll(truth, 3, axis=1)
    pred[random_disks(1, 100, (1000, 1000)) > 0] = 10**6 + 1  # one large merged false positive region
    for scores in (segmentation_scores(pred, truth),
                   segmentation_scores(connected_components(pred), connected_components(truth))):
        assert set(scores) == KEYS
        assert all(0.2 < value < 1.0 for value in scores.values())
    counts = counting_scores_paper_rule(boxes_from_labels(pred)[1], boxes_from_labels(truth)[1])
    assert 0.5 < counts["f1"] < 1.0
