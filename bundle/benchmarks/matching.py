"""matching: the matching benchmark, the paper's Table I (``scripts/benchmark.py matching``).

The bank is a seeded ``fraction`` of the train cells; DiffeoInvariantNet is trained on it with the bundle's training
config (or given). Queries are fresh realistic-diffeomorphism views of the held-out test cells, the gallery their
canonical crops; MAP, top-1 and top-3 as defined in ``bundle.match``. Several seeds repeat the whole protocol (bank
draw, training, queries) and report mean ± sd.
"""

from __future__ import annotations

import numpy as np
import torch
from monai.bundle import ConfigParser

from ..match import matching_metrics
from .metrics import mean_sd
from .protocol import TRAIN_CONFIGS, Setting, bank_for, embed, held_out_cells, machine, trained


def query_views(cells: dict, seed: int, n_views: int, device, batch_size: int = 256) -> torch.Tensor:
    """Fresh deformed views (N * n_views, C, 96, 96) float of the held-out cells, from the training config's family."""
    parser = ConfigParser()
    parser.read_config([str(p) for p in TRAIN_CONFIGS["invariant"]])
    augment = parser.get_parsed_content("augment")
    augment.set_random_state(seed=seed)
    images = cells["images"].repeat_interleave(n_views, dim=0)
    views = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float() / 255.0
        views.append(torch.as_tensor(augment({"image": x})["image"]).cpu())
    return torch.cat(views)


def run_seed(setting: Setting, seed: int, views: int = 2, gallery_size: int | str | None = None, checkpoint=None,
             training: dict | None = None) -> dict:
    """One seed: train (or load) DiffeoInvariantNet on the seed's bank, then match views of the held-out cells; with
    ``gallery_size`` (a number, or "bank" for the bank's size) also against random galleries that small."""
    device = torch.device(setting.device)
    bank, bank_path = bank_for(setting, seed)
    network, train_seconds = trained(setting, seed, "invariant", bank_path, checkpoint, training)
    cells = held_out_cells(setting)
    gallery = embed(network, cells["images"], device)
    queries = embed(network, query_views(cells, seed + 10_000, views, device), device)
    ids = torch.arange(len(gallery))
    query_ids = ids.repeat_interleave(views)
    metrics = matching_metrics(queries, query_ids, gallery, ids)
    if gallery_size == "bank":
        gallery_size = len(bank["images"])
    if gallery_size:
        gallery_size = int(gallery_size)
        # the same queries against random galleries of a given size (e.g. a bank's), averaged over 10 draws
        rng, draws = np.random.default_rng(seed), []
        for _ in range(10):
            subset = torch.from_numpy(np.sort(rng.choice(len(gallery), gallery_size, replace=False)))
            keep = torch.isin(query_ids, subset)
            draws.append(matching_metrics(queries[keep], query_ids[keep], gallery[subset], subset))
        metrics.update({f"{k}_gallery{gallery_size}": float(np.mean([d[k] for d in draws])) for k in draws[0]})
    return {"organ": setting.organ or "all", "seed": seed, "n_bank": len(bank["images"]), "n_test": len(gallery),
            "n_queries": len(queries), **metrics, "train_seconds": round(train_seconds, 1)}


def summarise(runs: list[dict]) -> dict:
    """One result, or mean and sd over seeds under ``<key>`` and ``<key>_sd``."""
    if len(runs) == 1:
        return {**runs[0], "machine": machine()}
    keys = ["map", "top1", "top3", "train_seconds"] + [k for k in runs[0] if "_gallery" in k]
    out = {k: runs[0][k] for k in ("organ", "n_test", "n_queries")}
    out["seeds"] = [r["seed"] for r in runs]
    out["n_bank"] = float(np.mean([r["n_bank"] for r in runs]))
    for k in keys:
        out.update(mean_sd(k, [r[k] for r in runs]))
    return {**out, "machine": machine(), "runs": runs}


def print_table(result: dict) -> None:
    def fmt(k):
        return f"{result[k]:.3f} ± {result[k + '_sd']:.3f}" if f"{k}_sd" in result else f"{result[k]:.3f}"

    print(f"\nmatching, organ {result['organ']}: bank {result['n_bank']:.0f} cells, gallery {result['n_test']} test cells, "
          f"{result['n_queries']} queries")
    print(f"{'MAP':>18} {'top-1':>18} {'top-3':>18} {'train s':>12}")
    print(f"{fmt('map'):>18} {fmt('top1'):>18} {fmt('top3'):>18} {result['train_seconds']:>12.0f}")
