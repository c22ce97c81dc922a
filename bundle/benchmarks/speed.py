"""speed: seconds per tile of the whole-image workflow, by stage, for inference settings compared in one process
(``scripts/benchmark.py speed``).

Machines like this project's are noisy, so settings are compared as ratios within one run: the variants take turns
on every tile, ``repeats`` times, and the median per tile is kept.

* ``no_student_b32``: the workflow without its student (stain proposals, unrefined shapes: v0.7.0's workflow), the
  base of the ratios;
* ``eager_b32``: the shipped workflow, the encoder as the PyTorch module, 32 cells per call (the default on CPU);
* ``compiled_b32``: the encoder through ``torch.compile`` (``compile: true``), 32 cells per call; its one-off
  compilation is timed apart (``compile_seconds``);
* ``exported_b32``: the three networks exported with ``torch.export`` (``configs/exported.yaml``), 32 cells per call;
  the export is timed apart (``export_seconds``).

The variants give the same annotation up to float rounding; its counts and counting F1 against each tile's ground
truth are recorded too: the shipped models with the shipped bank, on the tiles given.
"""

from __future__ import annotations

import shutil
import tempfile
import time

import numpy as np
import torch
from tqdm.auto import tqdm

from ..data import DataError, list_dataset, load_sample
from ..patches import cell_centroids
from .metrics import counting_scores
from ..release import export_networks
from .protocol import ROOT, inference, machine

VARIANTS = {"no_student_b32": {"networks": "eager", "batch_size": 32, "student": False},
            "eager_b32": {"networks": "eager", "batch_size": 32, "student": True},
            "compiled_b32": {"networks": "compiled", "batch_size": 32, "student": True},
            "exported_b32": {"networks": "exported", "batch_size": 32, "student": True}}
STAGES = ("detect", "match", "register_warp", "refine", "stitch", "total")


def run(data_dir, organ=None, split: str = "test", repeats: int = 3, device: str = "cpu") -> dict:
    """Per-tile medians of every variant, with the compile time and the annotation's counting scores."""
    start = time.perf_counter()
    exported = tempfile.mkdtemp(prefix="diffkillr_exported_")
    export_networks(ROOT, exported, device)
    export_seconds = time.perf_counter() - start
    inferers, networks, setup_seconds = {}, {}, {}
    for kind in ("eager", "compiled", "exported"):
        inferer, networks[kind] = inference(ROOT / "models" / "archetype_bank.pt", device,
                                            exported=exported if kind == "exported" else None)
        inferer.compile = kind == "compiled"
        start = time.perf_counter()
        inferer.setup()  # with compile, the first call of the encoder (the bank's archetypes) compiles it
        setup_seconds[kind] = time.perf_counter() - start
        inferers[kind] = inferer
    shutil.rmtree(exported)  # read whole when the networks were built
    compile_seconds = setup_seconds["compiled"] - setup_seconds["eager"]
    samples = list_dataset(data_dir, split=split, organ=organ)
    if not samples:
        raise DataError(f"{data_dir}: no {split} images" + (f" of organ {organ}" if organ else ""))
    results, counting = {name: [] for name in VARIANTS}, []
    for sample in tqdm(samples, desc="tiles", unit="tile"):
        image, labels = load_sample(sample)
        runs = {name: [] for name in VARIANTS}
        for _ in range(repeats):
            for name, variant in VARIANTS.items():
                inferer, network = inferers[variant["networks"]], networks[variant["networks"]]
                inferer.batch_size = variant["batch_size"]
                if not variant["student"]:
                    inferer = inferer.with_student(None)
                start = time.perf_counter()
                annotation = inferer.annotate(image, network)
                runs[name].append({"total": time.perf_counter() - start, "refine": 0.0, **annotation.seconds})
        for name, r in runs.items():
            median = {k: float(np.median([x[k] for x in r])) for k in r[0]}
            # every proposal is matched and registered; stitching then merges duplicates into the final cells
            results[name].append({"image_id": sample.image_id, "registered": annotation.n_proposals,
                                  "cells": len(annotation.cells["id"]), **median})
        found = np.stack([annotation.cells["centroid_row"], annotation.cells["centroid_col"]], 1)
        counting.append({"image_id": sample.image_id, **counting_scores(found, cell_centroids(labels)[1])})
    return {"organ": organ, "device": device, "threads": torch.get_num_threads(), "repeats": repeats,
            "compile_seconds": compile_seconds, "export_seconds": export_seconds, "machine": machine(), "tiles": results,
            "counting": counting}


def print_summary(result: dict) -> None:
    base = next(iter(VARIANTS))
    tiles = result["tiles"]
    print(f"\n{len(tiles[base])} tiles x {result['repeats']} repeats, device {result['device']}, {result['threads']} "
          f"threads; seconds per tile (mean of per-tile medians); compiling the encoder took "
          f"{result['compile_seconds']:.1f} s, exporting the networks {result['export_seconds']:.1f} s")
    print(f"{'variant':<14}" + "".join(f"{s:>15}" for s in STAGES) + f"{'vs ' + base:>12}")
    for name, rows in tiles.items():
        means = {s: np.mean([t[s] for t in rows]) for s in STAGES}
        ratio = np.mean([t["total"] / b["total"] for t, b in zip(rows, tiles[base])])
        print(f"{name:<14}" + "".join(f"{means[s]:>15.2f}" for s in STAGES) + f"{ratio:>12.2f}")
    for c in result["counting"]:
        print(f"{c['image_id']}: {c['n_detected']} cells for {c['n_truth']} annotated nuclei, counting F1 {c['f1']:.3f} "
              f"(P {c['precision']:.3f}, R {c['recall']:.3f})")
