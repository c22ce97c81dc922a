"""bank: the archetype bank, the only ground truth the method sees.

A bank is a seeded random fraction (default 10 %) of the annotated cells of a dataset folder's ``train`` images. It is
stored as one ``torch.save`` dictionary of tensors, strings and numbers, loadable with ``torch.load(weights_only=True)``:

=================  ==========================  ==================================================================
key                type, shape                 meaning
=================  ==========================  ==================================================================
``images``         uint8 (N, C, 96, 96)        cell-centred crops of the image (C = 3 for H&E)
``masks``          uint8 (N, 1, 96, 96)        the centre cell's mask (other cells are background)
``orientation``    float32 (N,)                principal-axis angle, degrees in [0, 180) (see ``patches``)
``centroids``      float32 (N, 2)              (row, col) of the cell in its source image
``cell_ids``       int64 (N,)                  the cell's instance id in its source label map
``image_ids``      list[str] (N)               source image of each cell
``organs``         list[str] (N)               organ of the source image ("" when unknown)
``meta``           dict                        fraction, seed, crop size, candidate counts, source folder,
                                               ``pixel_size_um`` (the images' pixel side, or None) and
                                               ``proposals``: the detector parameters calibrated on the bank
                                               (``proposals_grid``: every point tried, [params, share, proposals])
=================  ==========================  ==================================================================

The orientation ramp (a pixel label) is not stored: ``patches.orientation_ramp(masks)`` recomputes it exactly, and leaving
it out keeps the default bank under the model zoo's 25 MB file limit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from skimage.measure import label, regionprops
from tqdm.auto import tqdm

from .checkpoint import read_checkpoint
from .data import DataError, list_dataset, load_sample, pixel_size_um, written_atomically
from .detect import calibrate_proposals
from .patches import CROP_SIZE, cell_centroids, crop_cell_masks, crop_patches, principal_angle

BANK_KEYS = ("images", "masks", "orientation", "centroids", "cell_ids", "image_ids", "organs", "meta")


def select_cells(groups: list[str], fraction: float, seed: int, per_group: bool) -> np.ndarray:
    """Indices of a seeded random ``fraction`` of cells; with ``per_group``, that fraction of every group (organ).

    At least one cell is taken from every non-empty pool, so a tiny organ is never left without an archetype.
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    groups = np.asarray(groups)
    pools = [np.flatnonzero(groups == g) for g in sorted(set(groups.tolist()))] if per_group else [np.arange(len(groups))]
    chosen = [rng.choice(pool, size=max(1, round(fraction * len(pool))), replace=False) for pool in pools if len(pool)]
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def extract_cells(image: torch.Tensor, labels: np.ndarray, crop_size: int = CROP_SIZE) -> dict:
    """Every annotated cell of one image as crops: images uint8 (N, C, S, S), masks uint8 (N, 1, S, S), orientation,
    centroids, cell_ids."""
    ids, centroids = cell_centroids(labels)
    images = crop_patches(image, centroids, crop_size)
    masks = crop_cell_masks(labels, ids, centroids, crop_size)
    return {
        "images": (images.clamp(0, 1) * 255).round().to(torch.uint8),
        "masks": masks,
        "orientation": principal_angle(masks.float()),
        "centroids": torch.from_numpy(centroids),
        "cell_ids": torch.from_numpy(ids),
    }


