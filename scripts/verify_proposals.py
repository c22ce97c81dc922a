"""Can the bank tell false proposals from nuclei? A measured answer for the detector's design.

The issue's suggestion for beating a label-free blob detector is to check stain proposals against the bank's
foreground and background. This script measures that on the MoNuSeg *train* tiles (development data; no test tile is
read), leaving one image out at a time:

* proposals are the shipped bank's calibrated stain proposals (``bundle.detect.nucleus_proposals``);
* a proposal is a true positive when the Hungarian matching within 12 px pairs it with a ground-truth centroid, and a
  *background* false positive when it is unmatched and its centre lies outside every annotated nucleus;
* the counted negatives: ``--negatives`` background false positives drawn (seeded) from the *other* images, as if an
  annotator had clicked that many "not a nucleus" proposals;
* verifiers, each keeping a proposal or dropping it:
  - ``encoder_1nn``: DiffeoInvariantNet embedding; keep when the nearest bank archetype is closer than the nearest
    negative (the issue's "scored against bank foreground and background");
  - ``encoder_logistic``: logistic regression on the embeddings, bank cells vs negatives;
  - ``piece_forest``: a random forest on 11 measurements of the proposal's stain piece (area, solidity, eccentricity,
    axes, mean stain inside and in a 4 px ring, their contrast, eosin inside and in the ring, stain spread), trained on
    500 true-positive pieces of the other images vs the negatives: far more labels than a bank holds, so an
    optimistic bound for a shape-and-stain verifier.

Counting F1 of the kept proposals per tile is printed (mean over the tiles, and per organ).

    python scripts/verify_proposals.py --data-dir ../shared/data/monuseg

Needs the ``bench`` extra (scikit-learn).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.color import rgb2hed
from skimage.measure import regionprops
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bundle.annotate import frozen, load_weights  # noqa: E402
from bundle.bank import load_bank  # noqa: E402
from bundle.data import list_dataset, load_sample  # noqa: E402
from bundle.detect import nucleus_pieces, piece_centroids, stain_of  # noqa: E402
from bundle.metrics import matched_pairs  # noqa: E402
from bundle.networks import DiffeoInvariantNet  # noqa: E402
from bundle.patches import PATCH_SIZE, centre_crop, crop_patches  # noqa: E402
from whole_image import instance_centroids  # noqa: E402

VERIFIERS = ("none", "encoder_1nn", "encoder_logistic", "piece_forest")


def piece_features(image: torch.Tensor, pieces: np.ndarray) -> np.ndarray:
    """(N, 11) measurements of each stain piece 1..N: shape, and stain inside against a 4 px ring around it."""
    stain = stain_of(image)
    eosin = rgb2hed(image.permute(1, 2, 0).clamp(0, 1).numpy())[..., 1]
    ring = np.where(pieces == 0, ndimage.grey_dilation(pieces, size=9), 0)
    n = int(pieces.max()) + 1

    def mean(values, labels):
        return np.bincount(labels.ravel(), values.ravel(), n) / np.maximum(np.bincount(labels.ravel(), minlength=n), 1)

    inside, around = mean(stain, pieces), mean(stain, ring)
    spread = np.sqrt(np.maximum(mean(stain**2, pieces) - inside**2, 0))
    e_inside, e_around = mean(eosin, pieces), mean(eosin, ring)
    return np.array([[p.area, p.solidity, p.eccentricity, p.axis_major_length, p.axis_minor_length,
                      inside[p.label], around[p.label], inside[p.label] - around[p.label],
                      e_inside[p.label], e_around[p.label], spread[p.label]] for p in regionprops(pieces)])


def tile_records(data_dir, bank: dict, encoder) -> list[dict]:
    """Per train tile: proposals' embeddings, piece features, and their true-positive / background labels."""
    archetypes = centre_crop(bank["images"].float() / 255.0, PATCH_SIZE)
    records = []
    for sample in tqdm(list_dataset(data_dir, split="train"), desc="train tiles", unit="tile"):
        image, labels = load_sample(sample)
        pieces = nucleus_pieces(stain_of(image), **bank["meta"]["proposals"])
        centres = piece_centroids(pieces)
        truth = instance_centroids(labels)
        found, _ = matched_pairs(centres, truth)
        positive = np.zeros(len(centres), bool)
        positive[found] = True
        rows, cols = np.clip(np.round(centres).astype(int), 0, np.array(labels.shape) - 1).T
        with torch.no_grad():
            embedding = torch.cat([encoder(c) for c in crop_patches(image, centres, PATCH_SIZE).split(128)])
        records.append({"image_id": sample.image_id, "organ": sample.organ, "n_truth": len(truth),
                        "positive": positive, "background": ~positive & (labels[rows, cols] == 0),
                        "embedding": embedding.numpy(), "features": piece_features(image, pieces)})
    with torch.no_grad():
        bank_embedding = torch.cat([encoder(c) for c in archetypes.split(128)]).numpy()
    return records, bank_embedding


