#!/usr/bin/env python
"""Regenerate docs/results.md, eval/report.md (with its Fig. 3-style chart) and the generated blocks of the model card
(docs/README.md) from the committed artifacts in eval/ and models/ (``bundle.benchmarks.report``).

    python scripts/make_results.py
"""

import argparse
import sys
from pathlib import Path

from bundle.benchmarks.report import write_all
from bundle.benchmarks.protocol import ROOT


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", default=str(ROOT), help="the bundle's folder (docs/, eval/, models/)")
    parser.add_argument("--eval-dir", default=None, help="the artifacts (default: <root>/eval)")
    args = parser.parse_args(argv)
    root = Path(args.root)
    for path in write_all(root, Path(args.eval_dir) if args.eval_dir else None):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
