"""selftrain: learn from every unlabelled nucleus of the train images, with DiffKillR as the teacher.

One round:

1. the teacher (the whole workflow, ``ArchetypeInferer``) annotates every train image;
2. each of its cells is checked against independent image evidence, the pieces of the label-free stain foreground
   (``detect.nucleus_pieces``): a cell whose warped mask and best piece overlap by IoU >= ``AGREEMENT`` is a confident
   pseudo-label, and its pixels that both call nucleus are its label. The two sources fail differently (archetype
   shapes that do not fit; a threshold that merges or cuts), so where they agree both are likely right. This is the
   uncertainty-aware rectification of pseudo-labels: everything uncertain is left unlabelled, never called
   background;
3. every pixel that neither source proposes as (part of) a cell is background;
4. the bank's cells (the only ground truth) are pasted over, with their own ring of background;
5. the student (``bundle.student``) is trained on these maps.

The next round's teacher is the workflow with this student as detector and shape evidence, so its pseudo-labels are
better than the first round's; the student it trains continues from the last one.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.segmentation import find_boundaries
from tqdm.auto import tqdm

from .bank import load_bank
from .data import DataError, list_dataset, load_sample, written_atomically
from .detect import PROPOSAL_DEFAULTS, nucleus_pieces, stain_of
from .student import SLOPE, centre_ness, train_student

__all__ = ["best_overlap", "pseudo_labels", "student_targets", "self_train"]

# IoU between a teacher cell and its best stain piece above which the cell is a confident pseudo-label
AGREEMENT = 0.6
# px around any proposed cell (either source) that are never labelled background: boundaries are uncertain
MARGIN = 3
# px of background ring around each bank cell (its annotator drew the boundary there)
BANK_RING = 2
# px along the inside of each pseudo-cell's outline that teach nothing. The teacher draws cells larger than the
# annotators do, and a student taught its outlines learns that: the v0.9.0 student's foreground was 1.11x the
# true one on the train tiles, its cells larger than the bank's true cells on 9 of 13 tiles. Left out, the outline
# is learnt from the bank's cells. Tuned on the train tiles: 1 px raised the workflow's object Dice by .012 over a
# rerun without it (1.07x the true foreground); 2 px overshot (0.95x) for no further gain. The gain did not carry
# over to the test tiles (model card).
OUTLINE = 1
ROUNDS = 2
ITERATIONS = 1500
# bank cells pasted against a labelled nucleus per train image and round (``touching_pairs``)
TOUCHING = 40


def best_overlap(labels: np.ndarray, other: np.ndarray) -> np.ndarray:
    """For each instance 1..N of ``labels`` (H, W), the IoU (N,) with the instance of ``other`` it overlaps most
    (0 when it overlaps none). One bincount over the pairs of labels, no loop over cells."""
    n, m = int(labels.max()), int(other.max())
    if n == 0:
        return np.zeros(0)
    pairs = np.bincount(labels.ravel().astype(np.int64) * (m + 1) + other.ravel(), minlength=(n + 1) * (m + 1))
    pairs = pairs.reshape(n + 1, m + 1)
    area_a, area_b = pairs.sum(1), pairs.sum(0)
    inter = pairs[1:, 1:]
    if m == 0:
        return np.zeros(n)
    union = area_a[1:, None] + area_b[None, 1:] - inter
    iou = inter / np.maximum(union, 1)
    return iou.max(1)


def pseudo_labels(teacher: np.ndarray, pieces: np.ndarray, bank_cells: np.ndarray | None = None,
                  agreement: float = AGREEMENT) -> tuple[np.ndarray, np.ndarray]:
    """Instances (H, W) int32 and pixel weight (H, W) float32 of one train image's pseudo-labels.

    teacher: DiffKillR's instance map; pieces: the stain foreground's instances (``detect.nucleus_pieces``);
    bank_cells: the image's bank cells as an instance map (0 elsewhere), or None.

    * nucleus (weight 1): the pixels of a confident cell that both sources call nucleus, less its ``OUTLINE``;
    * unlabelled (weight 0): the rest of a confident cell (its outline included), and every other proposed cell with a
      ``MARGIN`` px band;
    * background (weight 1): everything else; around each bank cell its ``BANK_RING`` px ring.
    """
    iou = best_overlap(teacher, pieces)
    keep = np.zeros(int(teacher.max()) + 1, bool)
    keep[1:] = iou >= agreement
    confident = keep[teacher]
    # within a confident cell, only the pixels both sources call nucleus are labels; the rest of either is unsure
    agreed = confident & (pieces > 0)
    instances = np.where(agreed, teacher, 0).astype(np.int32)
    unsure = ndimage.binary_dilation(((teacher > 0) | (pieces > 0)) & ~agreed & ~confident, iterations=MARGIN)
    unsure |= ((teacher > 0) | (pieces > 0)) & ~agreed
    weight = (agreed | ~unsure).astype(np.float32)
    outline = find_boundaries(instances, mode="inner") & (instances > 0)
    if OUTLINE > 1:
        outline = ndimage.binary_dilation(outline, iterations=OUTLINE - 1) & (instances > 0)
    weight[outline] = 0
    if bank_cells is not None and bank_cells.any():
        # the truth wins: pseudo-cells touching a bank cell are dropped (unlabelled), the bank cell and its ring pasted
        near = ndimage.binary_dilation(bank_cells > 0, iterations=BANK_RING)
        touching = np.unique(instances[near])
        clash = np.isin(instances, touching[touching > 0])
        instances[clash], weight[clash] = 0, 0
        ring = near & (bank_cells == 0)
        instances[ring], weight[ring] = 0, 1
        cells = bank_cells > 0
        instances[cells] = bank_cells[cells] + int(instances.max())
        weight[cells] = 1
    return instances, weight


def touching_pairs(image: torch.Tensor, instances: np.ndarray, weight: np.ndarray, bank_cells: np.ndarray,
                   rng: np.random.Generator, n: int = TOUCHING):
    """A copy of one train image (3, H, W) and its pseudo-labels (``pseudo_labels``) with up to ``n`` of its bank
    cells (H, W instance map) pasted, each against a labelled nucleus, overlapping it a little: touching nuclei
    labelled apart, which the confident pseudo-labels almost never hold (two touching nuclei make one stain piece,
    so neither agrees with it). A bank cell's outline is the annotator's, so the boundary it draws across its
    neighbour is a true one. A pasted cell covers no labelled nucleus but its neighbour (it may cover unlabelled
    pixels: its own are labelled by construction, whatever lay there). Returns
    (image, instances, weight), or None when the image has no bank cell or no labelled nucleus."""
    bank_ids = np.unique(bank_cells)[1:]
    targets = np.unique(instances[(weight > 0) & (instances > 0)])
    if not len(bank_ids) or not len(targets):
        return None
    source, image, instances, weight = image, image.clone(), instances.copy(), weight.copy()
    boxes = ndimage.find_objects(bank_cells)
    areas = np.bincount(instances.ravel())
    centres = np.array(ndimage.center_of_mass(np.ones_like(instances), instances, targets))
    free = instances == 0
    h, w = instances.shape
    next_id, pasted = int(instances.max()) + 1, 0
    for _ in range(20 * n):
        if pasted == n:
            break
        b, k = int(rng.choice(bank_ids)), int(rng.integers(len(targets)))
        box = boxes[b - 1]
        cell = bank_cells[box] == b
        a, centre_b = targets[k], np.array(ndimage.center_of_mass(cell))
        reach = 0.85 * (np.sqrt(areas[a] / np.pi) + np.sqrt(cell.sum() / np.pi))
        angle = rng.uniform(0, 2 * np.pi)
        top, left = np.round(centres[k] + reach * np.array([np.sin(angle), np.cos(angle)]) - centre_b).astype(int)
        if top < 0 or left < 0 or top + cell.shape[0] > h or left + cell.shape[1] > w:
            continue
        spot = (slice(top, top + cell.shape[0]), slice(left, left + cell.shape[1]))
        if not (instances[spot][cell] == a).any() or not (free[spot] | (instances[spot] == a))[cell].all():
            continue
        image[(slice(None), *spot)] = torch.where(torch.from_numpy(cell), source[(slice(None), *box)],
                                                 image[(slice(None), *spot)])
        instances[spot][cell], weight[spot][cell] = next_id, 1
        free[spot] &= ~cell
        next_id, pasted = next_id + 1, pasted + 1
    return image, instances, weight


def student_targets(instances: np.ndarray, weight: np.ndarray) -> torch.Tensor:
    """The student's targets (3, H, W) float32: foreground, centre-ness, pixel weight."""
    return torch.from_numpy(np.stack([(instances > 0).astype(np.float32), centre_ness(instances), weight]))


