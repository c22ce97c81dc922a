#!/usr/bin/env python
"""Export the bundle (``bundle.release``): one zip of ``diffkillr/`` for the model zoo, or its networks with
torch.export for ``configs/exported.yaml``.

    python scripts/export.py --zip dist/diffkillr.zip
    python -m monai.bundle download --name diffkillr --bundle_dir my_bundles --url file://$PWD/dist/diffkillr.zip
    python -m monai.bundle run --config_file my_bundles/diffkillr/configs/inference.yaml --bundle_root my_bundles/diffkillr

    python scripts/export.py --networks models            # models/model.pt2, invariant.pt2, student.pt2
    python -m monai.bundle run --config_file "['configs/inference.yaml','configs/exported.yaml']"
"""

import argparse
import sys
from pathlib import Path

from bundle.release import export_networks, zip_bundle

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--zip", default=None, help="write the bundle as this zip file")
    parser.add_argument("--name", default="diffkillr", help="the bundle's folder name inside the zip")
    parser.add_argument("--networks", default=None, help="export the networks into this folder")
    parser.add_argument("--device", default="cpu", help="the device the exported networks will run on")
    args = parser.parse_args(argv)
    if not (args.zip or args.networks):
        parser.error("nothing to do: give --zip, --networks or both")
    if args.zip:
        print(zip_bundle(ROOT, args.zip, args.name))
    if args.networks:
        for path in export_networks(ROOT, args.networks, args.device):
            print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
