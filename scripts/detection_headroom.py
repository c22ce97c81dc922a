#!/usr/bin/env python
"""Where does detection lose: in how the stain foreground is split, or in the foreground itself? Train tiles only.

Three counting F1 figures per train tile (Hungarian matching within 12 px), all from the same distance-transform
watershed that ``bundle.detect`` uses, with a bank's calibrated parameters:

* ``proposals``: the detector as shipped: the bank's parameters on its foreground of the hematoxylin stain
  (``detect.nuclear_foreground``);
* ``best split``: the same foreground, but every connected piece of it is split at whichever marker spacing of
  ``SPACINGS`` gives it as many proposals as it holds annotated nuclei. An oracle (it reads the tile's annotation)
  for any rule that only decides how finely to split the stain foreground; not a strict ceiling, since the right
  count can sit in the wrong places (on one train tile it scored below the shipped proposals);
* ``true foreground``: the annotated nuclei's own binary foreground, split with the bank's spacing. An oracle too:
  what the same watershed gives once the foreground is right.

The oracles read annotations the method never sees; they are diagnostics for where to invest, not methods.

    python scripts/detection_headroom.py --data-dir ../shared/data/monuseg --bank models/bank.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bundle.bank import load_bank  # noqa: E402
from bundle.data import list_dataset, load_sample  # noqa: E402
from bundle.detect import nuclear_foreground, piece_centroids, split_nuclei, stain_of  # noqa: E402
from bundle.metrics import counting_scores  # noqa: E402
from whole_image import instance_centroids  # noqa: E402

SPACINGS = (4, 6, 8, 10, 12, 14, 18)
ROWS = ("proposals", "best split", "true foreground")


def piece_of(points: np.ndarray, pieces: np.ndarray) -> np.ndarray:
    """The piece (0 = none) under each point (N, 2) (row, col) of an instance map (H, W)."""
    rows, cols = np.round(points).astype(int).T
    return pieces[rows.clip(0, pieces.shape[0] - 1), cols.clip(0, pieces.shape[1] - 1)]


def best_split(foreground: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Proposals (N, 2) of the oracle split: per connected piece of ``foreground`` (H, W) bool, the centroids of the
    watershed at the spacing whose proposal count in the piece is closest to the number of ``truth`` (M, 2) centroids
    in it (ties: the larger spacing)."""
    pieces, n = ndimage.label(foreground)
    wanted = np.bincount(piece_of(truth, pieces), minlength=n + 1)
    spacings = sorted(SPACINGS, reverse=True)  # argmin takes the first of equals: the larger spacing
    centres = [piece_centroids(split_nuclei(foreground, spacing)) for spacing in spacings]
    owners = [piece_of(c, pieces) for c in centres]
    counts = np.stack([np.bincount(owner, minlength=n + 1) for owner in owners])  # (spacings, pieces + 1)
    chosen = np.abs(counts - wanted).argmin(0)  # per piece, the index of its spacing
    # a centroid outside every piece (of a crescent-shaped piece) belongs to no piece's count
    return np.concatenate([c[(chosen[owner] == k) & (owner > 0)] for k, (c, owner) in enumerate(zip(centres, owners))])


def headroom(image, labels: np.ndarray, params: dict) -> dict:
    """Counting F1 of the three rows (``ROWS``) on one tile."""
    truth = instance_centroids(labels)
    foreground = nuclear_foreground(stain_of(image), params["opening_radius"], params["min_size"])
    true_foreground = ndimage.binary_fill_holes(labels > 0)
    found = {
        "proposals": piece_centroids(split_nuclei(foreground, params["min_distance"])),
        "best split": best_split(foreground, truth),
        "true foreground": piece_centroids(split_nuclei(true_foreground, params["min_distance"])),
    }
    return {row: counting_scores(centres, truth)["f1"] for row, centres in found.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--bank", default=str(ROOT / "models" / "bank.pt"), help="its calibrated proposal parameters")
    args = parser.parse_args()
    params = load_bank(args.bank)["meta"]["proposals"]
    bank = Path(args.bank).resolve()
    print(f"bank {bank.relative_to(ROOT) if bank.is_relative_to(ROOT) else bank}: proposal parameters {params}")
    print(f"{'tile':26s} {'organ':9s}" + "".join(f"{row:>17s}" for row in ROWS))
    scores = []
    for sample in list_dataset(args.data_dir, split="train"):
        scores.append(headroom(*load_sample(sample), params))
        print(f"{sample.image_id:26s} {sample.organ or '':9s}" + "".join(f"{scores[-1][row]:17.3f}" for row in ROWS),
              flush=True)
    print(f"{'mean ± sd over ' + str(len(scores)) + ' tiles':36s}"
          + "".join(f"{np.mean([s[row] for s in scores]):10.3f} ± {np.std([s[row] for s in scores], ddof=1):.3f}" for row in ROWS))


if __name__ == "__main__":
    main()
