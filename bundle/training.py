"""training: the pieces the MONAI/ignite engines of ``configs/train*.yaml`` need beyond MONAI itself.

* ``ContrastiveCells``: the bank's cells plus label-free proposal crops, the instances of contrastive training;
* ``MultiViewBatch``: a ``prepare_batch`` that turns a batch of bank cells into n deformed views each, on the engine's
  device, so augmentation runs batched on the GPU when there is one;
* ``MatchingViews``: the validation batch, canonical cells plus seeded deformed query views (for ``MatchingMetric``);
* ``RegistrationPairs``, ``FieldsInferer``: the same for DiffeoMappingNet (pairs of views, forward and inverse fields);
* ``EmbedInferer``: embeddings, plus the reconstruction while training a network with a decoder;
* ``ResumableCheckpoint``: MONAI's checkpoint handlers, saving every epoch and resuming from the newest, so an
  interrupted run continues; ``RandomStates``, saved with it, so that it continues with the draws it would have made;
* ``ProgressBar``: a tqdm bar with the loss.
"""

from __future__ import annotations

import hashlib
import logging
import random
from pathlib import Path

import numpy as np
import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar as IgniteProgressBar
from monai.handlers import CheckpointSaver
from monai.handlers import ValidationHandler as MonaiValidationHandler
from monai.inferers import Inferer
from tqdm.auto import tqdm

from .checkpoint import CheckpointLoader, read_checkpoint
from .data import DataError, list_dataset, read_image
from .detect import hematoxylin_maxima
from .fields import dihedral
from .patches import CROP_SIZE, PATCH_SIZE, centre_crop, crop_patches
from .register import dihedral_align, warp_labels

logger = logging.getLogger(__name__)


class ContrastiveCells(torch.utils.data.Dataset):
    """The training instances of DiffeoInvariantNet: the bank's cells, plus optional *unlabelled* cells.

    Unlabelled cells are crops centred on label-free hematoxylin maxima (``bundle.detect``) of a dataset folder's
    ``split`` images; no annotation is read for them. They add instances for the contrastive task without adding
    ground truth, which is what keeps a 10 % bank from being memorised. ``max_per_image`` proposals are drawn per image
    with a fixed seed. Items: ``image`` (C, 96, 96) float in [0, 1] and ``cell``, the instance index.
    """

    def __init__(self, bank: dict, unlabelled_dir=None, organ=None, split: str = "train", max_per_image: int = 300,
                 seed: int = 0):
        images = [bank["images"]]
        if unlabelled_dir:
            images.append(proposal_crops(unlabelled_dir, split=split, organ=organ, max_per_image=max_per_image, seed=seed))
        self.images = torch.cat(images)
        self.n_bank = len(bank["images"])
        logger.info("contrastive training on %d bank cells + %d unlabelled proposals", self.n_bank,
                    len(self.images) - self.n_bank)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i].float() / 255.0, "cell": torch.tensor(i)}


