#!/usr/bin/env python
"""Benchmarks on any dataset folder (layout: ``bundle.data.list_dataset``): the protocols of ``bundle.benchmarks``.

    python scripts/benchmark.py annotate --train-dir DATA --test-dir DATA --organ Kidney --json eval/annotate_kidney.json

Subcommands, each the protocol of a module of ``bundle.benchmarks``: ``annotate`` (``whole_image``: whole test images,
ours against the baselines), ``matching`` (DiffeoInvariantNet, the paper's Table I), ``registration`` (DiffeoMappingNet
against demons and ANTs, and on synthetic shapes), ``speed`` (inference settings in one process), ``serve``
(``serve_latency``: the MONAI Label app against the workflow it serves), ``mosaic`` (large images region by region
against their tiles), ``reliability`` (the main job killed and resumed; the app under concurrent requests),
``tune-baselines`` (``tuning``: the label-free baselines' parameters), ``validate`` (``validation``: a self-training
recipe on train images held out of it) and ``sizes`` (how large the nuclei are). Trained networks are kept under
``--work-dir`` per (organ, fraction, seed) and reused unless ``--retrain``."""

import argparse
import sys
from pathlib import Path

import torch

from bundle.benchmarks import (matching, mosaic, registration, reliability, serve_latency, sizes, speed, tuning,
                               validation, whole_image)
from bundle.benchmarks.protocol import ROOT, Setting, write_json
from bundle.data import DataError


def setting_of(args) -> Setting:
    return Setting(train_dir=Path(args.train_dir), test_dir=Path(args.test_dir), organ=args.organ,
                   fraction=args.fraction, per_organ=args.per_organ, device=args.device, work_dir=Path(args.work_dir),
                   retrain=args.retrain, test_organs=tuple(getattr(args, "test_organs", None) or ()))


def seeds_of(args) -> list[int]:
    return [int(s) for s in args.seeds.split(",")] if args.seeds else [args.seed]


def invariant_training(args) -> dict:
    """Overrides of the invariant training config for a benchmark run (its defaults otherwise)."""
    # with unlabelled: label-free proposal crops of the same train images (pixels only, no annotation)
    unlabelled = {"dataset_dir": str(args.train_dir), "unlabelled_organ": args.organ} if args.unlabelled else {}
    return {"train#trainer#max_epochs": args.epochs, "n_views": args.train_views, **unlabelled}


def mapping_training(args) -> dict:
    return {"train#trainer#max_epochs": args.mapping_epochs, "backbone": args.backbone, "label_weight": args.label_weight,
            "similarity": args.similarity}


