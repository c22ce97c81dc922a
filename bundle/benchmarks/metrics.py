"""metrics: how registered labels are scored against a cell's own ground truth.

Per pair (all batched over pairs except the connected-component count):

* ``dice``, ``iou``: overlap of the warped archetype mask with the cell's ground-truth mask;
* ``neg_jac_pct``: % of pixels where the Jacobian determinant of the field is <= 0 (folding);
* ``one_component``: the warped mask is one connected piece (8-connectivity);
* ``dtheta_deg``: D_theta, the angle between the axis read from the warped orientation ramp and the ground-truth
  mask's principal axis, in degrees [0, 90]; only for elongated ground-truth cells (axis ratio >= ``MIN_ELONGATION``),
  NaN for round ones, whose axis is noise (a random axis scores 45 on average);
* ``elongated_pct``: the share of cells on which D_theta is defined.

Whole-image metrics, of a predicted instance label map against the ground-truth one (both (H, W) integer, 0 =
background, any positive ids; every one is computed from the table of pixels shared by each (pred, truth) pair, never
from one full-image mask per object):

* ``object_dice_iou``: GlaS object-level Dice (Sirinukunwattana et al. 2017) and its IoU analogue;
* ``aggregated_jaccard_index``: AJI (Kumar et al. 2017);
* ``panoptic_quality``: PQ = SQ x RQ (Kirillov et al. 2019), matched at IoU > 0.5 by MONAI's implementation;
* ``pixel_f1``: Dice of the binary foregrounds;
* ``segmentation_scores``: all of the above in one dict; the paper's protocol first merges touching instances with
  ``connected_components`` (8-connectivity), i.e. ``segmentation_scores(connected_components(pred),
  connected_components(truth))``.

Counting by boxes, the paper's rule: ``counting_scores_paper_rule`` matches detected boxes to ground-truth boxes greedily
and one-to-one in decreasing box IoU (>= 0.1); boxes are (row0, col0, row1, col1) with exclusive ends, from
``boxes_from_labels`` (instance maps) or ``boxes_from_centres`` (point detectors). The paper drew its (y, x) polygons as
(x, y), i.e. scored against transposed nuclei: rows stay rows here.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.data.box_utils import box_iou
from scipy import ndimage
from skimage.segmentation import relabel_sequential

from ..fields import jacobian_determinant
from ..patches import angle_difference, elongation, orientation_from_ramp, principal_angle

MIN_ELONGATION = 1.5


def mean_sd(name: str, values) -> dict:
    """``{name: mean, name_sd: sd}`` over the finite values, sd with ddof = 1 (0 for one value; NaN for none): how
    every benchmark reports a figure over seeds, tiles or cells."""
    values = np.asarray([v for v in values if v is not None and np.isfinite(v)], float)
    mean = float(values.mean()) if len(values) else float("nan")
    sd = float(values.std(ddof=1)) if len(values) > 1 else (0.0 if len(values) else float("nan"))
    return {name: mean, f"{name}_sd": sd}


def dice_iou(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Dice and IoU (N,) of binary masks (N, 1, H, W); two empty masks score 1."""
    p, t = pred.flatten(1) > 0.5, target.flatten(1) > 0.5
    inter = (p & t).sum(1).float()
    total = p.sum(1).float() + t.sum(1).float()
    union = (p | t).sum(1).float()
    dice = torch.where(total > 0, 2 * inter / total.clamp_min(1), torch.ones_like(inter))
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    return dice, iou


def n_components(masks: torch.Tensor) -> np.ndarray:
    """Connected components (N,) of each binary mask (N, 1, H, W), 8-connectivity."""
    structure = np.ones((3, 3), dtype=bool)
    return np.array([ndimage.label(m[0].cpu().numpy() > 0.5, structure)[1] for m in masks])


def registration_scores(masks: torch.Tensor, ramps: torch.Tensor, targets: torch.Tensor, ddf=None) -> dict:
    """Per-pair scores (numpy arrays (N,)) of warped masks and ramps (N, 1, H, W) against ground-truth masks.

    ``ddf`` (N, 2, H, W) gives the folding; without it (an unwarped row) folding is 0.
    """
    dice, iou = dice_iou(masks, targets)
    folded = (jacobian_determinant(ddf) <= 0).float().mean(dim=(1, 2)) * 100 if ddf is not None else torch.zeros(len(masks))
    dtheta = angle_difference(orientation_from_ramp(ramps, masks), principal_angle(targets.float()))
    elongated = elongation(targets) >= MIN_ELONGATION
    dtheta = torch.where(elongated, dtheta, torch.full_like(dtheta, float("nan")))
    return {
        "dice": dice.cpu().numpy(),
        "iou": iou.cpu().numpy(),
        "neg_jac_pct": folded.cpu().numpy(),
        "one_component_pct": 100.0 * (n_components(masks) == 1),
        "dtheta_deg": dtheta.cpu().numpy(),
        "elongated_pct": 100.0 * elongated.float().cpu().numpy(),
    }


