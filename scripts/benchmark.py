#!/usr/bin/env python
"""Benchmarks of the DiffKillR bundle on any dataset folder (see ``bundle.data.list_dataset`` for the layout).

    python scripts/benchmark.py matching --train-dir ../shared/data/monuseg --test-dir ../shared/data/monuseg \\
        --organ Kidney --fraction 0.1 --seed 0 --json eval/matching_kidney_s0.json

matching: the paper's Table I. The bank is a seeded ``--fraction`` of the train cells; DiffeoInvariantNet is trained on
it with ``configs/train_invariant.yaml`` (or loaded from ``--checkpoint``). Queries are fresh realistic-diffeomorphism
views of the held-out test cells, the gallery their canonical crops; MAP, top-1 and top-3 as defined in
``bundle.matching``. ``--seeds 0,1,2`` repeats the whole protocol (bank draw, training, queries) and reports mean ± sd.

registration: the registration table. For held-out test cells (``--max-pairs`` drawn with the seed), the nearest
archetype by DiffeoInvariantNet is mapped onto the cell and its mask scored against the cell's own ground truth. Rows on
the same pairs: identity, dihedral only, SimpleITK demons, ANTs SyNOnly (if antspyx imports), ours. Then the same rows
on the synthetic-shape check (shapes warped by a known random diffeomorphism).

Trained networks are kept under ``--work-dir`` per (organ, fraction, seed) and reused by later runs unless
``--retrain``; ``--checkpoint`` / ``--mapping-checkpoint`` use given weights instead.
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

from bundle import synthetic  # noqa: E402
from bundle.baselines import registration as baselines  # noqa: E402
from bundle.bank import build_bank, concatenate, extract_cells, save_bank, take  # noqa: E402
from bundle.data import list_dataset, load_sample  # noqa: E402
from bundle.matching import matching_metrics, nearest_archetype  # noqa: E402
from bundle.metrics import registration_scores  # noqa: E402
from bundle.patches import PATCH_SIZE, centre_crop, orientation_ramp  # noqa: E402
from bundle.register import dihedral, dihedral_align, register, warp_labels  # noqa: E402

TRAIN_INVARIANT = ROOT / "configs" / "train_invariant.yaml"
TRAIN_MAPPING = ROOT / "configs" / "train_mapping.yaml"


def held_out_cells(test_dir, organ) -> dict:
    """Every annotated cell of the test images (all images when the folder has no split)."""
    parts = []
    for sample in tqdm(list_dataset(test_dir, split="test", organ=organ), desc="reading test cells", unit="image"):
        image, labels = load_sample(sample)
        parts.append(extract_cells(image, labels))
    return concatenate(parts)


def train(config: Path, bank_path: Path, ckpt_dir: Path, seed: int, overrides: dict) -> torch.nn.Module:
    """Train a network on a bank with the bundle's own training config; returns the trained network."""
    workflow = ConfigWorkflow(
        config_file=str(config),
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


def load_network(config: Path, checkpoint: Path, device, overrides: dict | None = None) -> torch.nn.Module:
    """The config's ``network_def`` with the weights of a ``{"model": state_dict}`` checkpoint."""
    parser = ConfigParser(ConfigParser.load_config_file(str(config)))
    parser.update(overrides or {})
    network = parser.get_parsed_content("network_def")
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


def work_dir(args, seed: int) -> Path:
    return Path(args.work_dir) / f"{(args.organ or 'all').lower()}_f{args.fraction:g}_s{seed}"


def bank_for(args, seed: int) -> tuple[dict, Path]:
    """The seeded bank of the train rows, saved in the work dir."""
    bank = build_bank(args.train_dir, fraction=args.fraction, seed=seed, organ=args.organ, per_organ=args.per_organ)
    return bank, save_bank(bank, work_dir(args, seed) / "bank.pt")


def trained(args, seed: int, which: str, bank_path: Path) -> tuple[torch.nn.Module, float]:
    """DiffeoInvariantNet ("invariant") or DiffeoMappingNet ("mapping"): given, cached, or trained now.

    Returns the network and the seconds spent training it (read from the cache when reused).
    """
    device = torch.device(args.device)
    config = TRAIN_INVARIANT if which == "invariant" else TRAIN_MAPPING
    given = args.checkpoint if which == "invariant" else getattr(args, "mapping_checkpoint", None)
    arch = {"backbone": args.backbone} if which == "mapping" else {}
    if given:
        return load_network(config, Path(given), device, arch), 0.0
    cache = work_dir(args, seed) / f"{which}.pt"
    if cache.is_file() and not args.retrain:
        state = torch.load(cache, map_location="cpu", weights_only=True)
        print(f"reusing {cache}")
        return load_network(config, cache, device, arch), float(state.get("train_seconds", 0.0))
    overrides = {"device": f"$torch.device('{args.device}')"}
    if which == "invariant":
        overrides.update({"train#trainer#max_epochs": args.epochs, "n_views": args.train_views})
        if args.unlabelled:
            # label-free proposal crops of the same train images: pixels only, no annotation
            overrides.update({"unlabelled_dir": str(args.train_dir), "unlabelled_organ": args.organ})
    else:
        overrides.update({"train#trainer#max_epochs": args.mapping_epochs, "backbone": args.backbone,
                          "label_weight": args.label_weight, "similarity": args.similarity})
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        network = train(config, bank_path, Path(tmp), seed, overrides)
    seconds = time.perf_counter() - start
    torch.save({"model": network.state_dict(), "train_seconds": torch.tensor(seconds)}, cache)
    return network, seconds


def run_matching(args, seed: int) -> dict:
    device = torch.device(args.device)
    bank, bank_path = bank_for(args, seed)
    network, train_seconds = trained(args, seed, "invariant", bank_path)
    cells = held_out_cells(args.test_dir, args.organ)
    gallery = embed(network, cells["images"], device)
    queries = embed(network, query_views(cells, seed + 10_000, args.views, device), device)
    ids = torch.arange(len(gallery))
    query_ids = ids.repeat_interleave(args.views)
    metrics = matching_metrics(queries, query_ids, gallery, ids)
    if args.gallery_size:
        # the same queries against random galleries of a given size (e.g. a bank's), averaged over 10 draws
        rng, draws = np.random.default_rng(seed), []
        for _ in range(10):
            subset = torch.from_numpy(np.sort(rng.choice(len(gallery), args.gallery_size, replace=False)))
            keep = torch.isin(query_ids, subset)
            draws.append(matching_metrics(queries[keep], query_ids[keep], gallery[subset], subset))
        metrics.update({f"{k}_gallery{args.gallery_size}": float(np.mean([d[k] for d in draws])) for k in draws[0]})
    return {
        "organ": args.organ or "all",
        "seed": seed,
        "n_bank": len(bank["images"]),
        "n_test": len(gallery),
        "n_queries": len(queries),
        **metrics,
        "train_seconds": round(train_seconds, 1),
    }


def score_rows(fields: dict, moving: dict, targets: torch.Tensor, seconds: dict, n: int) -> dict:
    """Mean of each registration score for every row. fields: row -> (ddf or None, dihedral k or None)."""
    rows = {}
    for name, (ddf, k) in fields.items():
        mask, ramp = moving["mask"], moving["ramp"]
        if k is not None:
            mask, ramp = dihedral(mask, k), dihedral(ramp, k)
        if ddf is not None:
            mask = warp_labels(mask, ddf, "mask")
            ramp = warp_labels(ramp, ddf, "continuous") * mask
        scores = registration_scores(mask, ramp, targets, ddf)
        rows[name] = {key: float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for key, v in scores.items()}
        rows[name]["ms_per_pair"] = 1000.0 * seconds.get(name, 0.0) / max(n, 1)
    return rows


def registration_rows(mapping, moving: dict, cells: torch.Tensor, targets: torch.Tensor, device) -> dict:
    """The table's rows for archetypes ``moving`` {"image", "mask", "ramp"} (N, ., P, P) registered onto ``cells``."""
    n, seconds, fields = len(cells), {}, {"identity": (None, None)}
    start = time.perf_counter()
    k = dihedral_align(moving["image"], cells, "mi")
    seconds["dihedral"] = time.perf_counter() - start
    fields["dihedral"] = (None, k)
    aligned = dihedral(moving["image"], k)
    start = time.perf_counter()
    fields["demons"] = (baselines.demons_register(aligned, cells), k)
    seconds["demons"] = time.perf_counter() - start + seconds["dihedral"]
    if baselines.ants_available():
        start = time.perf_counter()
        fields["ants_synonly"] = (baselines.ants_register(aligned, cells), k)
        seconds["ants_synonly"] = time.perf_counter() - start + seconds["dihedral"]
    start = time.perf_counter()
    ours = register(mapping, {"image": moving["image"].to(device)}, cells.to(device), align="mi", batch_size=512)
    seconds["ours"] = time.perf_counter() - start
    fields["ours"] = (ours["ddf"].cpu(), ours["dihedral"].cpu())
    return score_rows(fields, moving, targets, seconds, n)


def run_registration(args, seed: int) -> dict:
    device = torch.device(args.device)
    bank, bank_path = bank_for(args, seed)
    invariant, _ = trained(args, seed, "invariant", bank_path)
    mapping, mapping_seconds = trained(args, seed, "mapping", bank_path)
    cells = held_out_cells(args.test_dir, args.organ)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(len(cells["images"]), min(args.max_pairs, len(cells["images"])), replace=False))
    cells = take(cells, pick)
    archetype_index, _ = nearest_archetype(embed(invariant, cells["images"], device), embed(invariant, bank["images"], device))
    masks = centre_crop(bank["masks"][archetype_index].float(), PATCH_SIZE)
    moving = {"image": centre_crop(bank["images"][archetype_index].float() / 255, PATCH_SIZE), "mask": masks,
              "ramp": orientation_ramp(masks)}
    fixed = centre_crop(cells["images"].float() / 255, PATCH_SIZE)
    rows = registration_rows(mapping, moving, fixed, centre_crop(cells["masks"].float(), PATCH_SIZE), device)

    pairs = synthetic.synthetic_pairs(args.synthetic_pairs, seed=seed)
    shapes = {"image": pairs["moving_image"], "mask": pairs["moving_mask"], "ramp": orientation_ramp(pairs["moving_mask"])}
    synthetic_rows = registration_rows(mapping, shapes, pairs["fixed_image"], pairs["fixed_mask"], device)
    return {"organ": args.organ or "all", "seed": seed, "pairs": len(fixed), "n_bank": len(bank["images"]),
            "mapping_train_seconds": round(mapping_seconds, 1), "batch_size": 512, "rows": rows,
            "synthetic": {"pairs": args.synthetic_pairs, "rows": synthetic_rows}}


