"""annotate: the bundle's main job, whole-image annotation from an archetype bank.

    detect -> match -> register -> warp -> stitch

1. **detect** (``bundle.detect``): hematoxylin proposals (foreground above Otsu's and the local threshold, split by a
   watershed), with the parameters calibrated on the bank's own cells (stored in the bank). A proposal whose nearest
   archetype is less than ``min_similarity`` alike is dropped; the default 0 keeps all (every threshold tried lowered
   counting F1 on the train tiles). Two proposals on one nucleus are merged at stitching.
2. **match** (``bundle.matching``): every proposal to its nearest archetype, one matrix product.
3. **register** (``bundle.register``): dihedral pre-alignment, then DiffeoMappingNet, batched over all cells.
4. **warp**: the archetype's mask and orientation ramp go through the same field (MONAI ``Warp``).
5. **stitch** (``bundle.stitch``): warped masks into one instance label map, overlaps resolved by confidence.

``ArchetypeInferer`` is also the bundle's ``inferer``: MONAI Label's ``BundleInferTask`` calls
``inferer(image, network_def)`` with one image tensor and gets the instance label map back.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.inferers import Inferer
from tqdm.auto import tqdm

from .bank import load_bank
from .data import DataError, list_dataset, read_image
from .detect import nucleus_proposals
from .matching import nearest_archetype
from .patches import PATCH_SIZE, centre_crop, crop_patches, orientation_from_ramp, orientation_ramp
from .register import register
from .stitch import stitch

logger = logging.getLogger(__name__)

CELL_COLUMNS = ("id", "centroid_row", "centroid_col", "area", "orientation_deg", "match_distance", "archetype_id",
                "folded_pct")


@dataclass
class Annotation:
    """One annotated image: ``labels`` (H, W) int32 and a per-cell table (columns ``CELL_COLUMNS``, label order)."""

    labels: np.ndarray
    cells: dict
    seconds: dict
    n_proposals: int = 0
    n_duplicates: int = 0


def load_weights(network: torch.nn.Module, path) -> torch.nn.Module:
    """Load a ``{"model": state_dict}`` checkpoint (weights only) into ``network``; DataError names a bad file."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: checkpoint not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        network.load_state_dict(state.get("model", state) if isinstance(state, dict) else state)
    except RuntimeError as err:
        raise DataError(f"{path}: checkpoint does not match {type(network).__name__} ({str(err).splitlines()[0]})") from err
    except Exception as err:  # unreadable, truncated, not a checkpoint
        raise DataError(f"{path}: not a readable checkpoint ({type(err).__name__}: {err})") from err
    return network


@torch.no_grad()
def frozen(network: torch.nn.Module, input_shape: tuple) -> torch.jit.ScriptModule:
    """The network in eval mode as a frozen TorchScript graph for inference, traced on zeros of ``input_shape``.

    Freezing folds batch norm into the convolutions and lets oneDNN fuse them with their activations: DiffeoInvariantNet
    embeds 568 crops about 1.5x faster on CPU, with the same embeddings (to 1e-6). The graph holds copies of the
    weights, so it is built after they are loaded.
    """
    network.eval()
    device = next(network.parameters()).device
    traced = torch.jit.trace(network, torch.zeros(input_shape, device=device))
    return torch.jit.optimize_for_inference(torch.jit.freeze(traced))