def matched_pairs(detected: np.ndarray, truth: np.ndarray, radius: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """Indices (detection, truth) of the pairs of the counting rule: a one-to-one Hungarian matching of detections
    (N, 2) to ground-truth centroids (M, 2), both (row, col), minimising total distance, where a pair counts only within
    ``radius`` pixels."""
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    detected, truth = np.asarray(detected, float).reshape(-1, 2), np.asarray(truth, float).reshape(-1, 2)
    if not len(detected) or not len(truth):
        return np.zeros(0, int), np.zeros(0, int)
    distance = cdist(detected, truth)
    # pairs beyond the radius may not be matched: give them a cost no admissible matching would pay
    rows, cols = linear_sum_assignment(np.where(distance <= radius, distance, 1e6))
    ok = distance[rows, cols] <= radius
    return rows[ok], cols[ok]


def counting_scores(detected: np.ndarray, truth: np.ndarray, radius: float = 12.0) -> dict:
    """Precision, recall and F1 of detections (N, 2) against ground-truth centroids (M, 2), both (row, col), by the
    ``matched_pairs`` rule."""
    n_detected, n_truth = len(np.asarray(detected).reshape(-1, 2)), len(np.asarray(truth).reshape(-1, 2))
    return precision_recall_f1(len(matched_pairs(detected, truth, radius)[0]), n_detected, n_truth)


def precision_recall_f1(tp: int, n_detected: int, n_truth: int) -> dict:
    """Precision, recall and F1 of ``tp`` true detections among ``n_detected`` for ``n_truth`` objects. Nothing to
    find and nothing found scores 1; nothing found of something, 0."""
    precision = tp / n_detected if n_detected else float(n_truth == 0)
    recall = tp / n_truth if n_truth else float(n_detected == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "n_detected": n_detected,
            "n_truth": n_truth}


# ----------------------------------------------------------------------------------------------------------------------
# Whole-image metrics: instance label maps (H, W) of a tile, 0 = background, any positive ids.
# ----------------------------------------------------------------------------------------------------------------------


def _consecutive(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel an instance map (H, W) to ids 1..N in increasing order of the original ids (``relabel_sequential``).

    Returns (the relabelled map (H, W) int64, the original ids (N,)). Consecutive ids let every per-object quantity be
    an array indexed by ``id - 1`` and the pixel counts of pairs be a bincount.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"an instance label map must be (H, W), got shape {labels.shape}")
    if labels.size and labels.min() < 0:
        raise ValueError("instance ids must be >= 0 (0 = background)")
    relabelled, _, inverse = relabel_sequential(labels.astype(np.int64))
    return relabelled, np.asarray(inverse.out_values[inverse.in_values > 0], np.int64)


class _Overlaps:
    """The contingency table of two consecutive instance maps: areas and the (pred, truth) pairs that share pixels.

    Attributes (indices are ``id - 1`` of the consecutive maps):
        pred_area (P,), truth_area (T,): object areas in pixels;
        pair_pred (K,), pair_truth (K,), pair_inter (K,): every pair with a non-empty intersection, and its size.
    """

    def __init__(self, pred: np.ndarray, truth: np.ndarray):
        if pred.shape != truth.shape:
            raise ValueError(f"pred and truth must have the same shape, got {pred.shape} and {truth.shape}")
        n_pred, n_truth = int(pred.max(initial=0)), int(truth.max(initial=0))
        self.pred_area = np.bincount(pred.ravel(), minlength=n_pred + 1)[1:]
        self.truth_area = np.bincount(truth.ravel(), minlength=n_truth + 1)[1:]
        both = (pred > 0) & (truth > 0)
        # one integer per (pred, truth) pair: counting these keys is the sparse contingency table
        keys, inter = np.unique((pred[both] - 1) * n_truth + (truth[both] - 1), return_counts=True)
        self.pair_pred, self.pair_truth = np.divmod(keys, max(n_truth, 1))
        self.pair_inter = inter

    def pair_union(self) -> np.ndarray:
        """|G ∪ S| (K,) of every overlapping pair."""
        return self.pred_area[self.pair_pred] + self.truth_area[self.pair_truth] - self.pair_inter


def _best_pair(owner: np.ndarray, score: np.ndarray, n_owners: int) -> np.ndarray:
    """For each owner 0..n_owners-1, the index into the pairs of its highest-scoring pair, or -1 if it has none.

    Ties go to the pair listed first (pairs are sorted by (pred, truth), so to the smaller id).
    """
    best = np.full(n_owners, -1, dtype=np.int64)
    if len(owner):
        order = np.lexsort((-score, owner))  # by owner, best score first within an owner; lexsort is stable
        owners, first = np.unique(owner[order], return_index=True)
        best[owners] = order[first]
    return best


def object_dice_iou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """Object-level Dice of the GlaS challenge (Sirinukunwattana et al. 2017), and the same construction with IoU.

    ``pred``, ``truth``: instance label maps (H, W). With G_i the ground-truth objects, S_j the predicted ones,

        Dice_obj = 0.5 * [ sum_i |G_i|/sum|G| * D(G_i, S*(G_i)) + sum_j |S_j|/sum|S| * D(S_j, G*(S_j)) ]

    where S*(G_i) is the predicted object sharing the most pixels with G_i (a G_i that overlaps nothing scores 0) and
    G*(S_j) likewise; IoU_obj replaces D by the IoU. Both maps empty: (1, 1); exactly one empty: (0, 0).
    """
    pred, _ = _consecutive(pred)
    truth, _ = _consecutive(truth)
    ov = _Overlaps(pred, truth)
    n_pred, n_truth = len(ov.pred_area), len(ov.truth_area)
    if n_pred == 0 or n_truth == 0:
        return (1.0, 1.0) if n_pred == n_truth else (0.0, 0.0)
    pair_dice = 2 * ov.pair_inter / (ov.pred_area[ov.pair_pred] + ov.truth_area[ov.pair_truth])
    pair_iou = ov.pair_inter / ov.pair_union()

    def weighted_side(owner, n_owners, area):
        # each object is scored with its partner of maximal overlap, weighted by its share of its side's area
        best = _best_pair(owner, ov.pair_inter, n_owners)
        found = best >= 0
        weight = area / area.sum()
        return (weight[found] * pair_dice[best[found]]).sum(), (weight[found] * pair_iou[best[found]]).sum()

    dice_t, iou_t = weighted_side(ov.pair_truth, n_truth, ov.truth_area)
    dice_p, iou_p = weighted_side(ov.pair_pred, n_pred, ov.pred_area)
    return float(0.5 * (dice_t + dice_p)), float(0.5 * (iou_t + iou_p))


def aggregated_jaccard_index(pred: np.ndarray, truth: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al. 2017) of instance label maps (H, W).

    Each ground-truth object G_i takes the predicted object S of maximal IoU with it; C += |G_i ∩ S|,
    U += |G_i ∪ S|. As in Kumar's algorithm a predicted object may be taken by several G_i (then it enters each of
    their unions: AJI's known over-penalty of merged nuclei). A G_i that overlaps nothing adds |G_i| to U. Finally the
    area of every predicted object taken by no G_i is added to U (false positives cost). AJI = C / U; both maps
    empty: 1.
    """
    pred, _ = _consecutive(pred)
    truth, _ = _consecutive(truth)
    ov = _Overlaps(pred, truth)
    if len(ov.pred_area) == 0 and len(ov.truth_area) == 0:
        return 1.0
    union = ov.pair_union()
    best = _best_pair(ov.pair_truth, ov.pair_inter / union, len(ov.truth_area))
    found = best >= 0
    used = np.zeros(len(ov.pred_area), dtype=bool)
    used[ov.pair_pred[best[found]]] = True
    c = ov.pair_inter[best[found]].sum()
    u = union[best[found]].sum() + ov.truth_area[~found].sum() + ov.pred_area[~used].sum()
    return float(c / u)


def panoptic_quality(pred: np.ndarray, truth: np.ndarray, iou_threshold: float = 0.5) -> dict:
    """Panoptic quality (Kirillov et al. 2019) of instance label maps (H, W), computed by MONAI.

    A predicted and a ground-truth object match when their IoU is > ``iou_threshold`` (strictly, as in MONAI; for a
    threshold >= 0.5 the matching is unique, below it MONAI takes a Hungarian matching). With TP matches of summed IoU
    ``iou_sum``: SQ = iou_sum / TP, RQ = TP / (TP + FP/2 + FN/2), PQ = SQ * RQ. Returns {"pq", "sq", "rq"} floats.
    Both maps empty: all 1 (MONAI alone would give 0); nothing matched: SQ = 0.

    ``monai.metrics.compute_panoptic_quality`` builds a full-image mask per object (time and memory grow as
    objects x pixels: gigabytes for a 1000 x 1000 tile of 600 nuclei), so it is fed small pieces instead. PQ depends on
    the pixel sets only, not on where the pixels lie, and objects of two different groups (connected components of
    the "shares a pixel" graph) have IoU 0 and can never match. So the foreground pixels are sorted by group, groups
    are batched ``_PQ_OBJECTS_PER_CALL`` objects at a time, and each batch goes to MONAI as a (1, L) map of its
    pixels; the sums of MONAI's (TP, FP, FN, IoU sum) over the batches are its answer on the whole map, and the
    matching itself (threshold, uniqueness, Hungarian below 0.5) is MONAI's.
    """
    import torch
    from monai.metrics import compute_panoptic_quality
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components as graph_components

    pred, _ = _consecutive(pred)
    truth, _ = _consecutive(truth)
    ov = _Overlaps(pred, truth)
    n_pred, n_truth = len(ov.pred_area), len(ov.truth_area)
    if n_pred == 0 and n_truth == 0:
        return {"pq": 1.0, "sq": 1.0, "rq": 1.0}

    # groups = connected components of the bipartite overlap graph; nodes 0..P-1 are predictions, P..P+T-1 truths
    n_nodes = n_pred + n_truth
    graph = coo_matrix((np.ones(len(ov.pair_pred)), (ov.pair_pred, n_pred + ov.pair_truth)), shape=(n_nodes, n_nodes))
    n_groups, group = graph_components(graph, directed=False)

    # a batch closes once it holds _PQ_OBJECTS_PER_CALL objects; a group is never split across two batches
    objects_so_far = np.cumsum(np.bincount(group, minlength=n_groups))
    batch_of_group = (objects_so_far - 1) // _PQ_OBJECTS_PER_CALL

    # the batch of every foreground pixel: a pixel in both a prediction and a truth sees the same group through both
    foreground = (pred > 0) | (truth > 0)
    p, t = pred[foreground], truth[foreground]
    pred_group = np.concatenate([[-1], group[:n_pred]])  # by consecutive id; the background (id 0) is in none
    truth_group = np.concatenate([[-1], group[n_pred:]])
    pixel_group = np.where(p > 0, pred_group[p], truth_group[t])
    pixel_batch = batch_of_group[pixel_group]
    order = np.argsort(pixel_batch, kind="stable")
    ends = np.cumsum(np.bincount(pixel_batch))

    counts = torch.zeros(4, dtype=torch.float64)  # TP, FP, FN, IoU sum
    for start, end in zip(np.concatenate([[0], ends[:-1]]), ends):
        if end == start:
            continue
        piece = order[start:end]
        counts += compute_panoptic_quality(
            torch.from_numpy(p[piece].astype(np.int32)[None]), torch.from_numpy(t[piece].astype(np.int32)[None]),
            remap=True, match_iou_threshold=iou_threshold, output_confusion_matrix=True).double()
    tp, fp, fn, iou_sum = counts.tolist()

    sq = iou_sum / tp if tp else 0.0
    rq = tp / (tp + 0.5 * fp + 0.5 * fn)
    return {"pq": sq * rq, "sq": sq, "rq": rq}


# MONAI's cost per call grows as (objects in the call) x (pixels in the call), plus a fixed Python cost per call
_PQ_OBJECTS_PER_CALL = 32


def _slices_to_boxes(slices: list) -> np.ndarray:
    """Boxes (N, 4) (row0, col0, row1, col1), ends exclusive, from the ``ndimage.find_objects`` slices of ids 1..N."""
    return np.array([[s[0].start, s[1].start, s[0].stop, s[1].stop] for s in slices], dtype=float).reshape(-1, 4)


def pixel_f1(pred: np.ndarray, truth: np.ndarray) -> float:
    """F1 (= Dice) of the foregrounds ``pred > 0`` and ``truth > 0`` of two maps (H, W); both empty: 1."""
    p, t = np.asarray(pred) > 0, np.asarray(truth) > 0
    if p.shape != t.shape:
        raise ValueError(f"pred and truth must have the same shape, got {p.shape} and {t.shape}")
    total = int(p.sum()) + int(t.sum())
    return 2 * int((p & t).sum()) / total if total else 1.0


def segmentation_scores(pred: np.ndarray, truth: np.ndarray) -> dict:
    """All whole-image scores of an instance map (H, W) against the ground truth: dice_obj, iou_obj, aji, pq (at IoU
    0.5), f1_pixel, as floats."""
    dice_obj, iou_obj = object_dice_iou(pred, truth)
    return {"dice_obj": dice_obj, "iou_obj": iou_obj, "aji": aggregated_jaccard_index(pred, truth),
            "pq": panoptic_quality(pred, truth)["pq"], "f1_pixel": pixel_f1(pred, truth)}


def connected_components(labels: np.ndarray) -> np.ndarray:
    """The paper's protocol: the foreground ``labels > 0`` (H, W) relabelled into 8-connected components (H, W).

    Touching instances merge into one object, so instance boundaries drawn inside a clump count for nothing.
    """
    from skimage.measure import label

    return label(np.asarray(labels) > 0, connectivity=2)


# ---------------------------------------------------------- counting by boxes (the paper's rule)


def boxes_from_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ids (N,) in increasing order and bounding boxes (N, 4) float of the objects of an instance map (H, W).

    A box is (row0, col0, row1, col1) with exclusive ends (row1 = last row + 1), as skimage's regionprops ``bbox``.
    """
    consecutive, ids = _consecutive(labels)
    return ids, _slices_to_boxes(ndimage.find_objects(consecutive))


def boxes_from_centres(centres: np.ndarray, radii) -> np.ndarray:
    """Boxes (N, 4) of detections given only as centres (N, 2) (row, col) and radii (N,) or one float.

    Convention, the same as ``boxes_from_labels``: an object reaching ``radius`` pixels from its centre pixel spans rows
    row - radius .. row + radius inclusive, so its box is (row - radius, col - radius, row + radius + 1,
    col + radius + 1) with exclusive ends; a radius-0 detection is the box of its one pixel. For a LoG blob of scale
    sigma, radius = sigma * sqrt(2).
    """
    centres = np.asarray(centres, float).reshape(-1, 2)
    radii = np.broadcast_to(np.asarray(radii, float), (len(centres),))[:, None]
    return np.concatenate([centres - radii, centres + radii + 1], axis=1)


def counting_scores_paper_rule(pred_boxes: np.ndarray, truth_boxes: np.ndarray, iou_threshold: float = 0.1) -> dict:
    """Precision, recall and F1 of detected boxes (N, 4) against ground-truth boxes (M, 4) by the paper's rule.

    Boxes are (row0, col0, row1, col1), exclusive ends. Matching is greedy and one-to-one: all (detection, truth) pairs
    with box IoU >= ``iou_threshold`` (and > 0: disjoint boxes never match) are taken in decreasing IoU order, a pair
    being kept if neither of its boxes is matched yet; ties in IoU go to the lower (detection, truth) index. Returns the
    keys of ``counting_scores``.
    """
    pred_boxes = np.asarray(pred_boxes, float).reshape(-1, 4)
    truth_boxes = np.asarray(truth_boxes, float).reshape(-1, 4)
    # MONAI's box IoU, (row0, col0, row1, col1) read as its 2-D "xyxy" corners; float boxes, so no +1 on the extents
    iou = box_iou(pred_boxes, truth_boxes)
    rows, cols = np.nonzero((iou >= iou_threshold) & (iou > 0))
    order = np.argsort(-iou[rows, cols], kind="stable")  # nonzero lists pairs by (row, col): stable keeps that on ties
    pred_used = np.zeros(len(pred_boxes), dtype=bool)
    truth_used = np.zeros(len(truth_boxes), dtype=bool)
    tp = 0
    for r, c in zip(rows[order], cols[order]):
        if not pred_used[r] and not truth_used[c]:
            pred_used[r] = truth_used[c] = True
            tp += 1
    return precision_recall_f1(tp, len(pred_boxes), len(truth_boxes))
