"""Seconds per tile of the whole-image workflow, by stage, for inference settings compared in one process.

Machines like this one are noisy (the same code ran 35 % slower on one day than on another), so settings are compared
as ratios within one run: the variants take turns on every tile, ``--repeats`` times, and the median per tile is kept.

* ``eager_b512``: the encoder run as the PyTorch module, 512 cells per network call (the settings before v0.4);
* ``frozen_b128``: the encoder as a frozen TorchScript graph (``bundle.annotate.frozen``), 128 cells per call;
* ``frozen_b32``: the same, 32 cells per call (the bundle's settings on CPU).

The variants give the same annotation; its counts and counting F1 against each tile's ground truth (Hungarian matching
of centroids within 12 px) are recorded too: the shipped models with the shipped bank, on the tiles given.

    python scripts/speed.py --data-dir ../shared/data/monuseg --organ Kidney --split test
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from bundle.data import list_dataset, load_sample  # noqa: E402
from bundle.metrics import counting_scores  # noqa: E402
from whole_image import instance_centroids, workflow  # noqa: E402

VARIANTS = {"eager_b512": {"frozen": False, "batch_size": 512}, "frozen_b128": {"frozen": True, "batch_size": 128},
            "frozen_b32": {"frozen": True, "batch_size": 32}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--organ", default=None)
    parser.add_argument("--split", default="test")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="write the per-tile medians here")
    args = parser.parse_args()

    inferer, network = workflow(ROOT / "models" / "bank.pt", args.device)
    inferer.setup()
    encoders = {True: inferer._encoder, False: inferer.invariant.eval()}
    samples = list_dataset(args.data_dir, split=args.split, organ=args.organ)
    if not samples:
        raise SystemExit(f"error: no {args.split} images" + (f" of organ {args.organ}" if args.organ else ""))
    results, counting = {name: [] for name in VARIANTS}, []
    for sample in tqdm(samples, desc="tiles", unit="tile"):
        image, labels = load_sample(sample)
        runs = {name: [] for name in VARIANTS}
        for _ in range(args.repeats):
            for name, variant in VARIANTS.items():
                inferer._encoder, inferer.batch_size = encoders[variant["frozen"]], variant["batch_size"]
                start = time.perf_counter()
                annotation = inferer.annotate(image, network)
                runs[name].append({"total": time.perf_counter() - start, **annotation.seconds})
        for name, r in runs.items():
            median = {k: float(np.median([x[k] for x in r])) for k in r[0]}
            # every proposal is matched and registered; stitching then merges duplicates into the final cells
            results[name].append({"image_id": sample.image_id, "registered": annotation.n_proposals,
                                  "cells": len(annotation.cells["id"]), **median})
        found = np.stack([annotation.cells["centroid_row"], annotation.cells["centroid_col"]], 1)
        counting.append({"image_id": sample.image_id, **counting_scores(found, instance_centroids(labels))})

    base = "eager_b512"
    print(f"\n{len(samples)} tiles x {args.repeats} repeats, device {args.device}, {torch.get_num_threads()} threads; "
          "seconds per tile (mean of per-tile medians)")
    stages = ("detect", "match", "register_warp", "stitch", "total")
    print(f"{'variant':<14}" + "".join(f"{s:>15}" for s in stages) + f"{'vs ' + base:>12}")
    for name, tiles in results.items():
        means = {s: np.mean([t[s] for t in tiles]) for s in stages}
        ratio = np.mean([t["total"] / b["total"] for t, b in zip(tiles, results[base])])
        print(f"{name:<14}" + "".join(f"{means[s]:>15.2f}" for s in stages) + f"{ratio:>12.2f}")
    for c in counting:
        print(f"{c['image_id']}: {c['n_detected']} cells for {c['n_truth']} annotated nuclei, counting F1 {c['f1']:.3f} "
              f"(P {c['precision']:.3f}, R {c['recall']:.3f})")
    if args.json:
        Path(args.json).write_text(json.dumps({"device": args.device, "threads": torch.get_num_threads(),
                                               "repeats": args.repeats, "tiles": results, "counting": counting},
                                              indent=1))


if __name__ == "__main__":
    main()
