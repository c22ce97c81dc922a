#!/usr/bin/env python
"""Build an archetype bank from a dataset folder's train images.

    python scripts/build_bank.py ../shared/data/monuseg --fraction 0.1 --seed 0 --pixel_size 0.25 --out models/archetype_bank.pt
    python scripts/build_bank.py my_dataset --fraction 1.0 --out my_bank.pt      # every annotated cell

The bank is the only ground truth the method sees; see bundle/bank.py for its contents.
"""

import argparse
import sys
from collections import Counter

from bundle.bank import build_bank, save_bank
from bundle.data import DataError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir")
    parser.add_argument("--fraction", type=float, default=0.1, help="share of the annotated train cells")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--organ", default=None, help="only this organ")
    parser.add_argument("--per-organ", action="store_true", help="draw the fraction within every organ")
    parser.add_argument("--pixel_size", type=float, default=None,
                        help="the images' pixel side in micrometres, if their files state none (slides are read at it)")
    parser.add_argument("--out", required=True, help="the bank file to write (models/archetype_bank.pt is the shipped one)")
    args = parser.parse_args(argv)
    try:
        bank = build_bank(args.dataset_dir, fraction=args.fraction, seed=args.seed, organ=args.organ,
                          per_organ=args.per_organ, pixel_size=args.pixel_size)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    path = save_bank(bank, args.out)
    organs = ", ".join(f"{k or 'unknown'} {v}" for k, v in sorted(Counter(bank["organs"]).items()))
    print(f"{len(bank['images'])} archetypes of {bank['meta']['n_candidates']} annotated train cells ({organs}) -> {path}")
    print(f"detector calibrated on them: {bank['meta']['proposals']} "
          f"({bank['meta']['proposals_found']:.0%} of the archetypes hold exactly one proposal)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