def run(args) -> dict:
    simple = {"sizes": (sizes, ("data_dir",)), "tune-baselines": (tuning, ("data_dir",)),
              "mosaic": (mosaic, ("data_dir", "organ", "split", "device")),
              "speed": (speed, ("data_dir", "organ", "split", "repeats", "device")),
              "serve": (serve_latency, ("data_dir", "organ", "split", "repeats", "device")),
              "reliability": (reliability, ("n_kills", "requests_total")),
              "validate": (validation, ("data_dir", "seeds", "folds", "device", "work_dir"))}
    if args.command in simple:
        module, options = simple[args.command]
        result = module.run(**{k: getattr(args, k) for k in options})
        getattr(module, "print_summary", lambda r: None)(result)
        return result
    if args.command == "annotate":
        result = whole_image.run(setting_of(args), seeds_of(args), args.unet_iterations, args.methods)
        whole_image.print_summary(result)
    elif args.command == "matching":
        result = matching.summarise([
            matching.run_seed(setting_of(args), seed, args.views, args.gallery_size, args.checkpoint,
                              invariant_training(args))
            for seed in seeds_of(args)])
        matching.print_table(result)
    else:
        result = registration.summarise([
            registration.run_seed(setting_of(args), seed, args.max_pairs, args.synthetic_pairs, args.checkpoint,
                                  args.mapping_checkpoint, invariant_training(args), mapping_training(args))
            for seed in seeds_of(args)])
        registration.print_summary(result)
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("annotate", help="whole test images, ours and baselines: counting, segmentation, orientation")
    m = sub.add_parser("matching", help="DiffeoInvariantNet matching table (paper Table I)")
    r = sub.add_parser("registration", help="DiffeoMappingNet registration table and the synthetic-shape check")
    s = sub.add_parser("speed", help="seconds per tile by stage for inference settings, compared in one process")
    t = sub.add_parser("tune-baselines", help="the label-free baselines' parameters from grids on the train tiles")
    z = sub.add_parser("sizes", help="the largest extent of every annotated nucleus")
    x = sub.add_parser("mosaic", help="mosaics of tiles as large images: cells, time, memory and seams against the tiles")
    v = sub.add_parser("serve", help="the MONAI Label app's /infer and /train against the workflow, in one session")
    y = sub.add_parser("reliability", help="the main job killed at random moments; the app under concurrent requests")
    w = sub.add_parser("validate", help="a self-trained student and the workflow on train images held out of it")
    w.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",")], default=[0, 1], help="self-training seeds")
    w.add_argument("--folds", type=lambda v: [int(x) for x in v.split(",")], default=[0], help="k: hold out k-th images")
    y.add_argument("--kills", dest="n_kills", type=int, default=20, help="SIGKILLs, each at a random moment of a run")
    y.add_argument("--requests", dest="requests_total", type=int, default=50, help="/infer requests sent at once")
    for p in (a, m, r, w):
        p.add_argument("--work-dir", default=str(ROOT / "eval" / "work"), help="trained networks are cached here")
    for p in (a, m, r):
        p.add_argument("--train-dir", required=True, help="dataset folder whose train rows give the bank")
        p.add_argument("--test-dir", required=True, help="dataset folder whose test rows are scored")
        p.add_argument("--organ", default=None, help="only this organ (case-insensitive)")
        p.add_argument("--fraction", type=float, default=0.1, help="share of train cells in the bank")
        p.add_argument("--per-organ", action="store_true", help="draw the fraction within every organ")
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2, for mean ± sd")
        p.add_argument("--retrain", action="store_true", help="train even when the work dir has a trained network")
    for p in (m, r):
        p.add_argument("--checkpoint", default=None, help="a trained DiffeoInvariantNet; else train")
        p.add_argument("--epochs", type=int, default=25, help="DiffeoInvariantNet epochs when training")
        p.add_argument("--train-views", type=int, default=2, help="views per cell in contrastive training")
        p.add_argument("--no-unlabelled", dest="unlabelled", action="store_false",
                       help="train on the bank cells only, without label-free proposal crops of the train images")
    m.add_argument("--views", type=int, default=2, help="query views per held-out cell")
    m.add_argument("--gallery-size", default=None, help="also against galleries of this many test cells ('bank')")
    r.add_argument("--mapping-checkpoint", default=None, help="a trained DiffeoMappingNet; else train")
    r.add_argument("--mapping-epochs", type=int, default=100, help="DiffeoMappingNet epochs when training")
    r.add_argument("--backbone", default="voxelmorph", choices=["voxelmorph", "localnet"])
    r.add_argument("--similarity", default="lncc", choices=["lncc", "mse"])
    r.add_argument("--label-weight", type=float, default=1.0, help="weight of the Dice label term (0: ablation)")
    r.add_argument("--max-pairs", type=int, default=300, help="test cells per seed (demons is the slow row)")
    r.add_argument("--synthetic-pairs", type=int, default=200)
    for p in (a, r):  # e.g. organs no bank cell came from
        p.add_argument("--test-organs", type=lambda v: v.split(","), help="score these organs' test images (a,b,...)")
    a.add_argument("--methods", type=lambda v: tuple(v.split(",")), default=whole_image.METHODS,
                   help="comma-separated subset of the methods (default: all)")
    a.add_argument("--unet-iterations", type=int, default=None, help="training steps of the BasicUNet baseline")
    for p in (s, t, z, v, x, w):
        p.add_argument("--data-dir", required=True, help="dataset folder")
    for p in (s, v, x):
        p.add_argument("--organ", default=None)
        p.add_argument("--split", default="test")
    for p in (s, v):
        p.add_argument("--repeats", type=int, default=3)
    for p in (a, m, r, s, v, x, w):
        p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    for p in (a, m, r, s, t, z, v, x, y, w):
        p.add_argument("--json", default=None, help="write the result here")
    args = parser.parse_args(argv)
    try:
        result = run(args)
    except DataError as err:
        raise SystemExit(f"error: {err}") from None
    if args.json:
        write_json(result, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
