"""checkpoint: the bundle's weights files, read and written as ``{"model": state_dict, "recipe": {...}}``.

Every file is loaded with ``torch.load(weights_only=True)``. A checkpoint written by the training configs also carries
its **recipe**: the hyper-parameters of the run that made it (the config's ``recipe`` section), and the recipe of the
weights it started from when it was fine-tuned. The shipped models carry theirs, so a test can hold the configs' defaults
to the recipe that made ``models/``.
"""

from __future__ import annotations

import io
import json
import zipfile
from pathlib import Path

import torch
from monai.handlers import CheckpointLoader as MonaiCheckpointLoader

from .data import DataError, in_one_line

__all__ = ["load_weights", "read_checkpoint", "recipe_of", "CheckpointLoader", "ExportedNetwork", "Recipe"]


def read_checkpoint(path, what: str = "checkpoint") -> dict:
    """The dictionary stored at ``path`` (weights only); DataError names a missing or unreadable file, and ``what`` it
    should have been (a checkpoint, a bank file)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated, not a torch file, or holding more than tensors
        raise DataError(f"{path}: not a readable {what} ({in_one_line(err)})") from err
    if not isinstance(stored, dict):
        raise DataError(f"{path}: not a {what} (a {type(stored).__name__}, not a dictionary)")
    return stored


def _only_tensors(path: Path) -> None:
    """Refuse an exported archive (``.pt2``) with a pickled part that holds more than tensors.

    ``torch.export.load`` unpickles some parts without ``weights_only`` (a weight or constant its config marks
    ``use_pickle``, custom objects, and anything ``weights_only`` refuses in older archives), so a crafted file could run
    code. Every pickled part is read here first as ``torch.load(weights_only=True)`` reads it; custom objects, which
    the bundle's networks never hold, are refused outright."""
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
            pickled = [n for n in names if n.endswith(".pt")]  # sample inputs; every part of older archives
            for config in (n for n in names if n.endswith(("_weights_config.json", "_constants_config.json"))):
                folder = config.rsplit("/", 1)[0]
                for entry in json.loads(archive.read(config)).get("config", {}).values():
                    if entry["path_name"].startswith(("custom_obj_", "opaque_obj_")):
                        raise DataError(f"{path}: refused, it holds a pickled Python object ({entry['path_name']}), "
                                        "not only tensors")
                    if entry.get("use_pickle"):
                        pickled.append(f"{folder}/{entry['path_name']}")
            for name in pickled:
                try:
                    torch.load(io.BytesIO(archive.read(name)), map_location="cpu", weights_only=True)
                except Exception as err:
                    raise DataError(f"{path}: refused, its {name} holds not only tensors ({in_one_line(err)})") from err
    except DataError:
        raise
    except (zipfile.BadZipFile, KeyError, ValueError, TypeError) as err:  # not an archive torch.export wrote
        raise DataError(f"{path}: not a readable exported network ({in_one_line(err)})") from err


def _mismatch(path, names: str, error: Exception) -> DataError:
    return DataError(f"{path}: checkpoint does not match {names} ({in_one_line(error)})")


def load_weights(network: torch.nn.Module, path) -> torch.nn.Module:
    """Load the weights of a checkpoint (``{"model": state_dict}`` or a bare state dict) into ``network``."""
    checkpoint = read_checkpoint(path)
    try:
        network.load_state_dict(checkpoint.get("model", checkpoint))
    except RuntimeError as err:
        raise _mismatch(path, type(network).__name__, err) from err
    return network


class ExportedNetwork(torch.nn.Module):
    """A network exported by ``scripts/export.py --networks`` (``torch.export``, any number of cells), loaded in place
    of its Python module by ``configs/exported.yaml``. Same calls and same state-dict keys, so the configs load
    weights into it unchanged.

    An exported program is frozen in eval mode (batch norm on its running statistics) and does not take ``train()``
    or ``eval()``. Eval is the only mode the annotator runs networks in, so ``train(False)`` only records the mode, and
    ``train(True)`` is refused: an exported network cannot be trained.
    """

    def __init__(self, path):
        super().__init__()
        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: exported network not found (python scripts/export.py --networks writes it)")
        _only_tensors(path)
        try:
            self.program = torch.export.load(str(path)).module()
        except Exception as err:  # not a torch.export archive, or one from another torch release
            raise DataError(f"{path}: not a readable exported network ({in_one_line(err)})") from err
        self.training = False

    def train(self, mode: bool = True) -> "ExportedNetwork":
        if mode:
            raise RuntimeError("an exported network runs in eval mode only; train the Python module instead")
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.program(x)

    def state_dict(self, *args, **kwargs):
        return self.program.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        return self.program.load_state_dict(state_dict, strict=strict, assign=assign)


def recipe_of(path) -> dict | None:
    """The recipe stored in a checkpoint, or None for one written without it."""
    return read_checkpoint(path).get("recipe")


class CheckpointLoader(MonaiCheckpointLoader):
    """MONAI's ``CheckpointLoader`` whose failures name the file in one line (``DataError``), not a torch traceback."""

    def __call__(self, engine) -> None:
        read_checkpoint(self.load_path)  # missing, truncated, foreign: said by name before torch says it otherwise
        try:
            super().__call__(engine)
        except (RuntimeError, KeyError, ValueError) as err:
            names = ", ".join(type(obj).__name__ for obj in self.load_dict.values())
            raise _mismatch(self.load_path, names, err) from err


class Recipe:
    """The hyper-parameters of a training run, saved into its checkpoints beside the weights (``save_dict`` entry).

    Args:
        values: the config's ``recipe`` section, resolved (numbers, strings, booleans, lists).
        pretrained: the checkpoint the run started from, if any: its own recipe is kept under ``"pretrained"``.
    """

    def __init__(self, values: dict, pretrained=None):
        self.values = dict(values)
        self.pretrained = None if pretrained is None else recipe_of(pretrained)

    def state_dict(self) -> dict:
        return {**self.values, "pretrained": self.pretrained}

    def load_state_dict(self, state: dict) -> None:
        """Resuming keeps the recipe of the run being resumed: it is the configuration that continues."""