def bank_instances(bank: dict, image_id: str, labels: np.ndarray) -> np.ndarray:
    """The bank's cells of one image as an instance map (H, W) int32 (the cells' own labels; 0 elsewhere)."""
    ids = [int(c) for c, i in zip(bank["cell_ids"].tolist(), bank["image_ids"]) if i == image_id]
    return np.where(np.isin(labels, ids), labels, 0).astype(np.int32)


def self_train(dataset_dir, bank: dict, teacher, network: torch.nn.Module, rounds: int = ROUNDS,
               iterations: int = ITERATIONS, seed: int = 0, organ: str | None = None, exclude=(),
               device="cpu", progress: bool = True) -> tuple[torch.nn.Module, list[dict]]:
    """Self-train a student on the ``train`` images of ``dataset_dir`` for ``rounds`` rounds.

    ``teacher``: an ``ArchetypeInferer`` without a student (round one's teacher); ``network``: its DiffeoMappingNet.
    Of the annotations only the bank's cells are read; every other label comes from the teacher. ``exclude``: image ids
    left out (a held-out validation image). Returns the last student and, per round, its pseudo-label statistics.
    """
    samples = [s for s in list_dataset(dataset_dir, split="train", organ=organ) if s.image_id not in set(exclude)]
    if not samples:
        raise DataError(f"{dataset_dir}: no train images to self-train on")
    params = bank.get("meta", {}).get("proposals") or PROPOSAL_DEFAULTS
    tiles = []
    for sample in tqdm(samples, desc="reading train images", unit="image", disable=not progress):
        image, labels = load_sample(sample)
        stain = stain_of(image)
        tiles.append({"image": image, "pieces": nucleus_pieces(stain, **params),
                      "bank": bank_instances(bank, sample.image_id, labels)})
    student, history = None, []
    for round_ in range(rounds):
        images, targets = [t["image"] for t in tiles], []
        stats = {"round": round_ + 1, "teacher_cells": 0, "confident_cells": 0, "bank_cells": 0, "pasted_cells": 0}
        rng = np.random.default_rng(seed + round_)
        pairs = []
        for tile in tqdm(tiles, desc=f"round {round_ + 1}: the teacher annotates", unit="image", disable=not progress):
            teacher_labels = teacher.annotate(tile["image"], network).labels
            instances, weight = pseudo_labels(teacher_labels, tile["pieces"], tile["bank"])
            n_bank = len(np.unique(tile["bank"])) - 1
            stats["teacher_cells"] += int(len(np.unique(teacher_labels)) - 1)
            stats["bank_cells"] += n_bank
            stats["confident_cells"] += int(len(np.unique(instances)) - 1 - n_bank)
            targets.append(student_targets(instances, weight))
            pasted = touching_pairs(tile["image"], instances, weight, tile["bank"], rng)
            if pasted is not None:
                stats["pasted_cells"] += int(pasted[1].max() - instances.max())
                pairs.append((pasted[0], student_targets(*pasted[1:])))
        stats["labelled_pixels"] = float(np.mean([t[2].mean().item() for t in targets]))
        student = train_student(images + [p[0] for p in pairs], targets + [p[1] for p in pairs],
                                iterations=iterations, seed=seed + round_, device=device, network=student,
                                progress=progress)
        stats["train_seconds"] = student.info["train_seconds"]
        history.append(stats)
        teacher = teacher.with_student(student)
    return student, history


def run(dataset_dir, bank_path, teacher, network: torch.nn.Module, output_path, rounds: int = ROUNDS,
        iterations: int = ITERATIONS, seed: int = 0, device="cpu") -> Path:
    """``configs/selftrain.yaml``: self-train on a folder's train images and write the student's checkpoint
    (``{"model", "recipe", "history"}``, atomically) to ``output_path``."""
    start = time.perf_counter()
    student, history = self_train(dataset_dir, load_bank(bank_path), teacher, network, rounds=rounds,
                                  iterations=iterations, seed=seed, device=device)
    recipe = {"rounds": int(rounds), "iterations": int(iterations), "seed": int(seed), "agreement": AGREEMENT,
              "margin": MARGIN, "bank_ring": BANK_RING, "outline": OUTLINE, "slope": SLOPE, "touching": TOUCHING}
    seconds = time.perf_counter() - start
    with written_atomically(output_path) as (tmp,):
        torch.save({"model": student.state_dict(), "recipe": recipe, "history": history,
                    "seconds": seconds}, tmp)
    print(f"student written to {output_path} ({seconds / 60:.1f} min)")
    return Path(output_path)
