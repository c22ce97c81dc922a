"""losses: the training objectives of DiffeoInvariantNet."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


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
        logits = embeddings @ embeddings.T / self.temperature
        self_mask = torch.eye(len(cells), dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(self_mask, float("-inf"))
        log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
        positives = (cells[:, None] == cells[None, :]) & ~self_mask
        n_pos = positives.sum(dim=1)
        if (n_pos == 0).any():
            raise ValueError("every cell needs at least two views in the batch")
        return -(log_prob.masked_fill(~positives, 0.0).sum(dim=1) / n_pos).mean()


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
