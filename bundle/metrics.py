"""metrics: how registered labels are scored against a cell's own ground truth.

Per pair (all batched over pairs except the connected-component count):

* ``dice``, ``iou``: overlap of the warped archetype mask with the cell's ground-truth mask;
* ``neg_jac_pct``: % of pixels where the Jacobian determinant of the field is <= 0 (folding);
* ``one_component``: the warped mask is one connected piece (8-connectivity);
* ``dtheta_deg``: D_theta, the angle between the axis read from the warped orientation ramp and the ground-truth
  mask's principal axis, in degrees [0, 90]; only for elongated ground-truth cells (axis ratio >= ``MIN_ELONGATION``),
  NaN for round ones, whose axis is noise (a random axis scores 45 on average);
* ``elongated_pct``: the share of cells on which D_theta is defined.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import ndimage

from .patches import angle_difference, elongation, orientation_from_ramp, principal_angle

from .transforms import jacobian_determinant

MIN_ELONGATION = 1.5


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


def counting_scores(detected: np.ndarray, truth: np.ndarray, radius: float = 12.0) -> dict:
    """Precision, recall and F1 of detections (N, 2) against ground-truth centroids (M, 2), both (row, col).

    The standard rule: a one-to-one Hungarian matching of detections to nuclei minimising total distance, where a pair
    counts only within ``radius`` pixels.
    """
    from scipy.optimize import linear_sum_assignment
    from scipy.spatial.distance import cdist

    detected, truth = np.asarray(detected, float).reshape(-1, 2), np.asarray(truth, float).reshape(-1, 2)
    tp = 0
    if len(detected) and len(truth):
        distance = cdist(detected, truth)
        # pairs beyond the radius may not be matched: give them a cost no admissible matching would pay
        cost = np.where(distance <= radius, distance, 1e6)
        rows, cols = linear_sum_assignment(cost)
        tp = int((distance[rows, cols] <= radius).sum())
    precision = tp / len(detected) if len(detected) else float(len(truth) == 0)
    recall = tp / len(truth) if len(truth) else float(len(detected) == 0)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "tp": tp, "n_detected": len(detected),
            "n_truth": len(truth)}