class ArchetypeInferer(Inferer):
    """Annotate whole images with a bank, DiffeoInvariantNet (``invariant``) and DiffeoMappingNet (the ``network``).

    Args:
        bank: a bank dictionary or the path of a bank file.
        invariant: a DiffeoInvariantNet, trained, or to be loaded from ``invariant_path``.
        invariant_path: its checkpoint; None if ``invariant`` is trained already.
        min_similarity: proposals whose nearest archetype has a lower cosine similarity are not cells.
        align: dihedral pre-alignment metric ("mi", "ncc") or None.
        batch_size: cells per network call.

    Files are read at the first call, not at construction, so that a config can always be parsed and a bad file is
    reported by name where the work starts.
    """

    def __init__(self, bank, invariant: torch.nn.Module, invariant_path=None, min_similarity: float = 0.0,
                 align: str | None = "mi", batch_size: int = 32):
        super().__init__()
        self.bank, self.invariant, self.invariant_path = bank, invariant, invariant_path
        self.min_similarity, self.align, self.batch_size = min_similarity, align, batch_size
        self.archetypes = None
        self._encoder = None
        self.bank_embeddings = None

    def setup(self) -> None:
        """Once per inferer: read the bank and the encoder's weights, freeze the encoder, embed the archetypes."""
        if self.archetypes is not None:
            return
        bank = load_bank(self.bank) if isinstance(self.bank, (str, Path)) else self.bank
        if self.invariant_path is not None:
            load_weights(self.invariant, self.invariant_path)
        self._encoder = frozen(self.invariant, (1, bank["images"].shape[1], PATCH_SIZE, PATCH_SIZE))
        masks = centre_crop(bank["masks"].float(), PATCH_SIZE)
        self.archetypes = {"image": centre_crop(bank["images"].float() / 255.0, PATCH_SIZE), "mask": masks,
                           "ramp": orientation_ramp(masks)}
        # calibrated on this bank's cells when it was built (``detect.calibrate_proposals``); older banks: defaults
        self.proposal_params = bank.get("meta", {}).get("proposals")
        self.bank_embeddings = self.embed(self.archetypes["image"])

    @property
    def device(self) -> torch.device:
        return next(self.invariant.parameters()).device

    @torch.no_grad()
    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (N, D) of patches (N, C, P, P), in batches."""
        if len(crops) == 0:  # an image without cells: an empty (0, D) embedding, D from one dummy pass
            return self._encoder(torch.zeros(1, *crops.shape[1:], device=self.device))[:0]
        out = [self._encoder(crops[s : s + self.batch_size].to(self.device)) for s in range(0, len(crops), self.batch_size)]
        return torch.cat(out)

    def annotate(self, image: torch.Tensor, network: torch.nn.Module, centres: np.ndarray | None = None) -> Annotation:
        """Annotate one image (C, H, W) in [0, 1].

        ``centres`` (N, 2) (row, col) replaces detection, e.g. by ground-truth centroids: the benchmark's upper bound
        that isolates detection errors, or points a user clicked.
        """
        self.setup()
        if image.ndim != 3:
            raise ValueError(f"expected one image (C, H, W), got shape {tuple(image.shape)}")
        c, h, w = image.shape
        if min(h, w) < PATCH_SIZE:
            raise DataError(f"image of {h}x{w} pixels is smaller than a {PATCH_SIZE}x{PATCH_SIZE} patch")
        if c != self.archetypes["image"].shape[1]:
            raise DataError(f"image has {c} channels but the bank's archetypes have {self.archetypes['image'].shape[1]}")
        seconds = {}
        t = time.perf_counter()
        centres = nucleus_proposals(image, self.proposal_params) if centres is None else np.asarray(centres, np.float32).reshape(-1, 2)
        crops = crop_patches(image, centres, PATCH_SIZE)
        seconds["detect"] = time.perf_counter() - t

        t = time.perf_counter()
        index, distance = nearest_archetype(self.embed(crops), self.bank_embeddings)
        is_cell = (1.0 - distance) >= self.min_similarity
        index, distance = index[is_cell].cpu(), distance[is_cell].cpu()
        centres, crops = centres[is_cell.cpu().numpy()], crops[is_cell.cpu()]
        seconds["match"] = time.perf_counter() - t

        t = time.perf_counter()
        archetypes = {k: v[index] for k, v in self.archetypes.items()}
        warped = register(network, archetypes, crops.to(self.device), align=self.align, batch_size=self.batch_size)
        seconds["register_warp"] = time.perf_counter() - t

        t = time.perf_counter()
        stitched = stitch(warped["mask"], centres, (h, w), confidence=-distance)
        cells = cell_table(stitched.labels, stitched.kept, warped, index, distance)
        seconds["stitch"] = time.perf_counter() - t
        return Annotation(stitched.labels, cells, seconds, n_proposals=len(is_cell),
                          n_duplicates=len(stitched.duplicates))

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> torch.Tensor:
        """MONAI inferer interface: image (C, H, W) or (1, C, H, W) -> instance labels (1, 1, H, W) int32 tensor."""
        image = inputs[0] if inputs.ndim == 4 else inputs
        annotation = self.annotate(torch.as_tensor(image).float(), network)
        self.last = annotation
        return torch.from_numpy(annotation.labels)[None, None]


def cell_table(labels: np.ndarray, kept: np.ndarray, warped: dict, index: torch.Tensor, distance: torch.Tensor) -> dict:
    """Per-cell measurements in label order (label i + 1 is cell ``kept[i]``). Area and centroid come from the
    stitched label map, so the table always agrees with it; orientation is read from the cell's warped ramp. All cells
    at once: one bincount per column over the label map."""
    n = len(kept)
    flat = labels.ravel()
    rows, cols = np.divmod(np.arange(flat.size), labels.shape[1])
    area = np.bincount(flat, minlength=n + 1)[1 : n + 1]
    with np.errstate(invalid="ignore"):  # a label left without pixels has no centroid: nan
        centroid_row = np.bincount(flat, rows, minlength=n + 1)[1 : n + 1] / area
        centroid_col = np.bincount(flat, cols, minlength=n + 1)[1 : n + 1] / area
    kept_t = torch.as_tensor(kept, dtype=torch.long)
    if n:
        orientation = orientation_from_ramp(warped["ramp"][kept_t].cpu(), warped["mask"][kept_t].cpu())
    else:
        orientation = torch.zeros(0)
    return {"id": list(range(1, n + 1)), "centroid_row": centroid_row.tolist(), "centroid_col": centroid_col.tolist(),
            "area": area.tolist(), "orientation_deg": orientation.tolist(),
            "match_distance": distance[kept_t].cpu().tolist(), "archetype_id": index[kept_t].cpu().tolist(),
            "folded_pct": warped["folded_pct"][kept_t].cpu().tolist()}


def run_folder(dataset_dir, output_dir, inferer: ArchetypeInferer, network: torch.nn.Module) -> list[dict]:
    """Annotate every image of a folder and write the outputs; one line per image. Returns the per-image summaries."""
    from .outputs import write_outputs

    samples = list_dataset(dataset_dir)
    inferer.setup()  # a bad bank or encoder file is reported as itself, before any image is read
    output_dir = Path(output_dir)
    summaries = []
    for sample in tqdm(samples, desc="annotating", unit="image"):
        t = time.perf_counter()
        image = read_image(sample.image_path)
        try:
            annotation = inferer.annotate(image, network)
        except DataError as err:
            raise DataError(f"{sample.image_path}: {err}") from err
        paths = write_outputs(annotation, image, output_dir, sample.image_id)
        seconds = time.perf_counter() - t
        summary = {"image_id": sample.image_id, "cells": len(annotation.cells["id"]), "seconds": round(seconds, 2),
                   "stages": {k: round(v, 3) for k, v in annotation.seconds.items()}, "outputs": [str(p) for p in paths]}
        summaries.append(summary)
        tqdm.write(f"{sample.image_id}: {summary['cells']} cells in {seconds:.1f} s")
    print(f"outputs in {output_dir.resolve()}")
    return summaries


def main(dataset_dir, output_dir, inferer: ArchetypeInferer, network: torch.nn.Module, network_path) -> list[dict]:
    """The bundle's ``run``: load DiffeoMappingNet's weights and annotate the folder. Bad input ends with one clear
    line naming the file and exit status 1, not a traceback, and leaves no partial outputs."""
    try:
        return run_folder(dataset_dir, output_dir, inferer, load_weights(network, network_path))
    except DataError as err:
        raise SystemExit(f"error: {err}") from None


class ReadImaged:
    """Dictionary transform: read ``data[key]`` (a path) with ``bundle.data.read_image`` into (C, H, W) float [0, 1].

    MONAI's own ``LoadImage`` returns 2-D images with rows and columns swapped and loses the bit depth needed for
    scaling (see ``bundle.data``), hence this reader in the bundle's ``preprocessing``.
    """

    def __init__(self, keys="image"):
        self.keys = [keys] if isinstance(keys, str) else list(keys)

    def __call__(self, data: dict) -> dict:
        data = dict(data)
        for key in self.keys:
            if isinstance(data[key], (str, Path)):
                data[key] = read_image(data[key])
        return data
