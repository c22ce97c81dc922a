"""whole_image: the whole-image benchmark (``scripts/benchmark.py annotate``): test images, ours against baselines, the
paper's metrics.

For one seed: the bank is that seed's ``fraction`` of the train cells; the test images are annotated by the real
workflow (``configs/inference.yaml``: its ``inferer`` and ``network_def``) with the shipped weights, or with networks
retrained on that bank (``retrain``). In the same run, on the same images:

* ``ours``: detect -> match -> register -> warp -> stitch;
* ``ours_gt_centroids``: the same from the ground-truth centroids instead of detections, an upper bound that isolates
  what detection loses;
* the levers of self-training, one at a time: ``student`` (the student's own instances, no archetype),
  ``ours_no_refine`` (the student detects, the warped shapes are not refined), ``ours_no_student`` (the workflow
  without a student: stain proposals, unrefined shapes, i.e. self-training's first teacher);
* ``blob_log``: LoG blobs on the hematoxylin stain (counting only: it gives points, not masks);
* ``otsu_watershed``: Otsu + watershed on the hematoxylin stain, label-free;
* ``unet``: a MONAI ``BasicUNet`` trained on exactly the bank's labels, instances from connected components.

Every method is scored by the same function against the tile's ground truth (``score_tile``):
``counting`` (Hungarian, 12 px), ``counting_paper_rule`` (box IoU >= 0.1, greedy, unique), ``segmentation`` (instances:
object Dice / IoU, AJI, PQ, pixel F1), ``segmentation_cc`` (the paper's protocol: connected components of the binary
masks) and ``orientation`` (D_theta of each matched, elongated nucleus).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import selftrain
from ..data import load_sample
from ..student import student_instances, student_maps
from ..patches import CROP_SIZE, angle_difference, cell_centroids, crop_cell_masks, elongation, principal_angle
from .baselines.segmentation import log_blobs_with_radii, otsu_watershed
from .baselines.unet import background_patches, train_unet, unet_instances
from .metrics import (MIN_ELONGATION, boxes_from_centres, boxes_from_labels, connected_components, counting_scores,
                      counting_scores_paper_rule, matched_pairs, mean_sd, segmentation_scores)
from ..checkpoint import recipe_of
from .protocol import ROOT, Setting, bank_for, inference, machine, test_samples, trained

METHODS = ("ours", "ours_gt_centroids", "student", "ours_no_refine", "ours_no_student", "blob_log", "otsu_watershed",
           "unet")
SEGMENTATION_KEYS = ("dice_obj", "iou_obj", "aji", "pq", "f1_pixel")
COUNTING_KEYS = ("precision", "recall", "f1")


def truth_of(labels: np.ndarray) -> dict:
    """Ground truth of one tile in every form the scores need: labels, centroids, boxes, axis angles, elongation."""
    ids, centroids = cell_centroids(labels)
    masks = crop_cell_masks(labels, ids, centroids, CROP_SIZE).float()
    return {"labels": labels, "centroids": centroids, "boxes": boxes_from_labels(labels)[1],
            "angle": principal_angle(masks), "elongated": (elongation(masks) >= MIN_ELONGATION)}


def instance_centroids(labels: np.ndarray) -> np.ndarray:
    return cell_centroids(labels)[1].reshape(-1, 2)


def score_tile(truth: dict, labels: np.ndarray | None, centres: np.ndarray, boxes: np.ndarray,
               orientation: np.ndarray | None = None) -> dict:
    """Every score of one method on one tile. ``labels`` None: a point detector (counting only)."""
    centres = np.asarray(centres, float).reshape(-1, 2)
    counting = counting_scores(centres, truth["centroids"])
    paper_rule = counting_scores_paper_rule(boxes, truth["boxes"])
    out = {"n": len(centres), "counting": {k: counting[k] for k in COUNTING_KEYS},
           "counting_paper_rule": {k: paper_rule[k] for k in COUNTING_KEYS}}
    if labels is not None:
        out["segmentation"] = segmentation_scores(labels, truth["labels"])
        out["segmentation_cc"] = segmentation_scores(connected_components(labels), connected_components(truth["labels"]))
    if orientation is not None:
        found, gt = matched_pairs(centres, truth["centroids"])
        keep = truth["elongated"][gt].numpy()
        dtheta = angle_difference(torch.as_tensor(orientation[found][keep], dtype=torch.float32), truth["angle"][gt][keep])
        out["orientation"] = {"dtheta_deg": float(dtheta.mean()) if len(dtheta) else float("nan"), "n_scored": int(len(dtheta))}
    return out


def annotate_scores(inferer, network, image, truth: dict, centres=None) -> tuple[dict, dict]:
    """Ours (or ours from given centres) on one tile: scores, and seconds per stage and in all (scoring excluded)."""
    start = time.perf_counter()
    annotation = inferer.annotate(image, network, centres=centres)
    seconds = {"total": time.perf_counter() - start, **annotation.seconds}
    cells = annotation.cells
    found = np.stack([cells["centroid_row"], cells["centroid_col"]], 1) if cells["id"] else np.zeros((0, 2))
    ids, boxes = boxes_from_labels(annotation.labels)
    scores = score_tile(truth, annotation.labels, found, boxes, np.asarray(cells["orientation_deg"], float))
    # how many archetypes answer for the tile, and the share of its cells the busiest one takes (a hub: many cells)
    use = np.bincount(np.asarray(cells["archetype_id"], np.int64)) if cells["id"] else np.zeros(1)
    scores["archetypes"] = {"distinct": int((use > 0).sum()), "busiest_share": float(use.max() / max(use.sum(), 1))}
    return scores, seconds


def run(setting: Setting, seeds: list[int], unet_iterations: int | None = None, methods=METHODS) -> dict:
    """The whole benchmark: every seed (its own bank, and its own networks with ``setting.retrain``), summarised.
    ``methods``: a subset of ``METHODS`` ("ours" always runs)."""
    unknown = set(methods) - set(METHODS)
    if unknown:
        raise ValueError(f"unknown methods {sorted(unknown)}; choose among {METHODS}")
    runs = []
    for seed in seeds:
        bank, bank_path = bank_for(setting, seed)
        networks = {}
        if setting.retrain:  # networks trained on this seed's bank, kept in the work folder
            for which in ("invariant", "mapping"):
                trained(setting, seed, which, bank_path)
                networks[which] = setting.work_for(seed) / f"{which}.pt"
            networks["student"] = self_trained(setting, seed, bank_path, networks)
        runs.append(run_seed(setting, seed, bank, bank_path, networks, unet_iterations, methods))
    return summarise(setting, runs)


def self_trained(setting: Setting, seed: int, bank_path: Path, networks: dict) -> Path:
    """The seed's student, self-trained on the train images with this seed's bank and networks (cached)."""
    path = setting.work_for(seed) / "student.pt"
    if not path.is_file():
        teacher, network = inference(bank_path, setting.device, networks.get("invariant"), networks.get("mapping"),
                                     student=False)
        selftrain.run(setting.train_dir, bank_path, teacher, network, path, seed=seed, device=setting.device)
    return path


def run_seed(setting: Setting, seed: int, bank: dict, bank_path: Path, networks: dict,
             unet_iterations: int | None = None, methods=METHODS) -> dict:
    """One seed of the protocol: every method on every test tile. ``networks`` may hold retrained paths."""
    device = setting.device
    inferer, network = inference(bank_path, device, networks.get("invariant"), networks.get("mapping"),
                                 networks.get("student"))
    # reading the bank, preparing the encoder and embedding the archetypes happen once per folder, not per tile
    start = time.perf_counter()
    inferer.setup()
    setup_seconds = time.perf_counter() - start
    variants = {"ours": (inferer, False), "ours_gt_centroids": (inferer, True),
                "ours_no_refine": (inferer.with_student(inferer.student, refine=False), False),
                "ours_no_student": (inferer.with_student(None), False)}
    unet, unet_train_seconds, background = None, 0.0, []
    if "unet" in methods:
        start = time.perf_counter()
        steps = {} if unet_iterations is None else {"iterations": unet_iterations}
        # the U-Net needs labelled background besides the bank (see baselines.unet); counted in its budget
        background = background_patches(setting.train_dir, seed=seed, organ=setting.organ)
        unet = train_unet(bank, background=background, seed=seed, device=device, progress=True, **steps)
        unet_train_seconds = time.perf_counter() - start
    segmenters = {"otsu_watershed": otsu_watershed, "unet": lambda x: unet_instances(unet, x),
                  "student": lambda x: student_instances(*student_maps(inferer.student, x))}
    tiles = []
    for sample in tqdm(test_samples(setting), desc=f"seed {seed}: test tiles", unit="tile"):
        image, labels = load_sample(sample)
        truth = truth_of(labels)
        tile = {"image_id": sample.image_id, "organ": sample.organ, "n_truth": len(truth["centroids"]), "methods": {},
                "seconds": {}}
        for name in METHODS:
            if name not in methods and name != "ours":
                continue
            start = time.perf_counter()
            if name in variants:
                variant, from_truth = variants[name]
                tile["methods"][name], tile["seconds"][name] = annotate_scores(
                    variant, network, image, truth, truth["centroids"] if from_truth else None)
            elif name == "blob_log":
                blobs, radii = log_blobs_with_radii(image)
                tile["seconds"][name] = {"total": time.perf_counter() - start}
                tile["methods"][name] = score_tile(truth, None, blobs, boxes_from_centres(blobs, radii))
            else:
                instances = segmenters[name](image)
                tile["seconds"][name] = {"total": time.perf_counter() - start}
                tile["methods"][name] = score_tile(truth, instances, instance_centroids(instances),
                                                   boxes_from_labels(instances)[1])
        tiles.append(tile)
        ours = tile["methods"]["ours"]
        tqdm.write(f"{sample.image_id}: truth {tile['n_truth']}, ours {ours['n']} (F1 {ours['counting']['f1']:.3f}, "
                   f"object Dice {ours['segmentation']['dice_obj']:.3f}, AJI {ours['segmentation']['aji']:.3f}), "
                   f"{tile['seconds']['ours']['total']:.1f} s")
    student = Path(networks.get("student") or ROOT / "models" / "student.pt")
    return {"seed": seed, "n_bank": len(bank["images"]), "setup_seconds": setup_seconds,
            "student": recipe_of(student) if student.is_file() else None,
            "unet_train_seconds": unet_train_seconds,
            "unet_background_patches": len(background), "proposals": bank["meta"].get("proposals"), "tiles": tiles}


def _block(scores: list[dict], keys) -> dict:
    out = {}
    for k in keys:
        out.update(mean_sd(k, [s[k] for s in scores]))
    return out


def summarise(setting: Setting, runs: list[dict]) -> dict:
    """Mean and sd over every (seed, tile) of each score, per method, as ``{key: mean, key_sd: sd}``; ``ours`` at the
    top level, the others under ``baselines.<name>`` (the issue's JSON layout)."""
    records = [tile for run in runs for tile in run["tiles"]]

    def block(method: str) -> dict:
        scores = [tile["methods"][method] for tile in records]
        out = {"counting": _block([s["counting"] for s in scores], COUNTING_KEYS),
               "counting_paper_rule": _block([s["counting_paper_rule"] for s in scores], COUNTING_KEYS),
               **mean_sd("n_per_tile", [s["n"] for s in scores])}
        if "segmentation" in scores[0]:
            for key in ("segmentation", "segmentation_cc"):
                out[key] = _block([s[key] for s in scores], SEGMENTATION_KEYS)
        if "orientation" in scores[0]:
            out["orientation"] = _block([s["orientation"] for s in scores], ("dtheta_deg",))
        if "archetypes" in scores[0]:
            out["archetypes"] = _block([s["archetypes"] for s in scores], ("distinct", "busiest_share"))
        seconds = [tile["seconds"][method] for tile in records]
        out.update(mean_sd("seconds_per_tile", [s["total"] for s in seconds]))
        out["stage_seconds"] = {k: float(np.mean([s[k] for s in seconds])) for k in seconds[0] if k != "total"}
        return out

    return {"organ": setting.organ or "all", "test_organs": sorted({t.get("organ") or "" for t in records}), "seeds": [r["seed"] for r in runs], "fraction": setting.fraction,
            "n_tiles": len(runs[0]["tiles"]), **mean_sd("n_bank", [r["n_bank"] for r in runs]),
            "models": "retrained on each seed's bank" if setting.retrain else "shipped (models/)",
            "device": setting.device, "machine": machine(), **block("ours"),
            "baselines": {m: block(m) for m in METHODS[1:] if m in records[0]["methods"]},
            **mean_sd("setup_seconds", [r["setup_seconds"] for r in runs]),
            **mean_sd("unet_train_seconds", [r["unet_train_seconds"] for r in runs]),
            "unet_background_patches": runs[0]["unet_background_patches"],
            "student": runs[0]["student"],
            "n_truth_per_tile": {t["image_id"]: t["n_truth"] for t in runs[0]["tiles"]},
            "runs": runs}


def print_summary(result: dict) -> None:
    print(f"\n{result['organ']}: {result['n_tiles']} test tiles x seeds {result['seeds']}, bank "
          f"{result['n_bank']:.0f} cells, models {result['models']}")
    header = f"{'method':<20}{'count F1':>16}{'paper-rule F1':>16}" + "".join(f"{k:>16}" for k in SEGMENTATION_KEYS)
    print(header + f"{'D_theta':>10}{'s/tile':>8}")
    for name in METHODS:
        if name != "ours" and name not in result["baselines"]:
            continue
        r = result if name == "ours" else result["baselines"][name]
        fmt = lambda b, k: f"{b[k]:.3f}±{b[k + '_sd']:.3f}"  # noqa: E731
        seg = "".join(f"{fmt(r['segmentation'], k):>16}" if "segmentation" in r else f"{'-':>16}" for k in SEGMENTATION_KEYS)
        dtheta = f"{r['orientation']['dtheta_deg']:>10.1f}" if "orientation" in r else f"{'-':>10}"
        print(f"{name:<20}{fmt(r['counting'], 'f1'):>16}{fmt(r['counting_paper_rule'], 'f1'):>16}{seg}{dtheta}"
              f"{r['seconds_per_tile']:>8.2f}")
