"""release: the bundle as the model zoo hands it out, one zip holding ``<name>/`` (``scripts/export.py``).

``monai.bundle.download(name, bundle_dir=..., url=...)`` unpacks it into ``bundle_dir/<name>/``, which runs from any
folder without being installed: ``--bundle_root bundle_dir/<name>`` (the configs add it to ``sys.path``).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from .data import written_atomically

__all__ = ["PARTS", "zip_bundle"]

# what a zoo bundle holds: the configs and the package they name, the weights and bank, the model card and sample, the
# MONAI Label app, the licence
PARTS = ("configs", "bundle", "models", "docs", "scripts/monailabel_app/main.py", "LICENSE", "README.md",
         "large_files.yml")


def zip_bundle(root, out, name: str = "diffkillr") -> Path:
    """Write the bundle at ``root`` as a zip of ``<name>/<part>`` (``PARTS``, caches left out), atomically."""
    root = Path(root)
    with written_atomically(out) as (tmp,):
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for part in PARTS:
                path = root / part
                files = [path] if path.is_file() else sorted(
                    f for f in path.rglob("*") if f.is_file() and "__pycache__" not in f.parts)
                for file in files:
                    archive.write(file, f"{name}/{file.relative_to(root).as_posix()}")
    return Path(out)