def summarise_rows(runs: list[dict]) -> dict:
    """Mean and sd (ddof=1) over seeds of every row's scores, for the real pairs and the synthetic check."""
    if len(runs) == 1:
        return runs[0]

    def merge(tables):
        out = {}
        for row in tables[0]:
            out[row] = {}
            for key in tables[0][row]:
                values = np.array([t[row][key] for t in tables], dtype=float)
                out[row][key], out[row][f"{key}_sd"] = float(values.mean()), float(values.std(ddof=1))
        return out

    return {"organ": runs[0]["organ"], "seeds": [r["seed"] for r in runs], "pairs": runs[0]["pairs"],
            "batch_size": runs[0]["batch_size"],
            "mapping_train_seconds": float(np.mean([r["mapping_train_seconds"] for r in runs])),
            "rows": merge([r["rows"] for r in runs]),
            "synthetic": {"pairs": runs[0]["synthetic"]["pairs"], "rows": merge([r["synthetic"]["rows"] for r in runs])},
            "runs": runs}


def print_rows(title: str, rows: dict) -> None:
    keys = ("dice", "iou", "neg_jac_pct", "one_component_pct", "dtheta_deg", "elongated_pct", "ms_per_pair")
    print(f"\n{title}")
    print(f"{'row':<14}" + "".join(f"{k:>22}" for k in keys))
    for name, row in rows.items():
        cells = [f"{row[k]:.3f} ± {row[k + '_sd']:.3f}" if f"{k}_sd" in row else f"{row[k]:.3f}" for k in keys]
        print(f"{name:<14}" + "".join(f"{c:>22}" for c in cells))