def proposal_crops(dataset_dir, split="train", organ=None, max_per_image: int = 300, seed: int = 0) -> torch.Tensor:
    """uint8 crops (N, C, 96, 96) centred on hematoxylin maxima of the images (no annotation is read)."""
    rng = np.random.default_rng(seed)
    crops = []
    for sample in tqdm(list_dataset(dataset_dir, split=split, organ=organ), desc="unlabelled proposals", unit="image"):
        image = read_image(sample.image_path)
        centres = hematoxylin_maxima(image)
        if len(centres) > max_per_image:
            centres = centres[rng.choice(len(centres), max_per_image, replace=False)]
        crops.append((crop_patches(image, centres, CROP_SIZE).clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(crops)


class MultiViewBatch:
    """prepare_batch for contrastive training: (views (B*n, C, P, P), cell ids (B*n,)).

    The batch's ``image`` crops (B, C, 96, 96) are repeated n times, each copy deformed by its own random field of
    ``augment`` (a ``bundle.augment.RandDiffeomorphismd`` on key ``image``), then centre-cropped to the patch size.
    """

    def __init__(self, augment, n_views: int = 4, patch_size: int = PATCH_SIZE):
        if n_views < 2:
            raise ValueError("contrastive training needs at least two views of each cell")
        self.augment, self.n_views, self.patch_size = augment, n_views, patch_size

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        images = batchdata["image"].to(device, non_blocking=non_blocking)
        cells = batchdata["cell"].to(device, non_blocking=non_blocking)
        views = self.augment({"image": images.repeat_interleave(self.n_views, dim=0)})["image"]
        return centre_crop(torch.as_tensor(views), self.patch_size), cells.repeat_interleave(self.n_views)


class MatchingViews:
    """prepare_batch for matching validation: inputs = canonical cells then n query views of each; targets (N, 2) hold
    (cell id, is_query). The random state is re-seeded from the batch's first cell id, so every validation round sees
    the same queries and rounds are comparable."""

    def __init__(self, augment, n_views: int = 2, patch_size: int = PATCH_SIZE, seed: int = 0):
        self.augment, self.n_views, self.patch_size, self.seed = augment, n_views, patch_size, seed

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        images = batchdata["image"].to(device, non_blocking=non_blocking)
        cells = batchdata["cell"].to(device, non_blocking=non_blocking)
        self.augment.set_random_state(self.seed + int(cells[0]))
        queries = torch.as_tensor(self.augment({"image": images.repeat_interleave(self.n_views, dim=0)})["image"])
        inputs = centre_crop(torch.cat([images, queries]), self.patch_size)
        ids = torch.cat([cells, cells.repeat_interleave(self.n_views)])
        is_query = torch.cat([torch.zeros_like(cells), torch.ones(len(queries), dtype=cells.dtype, device=cells.device)])
        return inputs, torch.stack([ids, is_query], dim=1)


class RegistrationPairs:
    """prepare_batch for DiffeoMappingNet: (pair (B, 2C, P, P), targets (B, 2C + 2, P, P)).

    For every bank cell in the batch the fixed view is a random realistic deformation of it. The moving view is another
    deformation of the same cell or, for a share ``hard_fraction`` of the batch, of a different bank cell: a hard
    example, like a matched archetype at inference. The moving view is then pre-aligned by the best dihedral element
    (as at inference), so the network learns the residual deformation. targets = cat([moving, fixed, moving mask,
    fixed mask]) for ``bundle.losses.RegistrationLoss``. ``seed`` fixes which pairs are hard (for validation,
    ``reseed=True`` also re-seeds the deformations from the batch's first cell id, so every round sees the same pairs).
    """

    def __init__(self, augment, hard_fraction: float = 0.25, patch_size: int = PATCH_SIZE, align: str | None = "mi",
                 seed: int = 0, reseed: bool = False):
        self.augment, self.hard_fraction, self.patch_size, self.align = augment, hard_fraction, patch_size, align
        self.seed, self.reseed = seed, reseed
        self.rng = np.random.default_rng(seed)

    def __call__(self, batchdata, device=None, non_blocking: bool = False, **kwargs):
        images = batchdata["image"].to(device, non_blocking=non_blocking)
        masks = batchdata["mask"].to(device, non_blocking=non_blocking)
        b = len(images)
        rng = np.random.default_rng(self.seed + int(batchdata["cell"][0])) if self.reseed else self.rng
        if self.reseed:
            self.augment.set_random_state(self.seed + int(batchdata["cell"][0]))
        partner = np.arange(b)
        hard = rng.random(b) < self.hard_fraction
        if b > 1:
            partner[hard] = (partner[hard] + rng.integers(1, b, hard.sum())) % b  # any other cell of the batch
        partner = torch.as_tensor(partner, device=images.device)
        fixed = self.augment({"image": images, "mask": masks})
        moving = self.augment({"image": images[partner], "mask": masks[partner]})
        fixed = {k: centre_crop(torch.as_tensor(v), self.patch_size) for k, v in fixed.items()}
        moving = {k: centre_crop(torch.as_tensor(v), self.patch_size) for k, v in moving.items()}
        if self.align:
            k = dihedral_align(moving["image"], fixed["image"], self.align)
            moving = {key: dihedral(v, k) for key, v in moving.items()}
        pair = torch.cat([moving["image"], fixed["image"]], dim=1)
        return pair, torch.cat([pair, moving["mask"], fixed["mask"]], dim=1)


class FieldsInferer(Inferer):
    """network.fields(pair) -> (phi, phi_inv) while training; network(pair) -> phi otherwise."""

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        net = getattr(network, "module", network)
        return net.fields(inputs) if network.training else network(inputs)


def warped_mask_and_target(output) -> tuple[torch.Tensor, torch.Tensor]:
    """(warped moving mask, fixed mask), each (B, 1, P, P), from a registration evaluator's output, for MeanDice."""
    phi, targets = output["pred"], output["label"]
    c = (targets.shape[1] - 2) // 2
    return warp_labels(targets[:, 2 * c : 2 * c + 1], phi, "mask"), targets[:, 2 * c + 1 :]


class EmbedInferer(Inferer):
    """network(inputs) -> embeddings; while training a network with a decoder, (embeddings, reconstruction, inputs)."""

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        net = getattr(network, "module", network)  # DataParallel / DistributedDataParallel
        if network.training and getattr(net, "decoder", None) is not None:
            embeddings, reconstruction = net.embed_and_reconstruct(inputs)
            return embeddings, reconstruction, inputs
        return network(inputs)


class ResumableCheckpoint:
    """Every epoch, MONAI's ``CheckpointSaver`` writes the training state (``save_dict`` and the trainer's own epoch
    and iteration) to ``<ckpt_dir>/checkpoint_epoch=N.pt``, keeping the newest; at attach, with ``resume``, MONAI's
    ``CheckpointLoader`` restores the newest such file, so an interrupted run continues where it stopped.

    The trainer joins ``save_dict`` at attach time: named in the config it would be a circular reference (its handlers
    hold this one).

    Under DistributedDataParallel (``rank`` > 0 on all but the first process) every rank resumes from the newest
    checkpoint, so that all continue at the same epoch with the same weights and optimiser state (a rank starting
    over would run more epochs than the others and wait on them forever), and only rank 0 writes. The random state
    saved is rank 0's: the other ranks keep their own seeding, so a resumed multi-process run is not bit-identical
    to an uninterrupted one.
    """

    def __init__(self, ckpt_dir, save_dict: dict, resume: bool = True, bank_path=None, rank: int = 0):
        self.ckpt_dir, self.save_dict, self.resume, self.rank = Path(ckpt_dir), dict(save_dict), resume, rank
        # the bank trained on, by content: a run folder resumed with another bank must not silently continue
        self.bank = BankFingerprint(bank_path) if bank_path is not None else None

    def latest(self) -> Path | None:
        """The newest epoch checkpoint in ``ckpt_dir``, or None."""
        found = [(int(p.stem.split("=")[-1]), p) for p in self.ckpt_dir.glob("checkpoint_epoch=*.pt")
                 if p.stem.split("=")[-1].isdigit()]
        return max(found)[1] if found else None

    def attach(self, engine) -> None:
        save_dict = {**self.save_dict, "trainer": engine, **({"bank": self.bank} if self.bank else {})}
        latest = self.latest() if self.resume else None
        if latest is not None:
            stored = read_checkpoint(latest, "training checkpoint")  # a truncated file: one line, not a traceback
            if self.bank is not None and "bank" in stored and stored["bank"] != self.bank.state_dict():
                raise DataError(f"{latest}: this run folder holds training on another bank than {self.bank.path}; "
                                "give a new --ckpt_dir, or --resume False to start over here")
            logger.info("resuming from %s", latest)
            # checkpoints older than the bank fingerprint or the random states resume without them, and the random
            # state saved is rank 0's, not another rank's
            skipped = {k for k in ("bank", "random") if k not in stored} | ({"random"} if self.rank else set())
            load_dict = {k: v for k, v in save_dict.items() if k not in skipped}
            CheckpointLoader(load_path=str(latest), load_dict=load_dict, map_location="cpu").attach(engine)
        if self.rank == 0:
            CheckpointSaver(save_dir=str(self.ckpt_dir), save_dict=save_dict, save_interval=1, n_saved=1,
                            epoch_level=True).attach(engine)


def _legacy_state(state: tuple) -> dict:
    """A numpy ``RandomState``'s state (``get_state()``) as a checkpoint holds it."""
    name, keys, position, has_gauss, gauss = state
    # as tensors and numbers: a checkpoint holding numpy arrays would not load with weights_only=True
    return {"keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position), "has_gauss": int(has_gauss),
            "gauss": float(gauss)}


def _from_legacy_state(state: dict) -> tuple:
    return ("MT19937", state["keys"].numpy().astype(np.uint32), state["position"], state["has_gauss"], state["gauss"])


class RandomStates:
    """A training run's random state, saved in every epoch checkpoint (``ResumableCheckpoint``) and restored on resume,
    so that a resumed run draws what the uninterrupted run would have drawn. Re-seeding would replay the first
    epochs' draws instead.

    Holds torch's, numpy's and Python's global generators (the data loader's shuffling) and those of ``holders``, by
    name: a MONAI ``Randomizable`` (its ``R``, e.g. the augmentation) or an object with a numpy ``Generator`` ``rng``
    (``RegistrationPairs``)."""

    def __init__(self, **holders):
        self.holders = holders

    def state_dict(self) -> dict:
        state = {"torch": torch.get_rng_state(), "numpy": _legacy_state(np.random.get_state()),
                 "python": random.getstate()}
        for name, holder in self.holders.items():
            if isinstance(getattr(holder, "rng", None), np.random.Generator):
                state[name] = holder.rng.bit_generator.state
            elif isinstance(getattr(holder, "R", None), np.random.RandomState):
                state[name] = _legacy_state(holder.R.get_state())
        return state

    def load_state_dict(self, state: dict) -> None:
        torch.set_rng_state(state["torch"])
        np.random.set_state(_from_legacy_state(state["numpy"]))
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        for name, holder in self.holders.items():
            if name not in state:
                continue
            if isinstance(getattr(holder, "rng", None), np.random.Generator):
                holder.rng.bit_generator.state = state[name]
            elif isinstance(getattr(holder, "R", None), np.random.RandomState):
                holder.R.set_state(_from_legacy_state(state[name]))


class BankFingerprint:
    """The bank a run trains on, by the sha256 of its file: saved in every epoch checkpoint (``state_dict``), so
    ``ResumableCheckpoint`` can tell a run folder of another bank."""

    def __init__(self, path):
        self.path = Path(path)
        self.sha256 = hashlib.sha256(self.path.read_bytes()).hexdigest() if self.path.is_file() else None

    def state_dict(self) -> dict:
        return {"sha256": self.sha256}

    def load_state_dict(self, state: dict) -> None:
        """Nothing to restore: the bank is the config's; ``ResumableCheckpoint`` has compared them already."""


class ValidationHandler(MonaiValidationHandler):
    """MONAI's, validating every ``interval`` epochs, and after the last epoch too when that one is off the interval:
    a run shorter than ``val_interval`` epochs still validates, so it still writes its best ``model.pt``."""

    def attach(self, engine) -> None:
        super().attach(engine)
        engine.add_event_handler(Events.COMPLETED, self.after_the_last_epoch)

    def after_the_last_epoch(self, engine) -> None:
        if engine.state.epoch % self.interval:
            self(engine)


def progress_output(output) -> dict:
    """What the progress bar shows: the iteration's loss."""
    if isinstance(output, list):  # decollated: every cell's dictionary holds the batch's loss
        output = output[0]
    return {"loss": float(output["loss"])}


class ProgressBar(IgniteProgressBar):
    """ignite's tqdm progress bar showing the loss; MONAI engines call ``attach(engine)`` with no options."""

    def attach(self, engine, metric_names=None, output_transform=progress_output, **kwargs):
        super().attach(engine, metric_names=metric_names, output_transform=output_transform, **kwargs)
