"""The MONAI Label app folder (MONAI Label looks for a MONAILabelApp subclass in ``<app>/main.py``):

    monailabel start_server --app scripts/monailabel_app --studies my_images --conf device cpu

The app itself is ``bundle.serving.DiffKillRApp``.
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # the bundle root: a bundle need not be pip-installed

from bundle.serving import DiffKillRApp  # noqa: E402,F401
