"""inferer: whole-image annotation from an archetype bank, the bundle's MONAI ``inferer``.

    detect -> match -> register -> warp -> refine -> stitch

1. **detect**: the student's nuclei (``bundle.student``: its foreground split at valleys of its centre-ness); without
   a student, hematoxylin proposals calibrated on the bank's own cells (``bundle.detect``). A detection whose nearest
   archetype is less than ``min_similarity`` alike is dropped (the default 0: less alike than unrelated
   patches, a negative cosine). Two detections on one nucleus
   are merged at stitching.
2. **match** (``bundle.match``): every proposal to its nearest archetype, one matrix product.
3. **register** (``bundle.register``): dihedral pre-alignment, then DiffeoMappingNet, batched over all cells.
4. **warp**: the archetype's mask and orientation ramp go through the same field (MONAI ``Warp``'s sampling).
5. **refine** (``bundle.refine``, with a student): each warped shape is deformed once more, by a diffeomorphism fitted
   to the student's foreground around the cell; the per-cell uncertainty is how far the registered shape was from it.
6. **stitch** (``bundle.stitch``): warped masks into one instance label map, overlaps resolved by confidence.

An image larger than one region goes through 1-6 region by region (``annotate_regions``), each region keeping the
cells centred in its core.

``configs/inference.yaml`` runs it as ``dataset -> preprocessing -> inferer -> postprocessing``, and MONAI Label's
``BundleInferTask`` calls ``inferer(image, network_def)`` the same way: one image tensor in, the instance label map
out, with the per-cell table in its metadata (``CELLS_KEY``) for the postprocessing that writes the outputs.
"""

from __future__ import annotations

import copy
import ctypes
import functools
import numbers
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm
from monai.data import MetaTensor
from monai.inferers import Inferer

from .bank import load_bank, whole_archetypes
from .checkpoint import load_weights
from .data import OPAQUE_KEY, DataError, image_pixel_size
from .detect import holds_tissue, nucleus_proposals, piece_centroids
from .fields import compose, jacobian_determinant
from .match import nearest_archetype
from .patches import PATCH_SIZE, centre_crop, crop_patches, orientation_ramp
from .refine import STEPS, cell_evidence, dice, follow_image
from .register import register, warp_labels
from .scale import cells_at, labels_at, reading_plan, resample
from .student import student_instances, student_maps
from .stitch import (CELLS_KEY, Annotation, cell_geometry, cell_measurements, cell_table, cells_to_tensor, regions,
                     stitch)

__all__ = ["ArchetypeInferer", "FoundRegion", "RegionCells", "give_back_freed_memory", "region_grid", "compiled",
           "TILE", "MARGIN"]

# Images larger than one region (a TILE core plus its MARGIN each side) are annotated region by region
# (``annotate_regions``), so that the networks' working memory follows the region, not the image. The margin holds a
# nucleus centred on the core's edge and the cells within a patch of it that compete for its pixels (99 % of MoNuSeg
# nuclei are at most 66 px across: model card, "Patch size"), and gives the student context: with 64 px, test tiles cut
# into 512 px cores lost or cut a few cells at the seams, with 96 px none. Both are multiples of 16,
# so every region sees the student's pooling grid as the whole image would. The core's size trades the margins' extra
# work against the student's, which costs more per pixel on larger regions: on a 6000 px mosaic (2 CPU cores) 1536 px
# cores took 2.7 s per megapixel and 3.7 GB at peak, 2048 px cores 3.3 s and 4.4 GB, for the same cells.
TILE = 1536
MARGIN = 96
# a bank with fewer whole archetypes is flagged when it is read: the smallest bank the model card measured holds 21
# cells (2 % of Kidney's train cells); with a handful, every cell takes one of a few shapes and many match none well
FEW_ARCHETYPES = 20


