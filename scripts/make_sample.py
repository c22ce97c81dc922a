#!/usr/bin/env python
"""Cut the embedded demo sample from a MoNuSeg test tile (CC BY-NC-SA 4.0, attribution in docs/data_license.txt).

    python scripts/make_sample.py ../shared/data/monuseg --image TCGA-2Z-A9J9-01A-01-TS1 --top 300 --left 300 --size 256

Writes docs/sample/images/<id>.png, docs/sample/labels/<id>.png (16-bit instance labels) and docs/sample/organs.csv.
The tile is from the official *test* split, so the shipped bank (train tiles only) has never seen these cells.
"""

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import relabel_sequential

from bundle.data import list_dataset, load_sample


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset_dir")
    parser.add_argument("--image", default="TCGA-2Z-A9J9-01A-01-TS1")
    parser.add_argument("--top", type=int, default=300)
    parser.add_argument("--left", type=int, default=300)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--out", default=str(Path(__file__).resolve().parents[1] / "docs" / "sample"))
    args = parser.parse_args(argv)

    sample = {s.image_id: s for s in list_dataset(args.dataset_dir)}[args.image]
    image, labels = load_sample(sample)
    window = (slice(args.top, args.top + args.size), slice(args.left, args.left + args.size))
    rgb = (image[:, window[0], window[1]].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    crop_labels = relabel_sequential(labels[window])[0].astype(np.uint16)
    sample_id = f"{args.image}_r{args.top}_c{args.left}_{args.size}"
    out = Path(args.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "labels").mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(out / "images" / f"{sample_id}.png")
    Image.fromarray(crop_labels).save(out / "labels" / f"{sample_id}.png")
    (out / "organs.csv").write_text(f"image_id,organ,official_split\n{sample_id},{sample.organ},test\n")
    print(f"{sample_id}: {int(crop_labels.max())} nuclei -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
