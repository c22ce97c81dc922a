"""losses: the training objectives of DiffeoInvariantNet (multi-view NT-Xent) and DiffeoMappingNet (registration)."""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from monai.losses import BendingEnergyLoss, DiceLoss, LocalNormalizedCrossCorrelationLoss

from .fields import warp


class MultiViewNTXentLoss(nn.Module):
    """Multi-view NT-Xent (SimCLR's loss generalised to n views per cell).

    For every view i, the other views of the same cell are positives and all views of other cells negatives:

        loss = mean_i mean_{p in P(i)} -log( exp(s_ip / T) / sum_{k != i} exp(s_ik / T) )

    with s the cosine similarity. With two views per cell this is exactly NT-Xent. MONAI's ``ContrastiveLoss`` takes one
    pair of batches only, hence this short version.

    Args:
        temperature: T; lower values weigh the hardest negatives more.

    Shapes: embeddings (N, D) unit-norm, cells (N,) integer cell id of each view; every cell needs >= 2 views.
    """

    def __init__(self, temperature: float = 0.1):
        super().__init__()
        self.temperature = temperature

    def forward(self, embeddings: torch.Tensor, cells: torch.Tensor) -> torch.Tensor:
        embeddings, cells = from_every_rank(embeddings, cells)
        logits = embeddings @ embeddings.T / self.temperature
        self_mask = torch.eye(len(cells), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positives = (cells[:, None] == cells[None, :]) & ~self_mask
        n_pos = positives.sum(dim=1)
        if (n_pos == 0).any():
            raise ValueError("every cell needs at least two views in the batch")
        return -(log_prob.masked_fill(~positives, 0.0).sum(dim=1) / n_pos).mean()


class _ScaledGradient(torch.autograd.Function):
    """The identity, whose gradient is multiplied by ``scale``."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.scale, None


def from_every_rank(embeddings: torch.Tensor, cells: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Under DistributedDataParallel, the views (N, D) and cell ids (N,) of every rank's batch, so that each view meets
    the negatives of the whole global batch, as on one device; outside a process group, the arguments. Ranks must hold
    equal batches, each with every view of its cells (``DistributedSampler`` with ``even_divisible``).

    Every rank computes the same loss over the whole batch, but its gradient reaches only its own views; DDP averages
    the ranks' gradients, so each rank's own views carry world_size x their gradient: the sum over ranks is then the
    gradient one process gets from the whole batch."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return embeddings, cells
    world, rank = dist.get_world_size(), dist.get_rank()
    views = [torch.empty_like(embeddings) for _ in range(world)]
    dist.all_gather(views, embeddings.detach().contiguous())
    views[rank] = _ScaledGradient.apply(embeddings, float(world))
    ids = [torch.empty_like(cells) for _ in range(world)]
    dist.all_gather(ids, cells.contiguous())
    return torch.cat(views), torch.cat(ids)


class InvariantLoss(nn.Module):
    """NT-Xent over the views, plus ``reconstruction_weight`` x MSE when the network also reconstructs its input.

    ``preds`` is either the embeddings (N, D), or the tuple (embeddings, reconstruction, input views) given by
    ``bundle.training.EmbedInferer`` for a network with a decoder.
    """

    def __init__(self, temperature: float = 0.1, reconstruction_weight: float = 1.0):
        super().__init__()
        self.contrastive = MultiViewNTXentLoss(temperature)
        self.reconstruction_weight = reconstruction_weight

    def forward(self, preds, cells: torch.Tensor) -> torch.Tensor:
        if isinstance(preds, (tuple, list)):
            embeddings, reconstruction, views = preds
            return self.contrastive(embeddings, cells) + self.reconstruction_weight * F.mse_loss(reconstruction, views)
        return self.contrastive(preds, cells)


class RegistrationLoss(nn.Module):
    """The training objective of DiffeoMappingNet on a pair (moving archetype view, fixed cell view):

        similarity(warp(moving, phi), fixed)                      image term
      + cycle_weight * similarity(warp(fixed, phi_inv), moving)   cycle term: the inverse must map back
      + smooth_weight * bending_energy(phi)                       smoothness
      + label_weight * dice(warp(moving_mask, phi), fixed_mask)   label term (both masks known: bank cells)

    ``preds`` = (phi, phi_inv), each (B, 2, P, P); ``targets`` = cat([moving, fixed, moving_mask, fixed_mask], dim=1),
    (B, 2C + 2, P, P), as made by ``bundle.training.RegistrationPairs``. The mask is warped bilinearly because nearest
    sampling has no gradient with respect to the field.

    Args:
        similarity: "lncc" (local normalised cross-correlation, 2-D, window ``kernel_size``) or "mse".
    """

    def __init__(self, similarity: str = "lncc", cycle_weight: float = 0.5, smooth_weight: float = 1.0,
                 label_weight: float = 1.0, kernel_size: int = 9):
        super().__init__()
        if similarity == "lncc":
            self.similarity = LocalNormalizedCrossCorrelationLoss(spatial_dims=2, kernel_size=kernel_size)
        elif similarity == "mse":
            self.similarity = nn.MSELoss()
        else:
            raise ValueError(f"unknown similarity {similarity!r}; choose 'lncc' or 'mse'")
        self.smoothness = BendingEnergyLoss()
        self.dice = DiceLoss()
        self.cycle_weight, self.smooth_weight, self.label_weight = cycle_weight, smooth_weight, label_weight

    def forward(self, preds, targets: torch.Tensor) -> torch.Tensor:
        phi, phi_inv = preds
        c = (targets.shape[1] - 2) // 2
        moving, fixed = targets[:, :c], targets[:, c : 2 * c]
        moving_mask, fixed_mask = targets[:, 2 * c : 2 * c + 1], targets[:, 2 * c + 1 :]
        loss = self.similarity(warp(moving, phi), fixed)
        if self.cycle_weight:
            loss = loss + self.cycle_weight * self.similarity(warp(fixed, phi_inv), moving)
        if self.smooth_weight:
            loss = loss + self.smooth_weight * self.smoothness(phi)
        if self.label_weight:
            loss = loss + self.label_weight * self.dice(warp(moving_mask, phi, "bilinear", "zeros"), fixed_mask)
        return loss