def f1_of_kept(record: dict, keep: np.ndarray) -> float:
    tp, n = int(record["positive"][keep].sum()), int(keep.sum())
    precision, recall = tp / max(n, 1), tp / max(record["n_truth"], 1)
    return 2 * precision * recall / (precision + recall) if precision + recall else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--bank", default=str(ROOT / "models" / "bank.pt"))
    parser.add_argument("--invariant", default=str(ROOT / "models" / "invariant.pt"))
    parser.add_argument("--negatives", type=int, default=100, help="counted 'not a nucleus' clicks per held-out tile")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.linear_model import LogisticRegression

    bank = load_bank(args.bank)
    network = load_weights(DiffeoInvariantNet(bank["images"].shape[1], embedding_dim=128), args.invariant)
    records, bank_embedding = tile_records(args.data_dir, bank, frozen(network, (1, 3, PATCH_SIZE, PATCH_SIZE)))
    rng = np.random.default_rng(args.seed)
    scores = {v: [] for v in VERIFIERS}
    for i, record in enumerate(records):
        others = [r for j, r in enumerate(records) if j != i]
        pool = [(r, k) for r in others for k in np.flatnonzero(r["background"])]
        negatives = [pool[k] for k in rng.choice(len(pool), min(args.negatives, len(pool)), replace=False)]
        neg_embedding = np.stack([r["embedding"][k] for r, k in negatives])
        neg_features = np.stack([r["features"][k] for r, k in negatives])
        tp_features = np.concatenate([r["features"][r["positive"]] for r in others])
        tp_features = tp_features[rng.choice(len(tp_features), 500, replace=False)]

        z = record["embedding"]
        scores["none"].append(f1_of_kept(record, np.ones(len(z), bool)))
        scores["encoder_1nn"].append(f1_of_kept(record, (z @ bank_embedding.T).max(1) >= (z @ neg_embedding.T).max(1)))
        x, y = np.r_[bank_embedding, neg_embedding], np.r_[np.ones(len(bank_embedding)), np.zeros(len(neg_embedding))]
        logistic = LogisticRegression(class_weight="balanced", max_iter=2000).fit(x, y)
        scores["encoder_logistic"].append(f1_of_kept(record, logistic.predict_proba(z)[:, 1] >= 0.5))
        x, y = np.r_[tp_features, neg_features], np.r_[np.ones(len(tp_features)), np.zeros(len(neg_features))]
        forest = RandomForestClassifier(200, min_samples_leaf=3, class_weight="balanced", random_state=args.seed).fit(x, y)
        scores["piece_forest"].append(f1_of_kept(record, forest.predict_proba(record["features"])[:, 1] >= 0.5))

    organs = sorted({r["organ"] for r in records})
    print(f"\ncounting F1 of the kept proposals, {len(records)} train tiles, leave one image out, "
          f"{args.negatives} counted negatives")
    print(f"{'verifier':<18}{'all tiles':>16}" + "".join(f"{o:>16}" for o in organs))
    for verifier, values in scores.items():
        values = np.asarray(values)
        by_organ = [values[[r["organ"] == o for r in records]] for o in organs]
        print(f"{verifier:<18}{values.mean():>9.3f} ± {values.std(ddof=1):.3f}" + "".join(f"{v.mean():>16.3f}" for v in by_organ))


if __name__ == "__main__":
    main()