def give_back_freed_memory() -> None:
    """Hand the heap a finished region freed back to the system (glibc's ``malloc_trim``; elsewhere nothing). A region
    frees gigabytes of arrays of every size, and what the allocator keeps fragments: on a 5,000 px slide (2 CPU
    cores) trimming after each region lowered the peak resident memory from 3.0 to 2.5 GB, in the same time."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


@functools.cache
def _glibc():
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim  # noqa: B018 (glibc's own: musl has none)
        return libc
    except (OSError, AttributeError):  # not glibc: macOS, Windows, musl
        return None


def region_grid(shape: tuple[int, int]) -> list:
    """The regions a large image (H, W) is annotated in (``stitch.regions`` with ``TILE`` and ``MARGIN``)."""
    return regions(tuple(shape), TILE, MARGIN)


@dataclass
class RegionCells:
    """One region of a large image, annotated (``ArchetypeInferer.regions_annotated``): its ``index`` in
    ``stitch.regions``' grid, its ``window`` (row0, row1, col0, col1) in the image, ``labels`` (the window's size,
    int32) holding the pixels of its own cells under their final labels and 0 elsewhere, ``cells`` their table (a list
    per column of ``CELL_COLUMNS``, image coordinates), seconds per stage, and the proposals and duplicates it owns."""

    index: int
    window: tuple[int, int, int, int]
    labels: np.ndarray
    cells: dict
    seconds: dict
    n_proposals: int
    n_duplicates: int

@dataclass
class FoundRegion:
    """One region of a large image annotated and stitched on its own (``ArchetypeInferer.region_found``), before it
    claims its pixels in the image's label map: ``labels`` (the window's size, int32) holds its own cells (those
    centred in its core) numbered 1..n, ``measurements`` their columns of the cell table but the geometry."""

    index: int
    window: tuple[int, int, int, int]
    labels: np.ndarray
    measurements: dict
    seconds: dict
    n_proposals: int
    n_duplicates: int


def compiled(network: torch.nn.Module) -> torch.nn.Module:
    """``torch.compile`` of a network for inference, with its weights frozen into the graph (inductor ``freezing``:
    batch norm folded into the convolutions, oneDNN weight prepacking on CPU). Compiled for one input shape, so
    callers pad their batches to it: every other shape would compile again."""
    return torch.compile(network.eval(), dynamic=False, options={"freezing": True})


class ArchetypeInferer(Inferer):
    """Annotate whole images with a bank, DiffeoInvariantNet (``invariant``) and DiffeoMappingNet (the ``network``).

    Args:
        bank: a bank dictionary or the path of a bank file.
        invariant: a DiffeoInvariantNet, trained, or to be loaded from ``invariant_path``.
        invariant_path: its checkpoint; None if ``invariant`` is trained already.
        student: the self-trained dense network (``bundle.student``), or None; loaded from ``student_path`` if given.
            With a student, its instances are the detections and its foreground the evidence each warped shape is
            refined against (``bundle.refine``); without, the stain proposals detect and shapes are not refined.
        student_path: its checkpoint.
        min_similarity: proposals whose nearest archetype has a lower cosine similarity are not cells.
        align: dihedral pre-alignment metric ("mi", "ncc") or None.
        batch_size: cells per network call.
        compile: run the encoder through ``torch.compile`` (a one-off compilation per process, then faster matching;
            see the model card's speed table).
        refine: with a student, refine the warped shapes against its foreground (False: the benchmark's ablation).
        pixel_size: the images' pixel side (um); None: each image file's own (``data.pixel_size_um``). An image whose
            pixel size is known and not the bank's is annotated resampled to the bank's (``bundle.scale``).

    Files are read at the first call (or ``setup``), not at construction, so that a config can always be parsed and a
    bad file is reported by name where the work starts.
    """

    def __init__(self, bank, invariant: torch.nn.Module, invariant_path=None, student: torch.nn.Module | None = None,
                 student_path=None, min_similarity: float = 0.0, align: str | None = "mi", batch_size: int = 32,
                 compile: bool = False, refine: bool = True, pixel_size: float | None = None):
        super().__init__()
        # settings are checked before any file is read or image annotated: a typo must not cost a whole run
        if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
            raise DataError(f"batch_size: must be a whole number of cells, at least 1; got {batch_size!r}")
        try:
            min_similarity = float(min_similarity)
        except (TypeError, ValueError):
            raise DataError(f"min_similarity: must be a number between -1 and 1; got {min_similarity!r}") from None
        if not -1.0 <= min_similarity <= 1.0:  # a cosine similarity: above 1 no detection could be a cell
            raise DataError(f"min_similarity: must be between -1 and 1 (-1 keeps every detection); got {min_similarity}")
        if pixel_size is not None and (isinstance(pixel_size, bool) or not isinstance(pixel_size, numbers.Real)
                                       or not pixel_size > 0):
            raise DataError("pixel_size: must be the pixel's side in micrometres, a number above 0; got "
                            f"{pixel_size!r}")
        self.refine, self.pixel_size = refine, pixel_size
        self.bank, self.invariant, self.invariant_path = bank, invariant, invariant_path
        self.student, self.student_path = student, student_path
        self.min_similarity, self.align, self.batch_size, self.compile = min_similarity, align, batch_size, compile
        self.archetypes = None
        self.archetype_ids = None
        self.encoder = None
        self.bank_embeddings = None
        self.proposal_params = None
        self.bank_pixel_size = None

    def setup(self) -> None:
        """Once per inferer: read the bank and the encoder's weights, prepare the encoder, embed the archetypes."""
        if self.archetypes is not None:
            return
        bank = load_bank(self.bank) if isinstance(self.bank, (str, Path)) else self.bank
        if self.invariant_path is not None:
            load_weights(self.invariant, self.invariant_path)
        if self.student is not None and self.student_path is not None:
            load_weights(self.student, self.student_path)
        self.invariant.eval()
        self.encoder = compiled(self.invariant) if self.compile else self.invariant
        # fragments never become archetypes (``bank.whole_archetypes``); ids stay the bank's
        self.archetype_ids = torch.nonzero(whole_archetypes(bank))[:, 0]
        if len(self.archetype_ids) == 0:
            raise DataError("no cell of the bank is a whole nucleus (one convex-enough piece) to serve as archetype")
        if len(self.archetype_ids) < FEW_ARCHETYPES:
            source = self.bank if isinstance(self.bank, (str, Path)) else "the bank"
            print(f"warning: {source}: only {len(self.archetype_ids)} archetype(s) to match cells to: every cell "
                  f"takes one of their shapes and cells unlike them are dropped; annotate at least {FEW_ARCHETYPES} "
                  "cells (scripts/build_bank.py)", flush=True)
        masks = centre_crop(bank["masks"][self.archetype_ids].float(), PATCH_SIZE)
        self.archetypes = {"image": centre_crop(bank["images"][self.archetype_ids].float() / 255.0, PATCH_SIZE),
                           "mask": masks,
                           "ramp": orientation_ramp(masks)}
        # calibrated on this bank's cells when it was built (``detect.calibrate_proposals``); older banks: defaults
        self.proposal_params = bank.get("meta", {}).get("proposals")
        # the pixel side (um) of the images the archetypes were cut from: slides are read at it (``bundle.slide``)
        self.bank_pixel_size = bank.get("meta", {}).get("pixel_size_um")
        self.bank_embeddings = self.embed(self.archetypes["image"])

    def with_student(self, student: torch.nn.Module | None, refine: bool = True) -> "ArchetypeInferer":
        """The same workflow (bank and encoder shared) with another student: the next self-training round's teacher;
        None: without a student (the first teacher)."""
        self.setup()
        other = copy.copy(self)
        other.student, other.student_path, other.refine = student, None, refine
        return other

    @property
    def device(self) -> torch.device:
        return next(self.invariant.parameters()).device

    @torch.no_grad()
    def embed(self, crops: torch.Tensor) -> torch.Tensor:
        """Unit-norm embeddings (N, D) of patches (N, C, P, P), ``batch_size`` at a time."""
        out = []
        for start in range(0, max(len(crops), 1), self.batch_size):
            batch = crops[start : start + self.batch_size].to(self.device)
            n = len(batch)
            if self.compile or n == 0:  # one input shape for the compiled graph; an empty image still learns D
                batch = torch.cat([batch, batch.new_zeros(self.batch_size - n, *crops.shape[1:])])
            out.append(self.encoder(batch)[:n])
        return torch.cat(out)

    def check_image(self, shape) -> None:
        """Refuse an image (C, H, W) this bank cannot annotate: smaller than a patch, or another number of channels."""
        self.setup()
        if len(shape) != 3:
            raise ValueError(f"expected one image (C, H, W), got shape {tuple(shape)}")
        c, h, w = shape
        if min(h, w) < PATCH_SIZE:
            raise DataError(f"image of {h}x{w} pixels is smaller than a {PATCH_SIZE}x{PATCH_SIZE} patch")
        if c != self.archetypes["image"].shape[1]:
            raise DataError(f"image has {c} channels but the bank's archetypes have {self.archetypes['image'].shape[1]}")

    def annotate(self, image: torch.Tensor, network: torch.nn.Module, centres: np.ndarray | None = None,
                 opaque=None) -> Annotation:
        """Annotate one image (C, H, W) in [0, 1].

        ``centres`` (N, 2) (row, col) replaces detection, e.g. by ground-truth centroids: the benchmark's upper bound
        that isolates detection errors, or points a user clicked. ``opaque`` (H, W) bool, where the image has any
        (``data.read_image_and_opacity``): a transparent pixel holds no image, so no cell is centred on one.
        """
        self.setup()
        self.check_image(image.shape)
        h, w = image.shape[1:]
        if centres is not None:
            centres = np.asarray(centres, np.float32).reshape(-1, 2)
        if opaque is not None:
            opaque = np.asarray(opaque, bool)
        if max(h, w) > TILE + 2 * MARGIN:
            return self.annotate_regions(image, network, centres, opaque)
        found = self.cells(image, network, centres, opaque)
        t = time.perf_counter()
        stitched = stitch(found["warped"]["mask"], found["centres"], (h, w), confidence=-found["distance"])
        cells = cell_table(stitched.labels, stitched.kept, found["warped"], found["archetype"], found["distance"])
        found["seconds"]["stitch"] = time.perf_counter() - t
        return Annotation(stitched.labels, cells, found["seconds"], n_proposals=len(found["proposals"]),
                          n_duplicates=len(stitched.duplicates))

    def annotate_zoomed(self, image: torch.Tensor, network: torch.nn.Module, zoom: float,
                        opaque: np.ndarray | None = None) -> Annotation:
        """``annotate`` of an image (C, H, W) resampled by ``zoom`` to the bank's pixel size (``scale.resample``),
        its label map and cell table brought back to the image's own pixels."""
        h, w = image.shape[1:]
        size = (round(h * zoom), round(w * zoom))
        zoomed = resample(lambda rows, cols: image[:, rows, cols], (h, w), zoom, slice(0, size[0]), slice(0, size[1]))
        if opaque is not None:
            opaque = labels_at(opaque, np.arange(size[0]), np.arange(size[1]), zoom)
        annotation = self.annotate(zoomed, network, opaque=opaque)
        return replace(annotation, labels=labels_at(annotation.labels, np.arange(h), np.arange(w), 1 / zoom),
                       cells=cells_at(annotation.cells, 1 / zoom))

    def annotate_regions(self, image: torch.Tensor, network: torch.nn.Module, centres: np.ndarray | None = None,
                         opaque: np.ndarray | None = None) -> Annotation:
        """``annotate`` of a large image, region by region (``regions_annotated``), so that the networks' working
        memory follows the region; the image and its label map are held whole here (``bundle.slide`` holds neither)."""
        h, w = image.shape[1:]
        labels = np.zeros((h, w), np.int32)
        columns, seconds, n_proposals, n_duplicates = [], {}, 0, 0
        for region in self.regions_annotated(image, network, labels, centres, opaque):
            columns.append(region.cells)
            n_proposals += region.n_proposals
            n_duplicates += region.n_duplicates
            for stage, value in region.seconds.items():
                seconds[stage] = seconds.get(stage, 0.0) + value
        cells = {k: [v for part in columns for v in part[k]] for k in columns[0]}
        return Annotation(labels, cells, seconds, n_proposals=n_proposals, n_duplicates=n_duplicates)

    def regions_annotated(self, image, network: torch.nn.Module, labels, centres: np.ndarray | None = None,
                          opaque: np.ndarray | None = None, done: int = 0, n_cells: int = 0):
        """Annotate a large image region by region (``stitch.regions``: cores of ``TILE`` px with ``MARGIN`` px of
        context), yielding each region's ``RegionCells`` once its cells are in ``labels``.

        ``image``: anything that gives (C, h, w) float tensors for ``image[:, rows, cols]`` and has ``shape`` (C, H, W)
        (a tensor, or ``slide.LazyImage``); ``labels``: the label map (H, W) int32 to fill, anything sliced the same
        way (an array, or a zarr array on disk). ``done`` regions are skipped and labels continue from ``n_cells``:
        a run that continues from its finished regions.

        Each region is annotated and stitched on its own (``region_found``), and keeps the cells centred in its core.
        A cell's rivals for pixels lie within a patch of it, hence inside the region too, so the neighbouring region
        resolves their overlap the same way, and a nucleus on a seam comes out as it would inside one tile. A region
        only takes pixels no earlier region took (``claimed``), so a region's cells are final once it is yielded."""
        grid = region_grid(image.shape[1:])
        bar = tqdm(total=len(grid), initial=done, desc="regions", unit="region", leave=False, disable=len(grid) < 4)
        for index in range(done, len(grid)):
            region = self.claimed(self.region_found(image, network, index, centres, opaque), labels, n_cells)
            yield region
            give_back_freed_memory()
            n_cells += len(region.cells["id"])
            bar.update(1)
            bar.set_postfix(cells=n_cells, refresh=False)
        bar.close()

    def region_found(self, image, network: torch.nn.Module, index: int, centres: np.ndarray | None = None,
                     opaque: np.ndarray | None = None) -> FoundRegion:
        """Region ``index`` of ``region_grid`` annotated and stitched on its own, before it claims its pixels: what
        ranks annotating one slide together compute apart (``bundle.slide``)."""
        (r0, r1, c0, c1), (q0, q1, p0, p1) = region_grid(image.shape[1:])[index]
        offset = np.array([q0, p0], np.float32)
        inside = None
        if centres is not None:
            inside = centres[(centres[:, 0] >= q0) & (centres[:, 0] < q1) & (centres[:, 1] >= p0)
                             & (centres[:, 1] < p1)] - offset
        found = self.cells(image[:, q0:q1, p0:p1], network, inside, None if opaque is None else opaque[q0:q1, p0:p1],
                           core=(r0 - q0, r1 - q0, c0 - p0, c1 - p0))
        t = time.perf_counter()
        stitched = stitch(found["warped"]["mask"], found["centres"], (q1 - q0, p1 - p0), confidence=-found["distance"])

        def owned(points: np.ndarray) -> np.ndarray:
            points = np.asarray(points).reshape(-1, 2) + offset
            return (points[:, 0] >= r0) & (points[:, 0] < r1) & (points[:, 1] >= c0) & (points[:, 1] < c1)

        own = owned(found["centres"][stitched.kept])
        # the region's own cells numbered 1..n in its window; a cell lies within half a patch of its centre, so all
        # of it is in the window
        relabel = np.zeros(len(stitched.kept) + 1, np.int32)
        relabel[1:][own] = np.arange(1, int(own.sum()) + 1)
        found["seconds"]["stitch"] = time.perf_counter() - t
        return FoundRegion(index=index, window=(q0, q1, p0, p1), labels=relabel[stitched.labels],
                           measurements=cell_measurements(stitched.kept[own], found["warped"], found["archetype"],
                                                          found["distance"]),
                           seconds=found["seconds"], n_proposals=int(owned(found["proposals"]).sum()),
                           n_duplicates=int(owned(found["centres"][list(stitched.duplicates)]).sum()))

    @staticmethod
    def claimed(found: FoundRegion, labels, n_cells: int) -> RegionCells:
        """A found region's cells put into the image's ``labels`` (H, W), numbered on from ``n_cells``: each takes
        the pixels of the window no earlier region took. Regions must be claimed in their grid's order."""
        t = time.perf_counter()
        q0, q1, p0, p1 = found.window
        n_own = len(found.measurements["archetype_id"])
        window = np.asarray(labels[q0:q1, p0:p1])
        free = (found.labels > 0) & (window == 0)
        mine = np.where(free, found.labels, 0)
        window[free] = mine[free] + n_cells
        labels[q0:q1, p0:p1] = window
        part = cell_geometry(mine, n_own)
        part["centroid_row"] = [v + q0 for v in part["centroid_row"]]
        part["centroid_col"] = [v + p0 for v in part["centroid_col"]]
        part.update(found.measurements)
        part["id"] = list(range(n_cells + 1, n_cells + n_own + 1))
        seconds = {**found.seconds, "stitch": found.seconds.get("stitch", 0.0) + time.perf_counter() - t}
        return RegionCells(index=found.index, window=found.window, labels=np.where(free, window, 0), cells=part,
                           seconds=seconds, n_proposals=found.n_proposals, n_duplicates=found.n_duplicates)

    def cells(self, image: torch.Tensor, network: torch.nn.Module, centres: np.ndarray | None = None,
              opaque: np.ndarray | None = None, core: tuple[int, int, int, int] | None = None) -> dict:
        """detect -> match -> register -> warp -> refine for one image or region (C, H, W), before stitching.

        ``core`` (row0, row1, col0, col1): a region's core; detections centred more than a patch outside it are
        dropped before the per-cell stages, since their masks (within half a patch of their centres) cannot reach
        a cell centred in the core.

        Returns ``centres`` (N, 2) of the cells, ``proposals`` (M, 2) every detection before ``min_similarity``,
        ``archetype`` (N,) their archetypes' bank ids, ``distance`` (N,) match distances, ``warped`` (the warped
        labels: ``mask``, ``ramp``, ``ddf``, ``folded_pct`` and, with a student, ``uncertainty``) and ``seconds``
        per stage."""
        h, w = image.shape[1:]
        seconds = {}
        t = time.perf_counter()
        if self.student is not None:
            if holds_tissue(image):
                foreground, centre = student_maps(self.student, image)
            else:  # blank glass: no nucleus to find, and the student's pass is most of an empty region's cost
                foreground = centre = np.zeros((h, w), np.float32)
            instances = student_instances(foreground, centre)
            if centres is None:
                centres = piece_centroids(instances)
        elif centres is None:
            centres = nucleus_proposals(image, self.proposal_params)
        centres = np.asarray(centres, np.float32).reshape(-1, 2)
        if opaque is not None:
            rows, cols = np.clip(np.round(centres).astype(int), 0, [h - 1, w - 1]).T
            centres = centres[opaque[rows, cols]]
        if core is not None:
            r0, r1, c0, c1 = core
            centres = centres[(centres[:, 0] >= r0 - PATCH_SIZE) & (centres[:, 0] < r1 + PATCH_SIZE)
                              & (centres[:, 1] >= c0 - PATCH_SIZE) & (centres[:, 1] < c1 + PATCH_SIZE)]
        proposals = centres
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

        if self.student is not None:
            t = time.perf_counter()
            evidence = cell_evidence(foreground, instances, centres, PATCH_SIZE).to(warped["mask"].device)
            # the archetype as registered against the image's own evidence: where they disagree, be unsure
            warped["uncertainty"] = 1 - dice(warped["mask"], (evidence > 0.5).float())
            refine = follow_image(warped["mask"], evidence, steps=STEPS if self.refine else 0)
            warped["mask"] = warp_labels(warped["mask"], refine, "mask")
            warped["ramp"] = warp_labels(warped["ramp"], refine, "continuous") * warped["mask"]
            total = compose(warped["ddf"], refine)
            warped["folded_pct"] = (jacobian_determinant(total) <= 0).float().mean(dim=(1, 2)) * 100
            seconds["refine"] = time.perf_counter() - t
        return {"centres": centres, "proposals": proposals, "archetype": self.archetype_ids[index],
                "distance": distance, "warped": warped, "seconds": seconds}

    def __call__(self, inputs: torch.Tensor, network: torch.nn.Module, *args, **kwargs) -> MetaTensor:
        """MONAI inferer interface: one image (1, C, H, W) or (C, H, W) -> its instance labels (1, 1, H, W) int32, a
        batch of one whose metadata ``CELLS_KEY`` holds the per-cell table (1, N, len(CELL_COLUMNS))."""
        if inputs.ndim == 4 and inputs.shape[0] != 1:
            raise ValueError(f"annotates one image at a time, got a batch of {inputs.shape[0]}")
        image = torch.as_tensor(inputs[0] if inputs.ndim == 4 else inputs).float()
        opaque = getattr(inputs, "meta", {}).get(OPAQUE_KEY)
        if opaque is not None:  # collated into a batch of one
            opaque = torch.as_tensor(opaque).reshape(image.shape[1:]).numpy()
        source = getattr(inputs, "meta", {}).get("filename_or_obj")
        source = source[0] if isinstance(source, (list, tuple)) else source
        self.setup()
        _, zoom = reading_plan([tuple(image.shape[1:])], image_pixel_size(source, self.pixel_size),
                               self.bank_pixel_size)
        try:
            annotation = (self.annotate(image, network, opaque=opaque) if zoom == 1
                          else self.annotate_zoomed(image, network, zoom, opaque))
        except DataError as err:  # say which image: the reader's metadata knows its file
            if source is None:
                raise
            raise DataError(f"{source}: {err}") from err
        labels = MetaTensor(torch.from_numpy(annotation.labels)[None, None],
                            meta={CELLS_KEY: cells_to_tensor(annotation.cells)[None]})
        labels.is_batch = True
        return labels