def build_bank(
    dataset_dir,
    fraction: float = 0.1,
    seed: int = 0,
    organ: str | None = None,
    per_organ: bool = False,
    split: str = "train",
    crop_size: int = CROP_SIZE,
    pixel_size: float | None = None,
    progress: bool = True,
) -> dict:
    """Draw the bank from the ``split`` images of a dataset folder (see ``data.list_dataset``), and calibrate the
    detector's stain proposals on the drawn cells (``detect.calibrate_proposals``; stored in ``meta["proposals"]``).

    ``pixel_size``: the images' pixel side in micrometres, when their files state none (``data.pixel_size_um``);
    stored as ``meta["pixel_size_um"]``, the scale slides are read at (``bundle.slide``)."""
    samples = list_dataset(dataset_dir, split=split, organ=organ)
    if pixel_size is None:
        stated = [s for s in (pixel_size_um(sample.image_path) for sample in samples) if s is not None]
        pixel_size = float(np.median(stated)) if stated else None
    per_image = []
    for sample in tqdm(samples, desc="reading cells", disable=not progress, unit="image"):
        image, labels = load_sample(sample)
        cells = extract_cells(image, labels, crop_size)
        n = len(cells["cell_ids"])
        cells["image_ids"] = [sample.image_id] * n
        cells["organs"] = [sample.organ or ""] * n
        per_image.append(cells)
    cells = concatenate(per_image)
    n_candidates = len(cells["image_ids"])
    if n_candidates == 0:
        raise DataError(f"{dataset_dir}: the {split} images have no annotated cells, so no bank can be drawn")
    chosen = select_cells(cells["organs"], fraction, seed, per_organ)
    bank = take(cells, chosen)
    bank["meta"] = {
        "fraction": float(fraction),
        "seed": int(seed),
        "organ": organ or "",
        "per_organ": bool(per_organ),
        "split": split,
        "crop_size": int(crop_size),
        "n_candidates": int(n_candidates),
        "n_images": len(samples),
        "source": Path(dataset_dir).name,
        "pixel_size_um": None if pixel_size is None else float(pixel_size),
    }
    calibration = calibrate_proposals(bank, dataset_dir, progress=progress)
    bank["meta"]["proposals"] = calibration["params"]
    bank["meta"]["proposals_found"] = calibration["found"]
    bank["meta"]["proposals_grid"] = [[params, share, n] for params, share, n in calibration["grid"]]
    return bank


# An archetype's mask becomes the answer for every cell matched to it, so it has to look like a whole nucleus: one
# piece, and convex enough. Solidity (area over convex-hull area) below this marks fragments and crescents (about 5 %
# of a 10 % MoNuSeg bank); such a fragment, a hub of the nearest-neighbour search, once matched 62 % of a tile's cells.
MIN_SOLIDITY = 0.85


def whole_archetypes(bank: dict) -> torch.Tensor:
    """Which bank cells (N,) bool may serve as archetypes: masks of one piece with solidity >= ``MIN_SOLIDITY``. The
    others stay ground truth (the student learns from them); only matching skips them."""
    keep = []
    for mask in bank["masks"][:, 0].numpy().astype(np.uint8):
        pieces = label(mask)
        keep.append(pieces.max() == 1 and regionprops(pieces)[0].solidity >= MIN_SOLIDITY)
    return torch.tensor(keep, dtype=torch.bool)


def concatenate(parts: list[dict]) -> dict:
    """Concatenate per-image cell dictionaries (tensors along dim 0, lists joined)."""
    if not parts:
        return {k: [] for k in ("image_ids", "organs")}
    out = {}
    for key, value in parts[0].items():
        out[key] = torch.cat([p[key] for p in parts]) if torch.is_tensor(value) else sum((p[key] for p in parts), [])
    return out


def take(cells: dict, index) -> dict:
    """The cells at ``index`` (1-D integer array) of a cell dictionary."""
    index = np.asarray(index, dtype=np.int64)
    return {
        k: (v[torch.from_numpy(index)] if torch.is_tensor(v) else [v[i] for i in index])
        for k, v in cells.items()
        if k != "meta"
    }


def save_bank(bank: dict, path) -> Path:
    """Write atomically: a crash mid-write never leaves a truncated bank where a good one was."""
    with written_atomically(path) as (tmp,):
        torch.save({k: bank[k] for k in BANK_KEYS}, tmp)
    return Path(path)


def load_bank(path) -> dict:
    """Load and check a bank file; DataError names the file and what is wrong."""
    bank = read_checkpoint(path, "bank file")
    missing = [k for k in BANK_KEYS if k not in bank]
    if missing:
        raise DataError(f"{path}: not a bank file, missing keys {missing}")
    if len(bank["images"]) == 0:
        raise DataError(f"{path}: the bank is empty (no archetypes)")
    return bank


class BankDataset(torch.utils.data.Dataset):
    """The bank's cells as float training items: ``image`` (C, S, S) in [0, 1], ``mask`` (1, S, S), ``cell`` index."""

    def __init__(self, bank: dict):
        self.images = bank["images"]
        self.masks = bank["masks"]

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i].float() / 255.0, "mask": self.masks[i].float(), "cell": torch.tensor(i)}
