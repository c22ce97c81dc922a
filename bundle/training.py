"""training: the pieces the MONAI/ignite engines of ``configs/train_*.yaml`` need beyond MONAI itself.

* ``MultiViewBatch``: a ``prepare_batch`` that turns a batch of bank cells into n deformed views each, on the engine's
  device, so augmentation runs batched on the GPU when there is one;
* ``MatchingViews``: the validation batch, canonical cells plus seeded deformed query views (for ``MatchingMetric``);
* ``EmbedInferer``: embeddings, plus the reconstruction while training a network with a decoder;
* ``LastCheckpoint``: saves ``last.pt`` every epoch and resumes from it, so an interrupted run continues;
* ``ProgressBar``: a tqdm bar with the loss.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch
from ignite.engine import Events
from ignite.handlers import ProgressBar as IgniteProgressBar
from monai.handlers import CheckpointLoader
from monai.inferers import Inferer

from .patches import PATCH_SIZE, centre_crop

logger = logging.getLogger(__name__)


class MultiViewBatch:
    """prepare_batch for contrastive training: (views (B*n, C, P, P), cell ids (B*n,)).

    The batch's ``image`` crops (B, C, 96, 96) are repeated n times, each copy deformed by its own random field of
    ``augment`` (a ``bundle.transforms.RandDiffeomorphismd`` on key ``image``), then centre-cropped to the patch size.
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


class EmbedInferer(Inferer):
    """network(inputs) -> embeddings; while training a network with a decoder, (embeddings, reconstruction, inputs)."""

    def __call__(self, inputs: torch.Tensor, network, *args, **kwargs):
        net = getattr(network, "module", network)  # DataParallel / DistributedDataParallel
        if network.training and getattr(net, "decoder", None) is not None:
            embeddings, reconstruction = net.embed_and_reconstruct(inputs)
            return embeddings, reconstruction, inputs
        return network(inputs)


class LastCheckpoint:
    """Save ``save_dict`` objects' state, and the engine's own (epoch, iteration), to ``<ckpt_dir>/last.pt`` after every
    epoch, atomically; on attach, resume from that file when it exists (and ``resume`` is true).

    The engine is added at attach time rather than named in the config, where it would be a circular reference.
    """

    def __init__(self, ckpt_dir, save_dict: dict, resume: bool = True):
        self.path = Path(ckpt_dir) / "last.pt"
        self.save_dict, self.resume = save_dict, resume

    def attach(self, engine) -> None:
        self.save_dict = {**self.save_dict, "trainer": engine}
        if self.resume and self.path.is_file():
            logger.info("resuming from %s", self.path)
            CheckpointLoader(load_path=str(self.path), load_dict=self.save_dict, map_location="cpu").attach(engine)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.save)

    def save(self, engine=None) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name("last.pt.partial")
        torch.save({k: obj.state_dict() for k, obj in self.save_dict.items()}, tmp)
        os.replace(tmp, self.path)


def progress_output(output) -> dict:
    """What the progress bar shows: the iteration's loss."""
    if isinstance(output, list):
        output = output[0]
    return {"loss": float(output["loss"].detach())}


class ProgressBar(IgniteProgressBar):
    """ignite's tqdm progress bar showing the loss; MONAI engines call ``attach(engine)`` with no options."""

    def attach(self, engine, metric_names=None, output_transform=progress_output, **kwargs):
        super().attach(engine, metric_names=metric_names, output_transform=output_transform, **kwargs)
