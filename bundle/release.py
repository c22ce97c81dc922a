"""release: what ``scripts/export.py`` makes of the bundle.

* ``zip_bundle``: the bundle as the model zoo hands it out, one zip holding ``<name>/``.
  ``monai.bundle.download(name, bundle_dir=..., url=...)`` unpacks it into ``bundle_dir/<name>/``, which runs from any
  folder without being installed: ``--bundle_root bundle_dir/<name>`` (the configs add it to ``sys.path``).
* ``export_networks``: the three networks of the inference config exported with ``torch.export`` (``.pt2``), any
  number of cells per call, which ``configs/exported.yaml`` loads in place of the Python modules
  (``checkpoint.ExportedNetwork``). TorchScript cannot do this: ``torch.jit.script`` fails on MONAI's ``Warp`` and
  ``DVF2DDF``, and a trace is frozen to one batch size.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import torch
from monai.bundle import ConfigParser

from .checkpoint import load_weights
from .data import written_atomically
from .patches import PATCH_SIZE

__all__ = ["PARTS", "zip_bundle", "export_networks", "EXPORTED"]

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


# the inference config's networks and the files their exports go to: (network, weights, file)
EXPORTED = (("network_def", "mapping_path", "model.pt2"), ("invariant_def", "invariant_path", "invariant.pt2"),
            ("student_def", "student_path", "student.pt2"))


def export_networks(root, out_dir, device: str = "cpu") -> list[Path]:
    """Export the inference config's networks with their weights (``EXPORTED``) to ``out_dir``: DiffeoMappingNet and
    DiffeoInvariantNet for any number of cells, the student for any image whose sides are multiples of 16 (it pads
    to them). An export holds the device it was made on."""
    parser = ConfigParser(ConfigParser.load_config_file(str(Path(root) / "configs" / "inference.yaml")))
    parser.update({"bundle_root": str(root), "device": f"$torch.device('{device}')"})
    cells = torch.export.Dim("cells", min=1, max=1 << 20)
    sixteenths = torch.export.Dim("height", min=1, max=4096), torch.export.Dim("width", min=1, max=4096)
    channels = parser.get_parsed_content("invariant_def#in_channels", default=3)
    examples = {"network_def": (torch.rand(2, 2 * channels, PATCH_SIZE, PATCH_SIZE), {0: cells}),
                "invariant_def": (torch.rand(2, channels, PATCH_SIZE, PATCH_SIZE), {0: cells}),
                "student_def": (torch.rand(1, channels, 64, 64), {2: 16 * sixteenths[0], 3: 16 * sixteenths[1]})}
    written = []
    for network_key, weights_key, name in EXPORTED:
        network = load_weights(parser.get_parsed_content(network_key), parser.get_parsed_content(weights_key))
        network = network.to(device).eval()
        example, dynamic = examples[network_key]
        program = torch.export.export(network, (example.to(device),), dynamic_shapes=(dynamic,))
        path = Path(out_dir) / name
        with written_atomically(path) as (tmp,):
            torch.export.save(program, str(tmp))
        written.append(path)
    return written
