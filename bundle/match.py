"""matching: each cell to its nearest archetype, and the matching metrics of the paper's Table I.

Definitions (also in docs/README.md). A query is a fresh realistic-diffeomorphism view of a cell; the gallery holds the
canonical (undeformed) cells, and each query has exactly one relevant gallery item, the cell it was made from. Gallery
items are ranked by cosine similarity to the query (ties broken against the query: a tie counts as ranked above).

* rank r: the 1-based position of the relevant item;
* AP of a query = 1 / r (average precision with a single relevant item), MAP = its mean over queries;
* top-k accuracy = share of queries with r <= k (k = 1, 3).
"""

from __future__ import annotations

import torch
from ignite.metrics import Metric


def nearest_archetype(queries: torch.Tensor, archetypes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Index (N,) of the nearest archetype and its cosine distance (N,) = 1 - similarity, for unit-norm embeddings
    queries (N, D) and archetypes (M, D). One matrix product for all cells."""
    similarity = queries @ archetypes.T
    best, index = similarity.max(dim=1)
    return index, 1.0 - best


# Median match distance of an image's cells above which they are unlike the tissue the bank came from. On the 13
# MoNuSeg train tiles the median is 0.19 to 0.26; uniform noise gives 0.56 and a black image 0.52 (still a "cell" or a
# hundred). Set well clear of both, on train tiles only.
UNLIKE_THE_BANK = 0.40


def unlike_the_bank(distances) -> float | None:
    """The median match distance of an image's cells (N,) when it is above ``UNLIKE_THE_BANK``, else None: cells that
    look like none of the archetypes (noise, padding, another stain or magnification) are not to be trusted."""
    distances = torch.as_tensor(distances, dtype=torch.float64)
    if len(distances) == 0:
        return None
    median = float(distances.median())
    return median if median > UNLIKE_THE_BANK else None


def matching_metrics(
    queries: torch.Tensor, query_cells: torch.Tensor, gallery: torch.Tensor, gallery_cells: torch.Tensor
) -> dict:
    """MAP, top-1 and top-3 accuracy. queries (N, D), query_cells (N,), gallery (M, D), gallery_cells (M,) unique ids."""
    similarity = queries @ gallery.T
    relevant = query_cells[:, None] == gallery_cells[None, :]
    if not bool((relevant.sum(dim=1) == 1).all()):
        raise ValueError("every query needs exactly one relevant gallery cell")
    relevant_score = similarity.masked_fill(~relevant, float("-inf")).amax(dim=1, keepdim=True)
    rank = 1 + ((similarity >= relevant_score) & ~relevant).sum(dim=1).float()
    return {
        "map": float((1.0 / rank).mean()),
        "top1": float((rank <= 1).float().mean()),
        "top3": float((rank <= 3).float().mean()),
    }


class MatchingMetric(Metric):
    """The matching metrics as an ignite metric for MONAI evaluators.

    Each output is (embeddings (N, D), targets (N, 2)) with targets[:, 0] the cell id and targets[:, 1] 1 for a query
    view, 0 for the canonical gallery view. ``compute`` returns MAP (the key metric); top-1 and top-3 go to
    ``engine.state.metrics`` as ``<name>_top1`` and ``<name>_top3``.
    """

    def reset(self):
        self._embeddings, self._targets = [], []

    def update(self, output):
        embeddings, targets = output
        if isinstance(embeddings, (list, tuple)):  # decollated by MONAI's evaluator
            embeddings, targets = torch.stack(list(embeddings)), torch.stack(list(targets))
        self._embeddings.append(embeddings.detach().float().cpu())
        self._targets.append(targets.detach().long().cpu())

    def compute(self):
        z, t = torch.cat(self._embeddings), torch.cat(self._targets)
        is_query = t[:, 1] == 1
        self.last = matching_metrics(z[is_query], t[is_query, 0], z[~is_query], t[~is_query, 0])
        return self.last["map"]

    def completed(self, engine, name):
        super().completed(engine, name)
        engine.state.metrics[f"{name}_top1"] = self.last["top1"]
        engine.state.metrics[f"{name}_top3"] = self.last["top3"]
