"""protocol: what every benchmark of the bundle shares.

* a **seeded bank** per seed: ``fraction`` of the train cells of a dataset folder (``bank.build_bank``), the only
  ground truth the method sees;
* **trained networks** per seed, by the bundle's own training configs, cached under a work folder, or given weights;
* the **held-out cells**: every annotated cell of the test images, used for scoring only;
* the bundle's own **inference config**, parsed: the benchmarks run the product, not a copy of it;
* the **machine** the figures were measured on, recorded with them.

Test annotation never enters a bank, a trained network or a tuned constant.
"""

from __future__ import annotations

import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from tqdm.auto import tqdm

from ..bank import build_bank, concatenate, extract_cells, save_bank
from ..checkpoint import load_weights
from ..data import DataError, list_dataset, load_sample, written_atomically
from ..patches import PATCH_SIZE, centre_crop
from ..release import EXPORTED

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
TRAIN_CONFIGS = {"invariant": [CONFIGS / "train.yaml", CONFIGS / "train_invariant.yaml"],
                 "mapping": [CONFIGS / "train.yaml", CONFIGS / "train_mapping.yaml"]}


@dataclass
class Setting:
    """One benchmark setting: where the cells come from and how the bank and the networks are made."""

    train_dir: Path
    test_dir: Path
    organ: str | None = None
    fraction: float = 0.1
    per_organ: bool = False
    device: str = "cpu"
    work_dir: Path = ROOT / "eval" / "work"
    retrain: bool = False
    # organs scored, when not ``organ`` (organs the bank and the networks never saw)
    test_organs: tuple = ()

    def work_for(self, seed: int) -> Path:
        return Path(self.work_dir) / f"{(self.organ or 'all').lower()}_f{self.fraction:g}_s{seed}"


def machine() -> dict:
    """Facts about the machine this process runs on, recorded beside every figure it measures."""
    facts = {"platform": platform.platform(), "machine": platform.machine(), "cpu": _cpu_model(),
             "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
             "python": platform.python_version(), "gpu": None}
    try:
        facts["memory_gb"] = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1024**3, 1)
    except (ValueError, OSError, AttributeError):  # not a POSIX system
        facts["memory_gb"] = None
    if torch.cuda.is_available():
        facts["gpu"] = torch.cuda.get_device_name(0)
    return facts


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def bank_for(setting: Setting, seed: int) -> tuple[dict, Path]:
    """The seeded bank of the train images, saved in the seed's work folder."""
    bank = build_bank(setting.train_dir, fraction=setting.fraction, seed=seed, organ=setting.organ,
                      per_organ=setting.per_organ)
    return bank, save_bank(bank, setting.work_for(seed) / "bank.pt")


def test_samples(setting: Setting) -> list:
    """The test images scored: of ``setting.organ``, or of each of ``setting.test_organs``."""
    organs = setting.test_organs or (setting.organ,)
    samples = [s for organ in organs for s in list_dataset(setting.test_dir, split="test", organ=organ)]
    if not samples:
        raise DataError(f"{setting.test_dir}: no test images" + (f" of {', '.join(o for o in organs if o)}"
                                                                 if any(organs) else ""))
    return samples


def held_out_cells(setting: Setting) -> dict:
    """Every annotated cell of the test images (``test_samples``), as bank-style crops."""
    parts = []
    for sample in tqdm(test_samples(setting), desc="reading test cells", unit="image"):
        image, labels = load_sample(sample)
        parts.append(extract_cells(image, labels))
    return concatenate(parts)


def network_from(which: str, checkpoint, device, overrides: dict | None = None) -> torch.nn.Module:
    """The training config's ``network_def`` of ``which`` ("invariant" or "mapping") with a checkpoint's weights."""
    parser = ConfigParser()
    parser.read_config([str(p) for p in TRAIN_CONFIGS[which]])
    parser.update(overrides or {})
    return load_weights(parser.get_parsed_content("network_def"), checkpoint).to(device)


def train(which: str, bank_path: Path, ckpt_dir: Path, seed: int, overrides: dict) -> torch.nn.Module:
    """Train a network on a bank with the bundle's own training config; returns the trained network."""
    workflow = ConfigWorkflow(config_file=[str(p) for p in TRAIN_CONFIGS[which]], workflow_type=None,
                              bundle_root=str(ROOT), bank_path=str(bank_path), ckpt_dir=str(ckpt_dir), seed=seed,
                              resume=False, **overrides)
    workflow.initialize()
    workflow.run()
    return workflow.parser.get_parsed_content("network")


def trained(setting: Setting, seed: int, which: str, bank_path: Path, given=None,
            overrides: dict | None = None) -> tuple[torch.nn.Module, float]:
    """DiffeoInvariantNet ("invariant") or DiffeoMappingNet ("mapping"): ``given`` weights, the seed's cached network,
    or one trained now (``overrides`` of the training config). Returns it and the seconds its training took."""
    device = torch.device(setting.device)
    architecture = {k: v for k, v in (overrides or {}).items() if k == "backbone"}
    if given:
        return network_from(which, given, device, architecture), 0.0
    cache = setting.work_for(seed) / f"{which}.pt"
    if cache.is_file() and not setting.retrain:
        print(f"reusing {cache}")
        seconds = torch.load(cache, map_location="cpu", weights_only=True).get("train_seconds", torch.tensor(0.0))
        return network_from(which, cache, device, architecture), float(seconds)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        network = train(which, bank_path, Path(tmp), seed, {"device": f"$torch.device('{setting.device}')",
                                                            **(overrides or {})})
    seconds = time.perf_counter() - start
    torch.save({"model": network.state_dict(), "train_seconds": torch.tensor(seconds)}, cache)
    return network, seconds


def inference(bank_path: Path, device: str, invariant_path=None, mapping_path=None, student_path=None,
              student: bool = True, exported=None):
    """The bundle's own inference config, parsed: its ``inferer`` and ``network_def`` with weights loaded. Given paths
    replace the shipped weights; ``student=False`` runs the workflow without its student (the first teacher);
    ``exported``, a folder of ``scripts/export.py --networks``, runs it on those (``configs/exported.yaml``)."""
    parser = ConfigParser(ConfigParser.load_config_file(str(CONFIGS / "inference.yaml")))
    if exported is not None:
        parser.update(ConfigParser.load_config_file(str(CONFIGS / "exported.yaml")))
        parser.update({f"{key}#path": str(Path(exported) / name) for key, _, name in EXPORTED})
    parser.update({"bundle_root": str(ROOT), "device": f"$torch.device('{device}')", "bank_path": str(bank_path)})
    if invariant_path is not None:
        parser["invariant_path"] = str(invariant_path)
    if student_path is not None:
        parser["student_path"] = str(student_path)
    if not student:
        parser["inferer#student"] = None
    network = load_weights(parser.get_parsed_content("network_def"),
                           mapping_path or parser.get_parsed_content("mapping_path"))
    return parser.get_parsed_content("inferer"), network.to(torch.device(device))


@torch.no_grad()
def embed(network, crops: torch.Tensor, device, batch_size: int = 256) -> torch.Tensor:
    """Unit-norm embeddings (N, D) of uint8 or float crops (N, C, S, S), centre-cropped to the patch size."""
    network.eval()
    out = []
    for start in range(0, len(crops), batch_size):
        x = crops[start : start + batch_size].to(device)
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x
        out.append(network(centre_crop(x, PATCH_SIZE)).cpu())
    return torch.cat(out)


def write_json(result: dict, path) -> Path:
    """A benchmark's result, written atomically."""
    with written_atomically(path) as (tmp,):
        Path(tmp).write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")
    return Path(path)
