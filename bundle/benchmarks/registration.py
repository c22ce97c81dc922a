"""registration: the registration benchmark (``scripts/benchmark.py registration``).

For held-out test cells (``max_pairs`` drawn with the seed; of the organ, or of ``test_organs`` the networks never
saw), the nearest archetype by DiffeoInvariantNet is mapped onto the cell and its mask scored against the cell's own
ground truth (``metrics.registration_scores``). Rows on the same pairs: identity, dihedral only, SimpleITK demons,
ANTs SyNOnly (if antspyx imports), ours. Then the same rows on the synthetic-shape check (shapes warped by a known
random diffeomorphism, ``synthetic``).
"""

from __future__ import annotations

import time

import numpy as np
import torch

from ..bank import take
from ..fields import dihedral
from ..match import nearest_archetype
from ..patches import PATCH_SIZE, centre_crop, orientation_ramp
from ..register import dihedral_align, register, warp_labels
from . import synthetic
from .baselines import registration as baselines
from .metrics import mean_sd, registration_scores
from .protocol import Setting, bank_for, embed, held_out_cells, machine, trained

ROW_KEYS = ("dice", "iou", "neg_jac_pct", "one_component_pct", "dtheta_deg", "elongated_pct", "ms_per_pair")


def score_rows(fields: dict, moving: dict, targets: torch.Tensor, seconds: dict, n: int) -> dict:
    """Mean of each registration score for every row. fields: row -> (ddf or None, dihedral k or None)."""
    rows = {}
    for name, (ddf, k) in fields.items():
        mask, ramp = moving["mask"], moving["ramp"]
        if k is not None:
            mask, ramp = dihedral(mask, k), dihedral(ramp, k)
        if ddf is not None:
            mask = warp_labels(mask, ddf, "mask")
            ramp = warp_labels(ramp, ddf, "continuous") * mask
        scores = registration_scores(mask, ramp, targets, ddf)
        rows[name] = {key: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for key, v in scores.items()}
        rows[name]["ms_per_pair"] = 1000.0 * seconds.get(name, 0.0) / max(n, 1)
    return rows


def registration_rows(mapping, moving: dict, cells: torch.Tensor, targets: torch.Tensor, device) -> dict:
    """The table's rows for archetypes ``moving`` {"image", "mask", "ramp"} (N, ., P, P) registered onto ``cells``."""
    n, seconds, fields = len(cells), {}, {"identity": (None, None)}
    start = time.perf_counter()
    k = dihedral_align(moving["image"], cells, "mi")
    seconds["dihedral"] = time.perf_counter() - start
    fields["dihedral"] = (None, k)
    aligned = dihedral(moving["image"], k)
    start = time.perf_counter()
    fields["demons"] = (baselines.demons_register(aligned, cells), k)
    seconds["demons"] = time.perf_counter() - start + seconds["dihedral"]
    if baselines.ants_available():
        start = time.perf_counter()
        fields["ants_synonly"] = (baselines.ants_register(aligned, cells), k)
        seconds["ants_synonly"] = time.perf_counter() - start + seconds["dihedral"]
    start = time.perf_counter()
    ours = register(mapping, {"image": moving["image"].to(device)}, cells.to(device), align="mi", batch_size=512)
    seconds["ours"] = time.perf_counter() - start
    fields["ours"] = (ours["ddf"].cpu(), ours["dihedral"].cpu())
    return score_rows(fields, moving, targets, seconds, n)


def run_seed(setting: Setting, seed: int, max_pairs: int = 300, synthetic_pairs: int = 200, checkpoint=None,
             mapping_checkpoint=None, training: dict | None = None, mapping_training: dict | None = None) -> dict:
    """One seed: the seed's bank and networks, archetypes matched to held-out cells, every row scored."""
    device = torch.device(setting.device)
    bank, bank_path = bank_for(setting, seed)
    invariant, _ = trained(setting, seed, "invariant", bank_path, checkpoint, training)
    mapping, mapping_seconds = trained(setting, seed, "mapping", bank_path, mapping_checkpoint, mapping_training)
    cells = held_out_cells(setting)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(cells["images"]), min(max_pairs, len(cells["images"])), replace=False))
    cells = take(cells, pick)
    archetype_index, _ = nearest_archetype(embed(invariant, cells["images"], device), embed(invariant, bank["images"], device))
    masks = centre_crop(bank["masks"][archetype_index].float(), PATCH_SIZE)
    moving = {"image": centre_crop(bank["images"][archetype_index].float() / 255, PATCH_SIZE), "mask": masks,
              "ramp": orientation_ramp(masks)}
    fixed = centre_crop(cells["images"].float() / 255, PATCH_SIZE)
    rows = registration_rows(mapping, moving, fixed, centre_crop(cells["masks"].float(), PATCH_SIZE), device)

    pairs = synthetic.synthetic_pairs(synthetic_pairs, seed=seed)
    shapes = {"image": pairs["moving_image"], "mask": pairs["moving_mask"], "ramp": orientation_ramp(pairs["moving_mask"])}
    synthetic_rows = registration_rows(mapping, shapes, pairs["fixed_image"], pairs["fixed_mask"], device)
    return {"organ": setting.organ or "all", "test_organs": list(setting.test_organs), "seed": seed,
            "pairs": len(fixed), "n_bank": len(bank["images"]), "mapping_train_seconds": round(mapping_seconds, 1),
            "batch_size": 512, "rows": rows, "synthetic": {"pairs": synthetic_pairs, "rows": synthetic_rows}}


def summarise(runs: list[dict]) -> dict:
    """Mean and sd over seeds of every row's scores, for the real pairs and the synthetic check."""
    if len(runs) == 1:
        return {**runs[0], "machine": machine()}

    def merge(tables):
        out = {}
        for row in tables[0]:
            out[row] = {}
            for key in tables[0][row]:
                out[row].update(mean_sd(key, [t[row][key] for t in tables]))
        return out

    return {"organ": runs[0]["organ"], "test_organs": runs[0]["test_organs"], "seeds": [r["seed"] for r in runs],
            "pairs": runs[0]["pairs"], "batch_size": runs[0]["batch_size"],
            "mapping_train_seconds": float(np.mean([r["mapping_train_seconds"] for r in runs])),
            "rows": merge([r["rows"] for r in runs]),
            "synthetic": {"pairs": runs[0]["synthetic"]["pairs"], "rows": merge([r["synthetic"]["rows"] for r in runs])},
            "machine": machine(), "runs": runs}


def print_summary(result: dict) -> None:
    print_rows(f"registration, organ {result['organ']}: {result['pairs']} test cells per seed", result["rows"])
    print_rows(f"synthetic shapes: {result['synthetic']['pairs']} pairs per seed", result["synthetic"]["rows"])


def print_rows(title: str, rows: dict) -> None:
    print(f"\n{title}")
    print(f"{'row':<14}" + "".join(f"{k:>22}" for k in ROW_KEYS))
    for name, row in rows.items():
        cells = [f"{row[k]:.3f} ± {row[k + '_sd']:.3f}" if f"{k}_sd" in row else f"{row[k]:.3f}" for k in ROW_KEYS]
        print(f"{name:<14}" + "".join(f"{c:>22}" for c in cells))