def summarise(runs: list[dict]) -> dict:
    """One result, or mean and sd over seeds (sd with ddof=1) under ``<key>`` and ``<key>_sd``."""
    if len(runs) == 1:
        return runs[0]
    keys = ["map", "top1", "top3", "train_seconds"] + [k for k in runs[0] if "_gallery" in k]
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


def run_annotate(args) -> dict:
    """The whole-image benchmark (``scripts/whole_image.py``) for every seed, summarised over seeds and tiles."""
    import whole_image

    runs = []
    for seed in seeds_of(args):
        bank, bank_path = bank_for(args, seed)
        networks = {}
        if args.retrain:  # networks trained on this seed's bank, kept in the work dir
            for which in ("invariant", "mapping"):
                trained(args, seed, which, bank_path)
                networks[which] = work_dir(args, seed) / f"{which}.pt"
        runs.append(whole_image.run_seed(args, seed, bank, bank_path, networks))
    result = whole_image.summarise(args, runs)
    whole_image.print_summary(result)
    return result


def seeds_of(args) -> list[int]:
    return [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]


def write_json(result: dict, path) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(result, indent=2))
    print(f"wrote {path}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("matching", help="DiffeoInvariantNet matching table (paper Table I)")
    r = sub.add_parser("registration", help="DiffeoMappingNet registration table and the synthetic-shape check")
    a = sub.add_parser("annotate", help="whole test images, ours and baselines: counting, segmentation, orientation")
    every = sub.add_parser("all", help="matching, registration and annotate for one organ; JSON and reports")
    for p in (m, r, a, every):
        add_common_flags(p)
    for p in (r, a, every):
        p.add_argument("--mapping-checkpoint", default=None, help="a trained DiffeoMappingNet; else train")
        p.add_argument("--mapping-epochs", type=int, default=100, help="DiffeoMappingNet epochs when training")
        p.add_argument("--backbone", default="voxelmorph", choices=["voxelmorph", "localnet"])
        p.add_argument("--similarity", default="lncc", choices=["lncc", "mse"])
        p.add_argument("--label-weight", type=float, default=1.0, help="weight of the Dice label term (0: ablation)")
    for p in (r, every):
        p.add_argument("--max-pairs", type=int, default=300, help="test cells per seed (demons is ~0.2 s a pair)")
        p.add_argument("--synthetic-pairs", type=int, default=200)
    for p in (a, every):
        p.add_argument("--unet-iterations", type=int, default=None, help="training steps of the BasicUNet baseline")
    every.add_argument("--out-dir", default=str(ROOT / "eval"), help="JSON per benchmark and organ, and report.md")
    args = parser.parse_args(argv)

    if args.command == "all":
        organ = (args.organ or "all").lower()
        out = Path(args.out_dir)
        for name, run in (("matching", lambda: summarise([run_matching(args, s) for s in seeds_of(args)])),
                          ("registration", lambda: summarise_rows([run_registration(args, s) for s in seeds_of(args)])),
                          ("annotate", lambda: run_annotate(args))):
            write_json(run(), out / f"{name}_{organ}.json")
        import make_results

        return make_results.main([str(out)])
    if args.command == "annotate":
        result = run_annotate(args)
    elif args.command == "matching":
        result = summarise([run_matching(args, s) for s in seeds_of(args)])
        print_table(result)
    else:
        result = summarise_rows([run_registration(args, s) for s in seeds_of(args)])
        print_rows(f"registration, organ {result['organ']}: {result['pairs']} test cells per seed", result["rows"])
        print_rows(f"synthetic shapes: {result['synthetic']['pairs']} pairs per seed", result["synthetic"]["rows"])
    if args.json:
        write_json(result, args.json)
    return 0


def add_common_flags(m) -> None:
    m.add_argument("--train-dir", required=True, help="dataset folder whose train rows give the bank")
    m.add_argument("--test-dir", required=True, help="dataset folder whose test rows give the queries")
    m.add_argument("--organ", default=None, help="only this organ (case-insensitive)")
    m.add_argument("--fraction", type=float, default=0.1, help="share of train cells in the bank")
    m.add_argument("--per-organ", action="store_true", help="draw the fraction within every organ")
    m.add_argument("--seed", type=int, default=0)
    m.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2, for mean ± sd (overrides --seed)")
    m.add_argument("--checkpoint", default=None, help="a trained DiffeoInvariantNet ({'model': state_dict}); else train")
    m.add_argument("--epochs", type=int, default=25, help="DiffeoInvariantNet epochs when training")
    m.add_argument("--views", type=int, default=2, help="query views per held-out cell")
    m.add_argument("--train-views", type=int, default=2, help="views per cell in contrastive training")
    m.add_argument("--gallery-size", type=int, default=None,
                   help="also report the metrics against random galleries of this many test cells")
    m.add_argument("--no-unlabelled", dest="unlabelled", action="store_false",
                   help="train on the bank cells only, without label-free proposal crops of the train images")
    m.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    m.add_argument("--json", default=None, help="write the result here")
    m.add_argument("--work-dir", default=str(ROOT / "eval" / "work"), help="trained networks are cached here")
    m.add_argument("--retrain", action="store_true", help="train even when the work dir has a trained network")


if __name__ == "__main__":
    sys.exit(main())
