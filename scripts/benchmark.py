#!/usr/bin/env python
"""Benchmarks of the DiffKillR bundle on any dataset folder (see ``bundle.data.list_dataset`` for the layout).

    python scripts/benchmark.py matching --train-dir ../shared/data/monuseg --test-dir ../shared/data/monuseg \\
        --organ Kidney --fraction 0.1 --seed 0 --json eval/matching_kidney_s0.json

matching: the paper's Table I. The bank is a seeded ``--fraction`` of the train cells; DiffeoInvariantNet is trained on
it with ``configs/train_invariant.yaml`` (or loaded from ``--checkpoint``). Queries are fresh realistic-diffeomorphism
views of the held-out test cells, the gallery their canonical crops; MAP, top-1 and top-3 as defined in
``bundle.matching``. ``--seeds 0,1,2`` repeats the whole protocol (bank draw, training, queries) and reports mean ± sd.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from monai.bundle import ConfigParser, ConfigWorkflow  # noqa: E402

from bundle.bank import build_bank, concatenate, extract_cells, save_bank  # noqa: E402
from bundle.data import list_dataset, load_sample  # noqa: E402
from bundle.matching import matching_metrics  # noqa: E402
from bundle.patches import PATCH_SIZE, centre_crop  # noqa: E402

TRAIN_INVARIANT = ROOT / "configs" / "train_invariant.yaml"


def held_out_cells(test_dir, organ) -> dict:
    """Every annotated cell of the test images (all images when the folder has no split)."""
    parts = []
    for sample in tqdm(list_dataset(test_dir, split="test", organ=organ), desc="reading test cells", unit="image"):
        image, labels = load_sample(sample)
        parts.append(extract_cells(image, labels))
    return concatenate(parts)


def train_invariant(bank_path: Path, ckpt_dir: Path, seed: int, overrides: dict) -> torch.nn.Module:
    """Train DiffeoInvariantNet on a bank with the bundle's own training config; returns the trained network."""
    workflow = ConfigWorkflow(
        config_file=str(TRAIN_INVARIANT),
        workflow_type=None,
        bundle_root=str(ROOT),
        bank_path=str(bank_path),
        ckpt_dir=str(ckpt_dir),
        seed=seed,
        resume=False,
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    return workflow.parser.get_parsed_content("network")


def load_invariant(checkpoint: Path, device) -> torch.nn.Module:
    parser = ConfigParser.load_config_file(str(TRAIN_INVARIANT))
    network = ConfigParser(parser).get_parsed_content("network_def")
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    network.load_state_dict(state.get("model", state))
    return network.to(device)


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


def query_views(cells: dict, seed: int, n_views: int, device, batch_size: int = 256) -> torch.Tensor:
    """Fresh deformed views (N * n_views, C, 96, 96) float of the held-out cells, from the training config's family."""
    augment = ConfigParser(ConfigParser.load_config_file(str(TRAIN_INVARIANT))).get_parsed_content("augment")
    augment.set_random_state(seed=seed)
    images = cells["images"].repeat_interleave(n_views, dim=0)
    views = []
    for start in range(0, len(images), batch_size):
        x = images[start : start + batch_size].to(device).float() / 255.0
        views.append(torch.as_tensor(augment({"image": x})["image"]).cpu())
    return torch.cat(views)


def run_matching(args, seed: int) -> dict:
    device = torch.device(args.device)
    bank = build_bank(args.train_dir, fraction=args.fraction, seed=seed, organ=args.organ, per_organ=args.per_organ)
    with tempfile.TemporaryDirectory() as tmp:
        bank_path = save_bank(bank, Path(tmp) / "bank.pt")
        start = time.perf_counter()
        if args.checkpoint:
            network, train_seconds = load_invariant(Path(args.checkpoint), device), 0.0
        else:
            overrides = {"train#trainer#max_epochs": args.epochs, "device": f"$torch.device('{args.device}')",
                         "n_views": args.train_views}
            if args.unlabelled:
                # label-free proposal crops of the same train images: pixels only, no annotation
                overrides.update({"unlabelled_dir": str(args.train_dir), "unlabelled_organ": args.organ})
            network = train_invariant(bank_path, Path(tmp) / "ckpt", seed, overrides)
            train_seconds = time.perf_counter() - start
    cells = held_out_cells(args.test_dir, args.organ)
    gallery = embed(network, cells["images"], device)
    queries = embed(network, query_views(cells, seed + 10_000, args.views, device), device)
    ids = torch.arange(len(gallery))
    metrics = matching_metrics(queries, ids.repeat_interleave(args.views), gallery, ids)
    return {
        "organ": args.organ or "all",
        "seed": seed,
        "n_bank": len(bank["images"]),
        "n_test": len(gallery),
        "n_queries": len(queries),
        **metrics,
        "train_seconds": round(train_seconds, 1),
    }


def summarise(runs: list[dict], keys=("map", "top1", "top3", "train_seconds")) -> dict:
    """One result, or mean and sd over seeds (sd with ddof=1) under ``<key>`` and ``<key>_sd``."""
    if len(runs) == 1:
        return runs[0]
    out = {k: runs[0][k] for k in ("organ", "n_test", "n_queries")}
    out["seeds"] = [r["seed"] for r in runs]
    out["n_bank"] = float(np.mean([r["n_bank"] for r in runs]))
    for k in keys:
        values = np.array([r[k] for r in runs], dtype=float)
        out[k], out[f"{k}_sd"] = float(values.mean()), float(values.std(ddof=1))
    out["runs"] = runs
    return out


def print_table(result: dict) -> None:
    def fmt(k):
        return f"{result[k]:.3f} ± {result[k + '_sd']:.3f}" if f"{k}_sd" in result else f"{result[k]:.3f}"

    print(f"\nmatching, organ {result['organ']}: bank {result['n_bank']:.0f} cells, gallery {result['n_test']} test cells, "
          f"{result['n_queries']} queries")
    print(f"{'MAP':>18} {'top-1':>18} {'top-3':>18} {'train s':>12}")
    print(f"{fmt('map'):>18} {fmt('top1'):>18} {fmt('top3'):>18} {result['train_seconds']:>12.0f}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("matching", help="DiffeoInvariantNet matching table (paper Table I)")
    m.add_argument("--train-dir", required=True, help="dataset folder whose train rows give the bank")
    m.add_argument("--test-dir", required=True, help="dataset folder whose test rows give the queries")
    m.add_argument("--organ", default=None, help="only this organ (case-insensitive)")
    m.add_argument("--fraction", type=float, default=0.1, help="share of train cells in the bank")
    m.add_argument("--per-organ", action="store_true", help="draw the fraction within every organ")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2, for mean ± sd (overrides --seed)")
    m.add_argument("--checkpoint", default=None, help="a trained DiffeoInvariantNet ({'model': state_dict}); else train")
    m.add_argument("--epochs", type=int, default=60, help="training epochs when no checkpoint is given")
    m.add_argument("--views", type=int, default=2, help="query views per held-out cell")
    m.add_argument("--train-views", type=int, default=2, help="views per cell in contrastive training")
    m.add_argument("--no-unlabelled", dest="unlabelled", action="store_false",
                   help="train on the bank cells only, without label-free proposal crops of the train images")
    m.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    m.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]
    result = summarise([run_matching(args, s) for s in seeds])
    print_table(result)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
