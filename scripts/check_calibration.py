#!/usr/bin/env python
"""How close does the bank's calibration of the stain proposals come to the best grid point? Train tiles only.

For every organ and seed, a 10 % bank is drawn from the organ's *train* images and ``detect.calibrate_proposals``
chooses the proposal parameters from the bank's cells alone. The counting F1 of the organ's train tiles (Hungarian
matching within 12 px; the tiles hold the bank's cells, so the figures are development figures, not test scores) is
then read for the chosen point, for the point an "earlier point wins a tie" rule would have chosen, and for the best
point of the grid (the oracle a bank cannot know).

    python scripts/check_calibration.py --data-dir ../shared/data/monuseg --seeds 0,1,2,3,4
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bundle.bank import build_bank  # noqa: E402
from bundle.data import list_dataset, load_sample  # noqa: E402
from bundle.detect import nucleus_pieces, piece_centroids, stain_of  # noqa: E402
from bundle.metrics import counting_scores  # noqa: E402
from whole_image import instance_centroids  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--seeds", default="0,1,2,3,4")
    parser.add_argument("--fraction", type=float, default=0.1)
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    organs = sorted({s.organ for s in list_dataset(args.data_dir, split="train") if s.organ})
    chosen, earlier, oracle = [], [], []
    print(f"{'organ':9s} seed  ties  chosen (opening, spacing)  F1     earlier-point rule  F1     grid best")
    for organ in organs:
        tiles = [load_sample(s) for s in list_dataset(args.data_dir, split="train", organ=organ)]
        tiles = [(stain_of(image), instance_centroids(labels)) for image, labels in tiles]
        f1_of = {}

        def f1(params: dict) -> float:
            key = tuple(sorted(params.items()))
            if key not in f1_of:
                f1_of[key] = float(np.mean([counting_scores(piece_centroids(nucleus_pieces(stain, **params)), truth)["f1"]
                                            for stain, truth in tiles]))
            return f1_of[key]

        for seed in seeds:
            # build_bank calibrates the proposals and keeps the whole grid it tried in the bank's meta
            meta = build_bank(args.data_dir, fraction=args.fraction, seed=seed, organ=organ, progress=False)["meta"]
            grid = meta["proposals_grid"]
            shares = [share for _, share, _ in grid]
            ties = [i for i, share in enumerate(shares) if share == max(shares)]
            params, first = meta["proposals"], grid[ties[0]][0]
            chosen.append(f1(params))
            earlier.append(f1(first))
            oracle.append(max(f1(point) for point, _, _ in grid))
            print(f"{organ:9s} {seed:4d}  {len(ties):4d}  ({params['opening_radius']}, {params['min_distance']:2d})"
                  f"{'':17s}{chosen[-1]:.3f}  ({first['opening_radius']}, {first['min_distance']:2d}){'':11s}"
                  f"{earlier[-1]:.3f}  {oracle[-1]:.3f}", flush=True)
    print(f"\nmean over {len(chosen)} banks: chosen {np.mean(chosen):.3f} ± {np.std(chosen, ddof=1):.3f}, "
          f"earlier-point rule {np.mean(earlier):.3f}, grid best {np.mean(oracle):.3f}")


if __name__ == "__main__":
    main()
