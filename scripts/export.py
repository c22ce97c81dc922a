#!/usr/bin/env python
"""Export the bundle for the model zoo: one zip of ``diffkillr/`` (``bundle.release``).

    python scripts/export.py --out dist/diffkillr.zip
    python -m monai.bundle download --name diffkillr --bundle_dir my_bundles --url file://$PWD/dist/diffkillr.zip
    python -m monai.bundle run --config_file my_bundles/diffkillr/configs/inference.yaml --bundle_root my_bundles/diffkillr
"""

import argparse
import sys
from pathlib import Path

from bundle.release import zip_bundle

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the zip file to write")
    parser.add_argument("--name", default="diffkillr", help="the bundle's folder name inside the zip")
    args = parser.parse_args(argv)
    print(zip_bundle(ROOT, args.out, args.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
