"""serve_latency: the MONAI Label app against the workflow it serves, on the same tiles in one session
(``scripts/benchmark.py serve``).

A real server (``bundle.serving.running_server``) on a studies folder of the given tiles. Per tile, ``repeats`` times
in turn: the workflow in this process (``ArchetypeInferer.annotate``: what the CLI spends per tile, without its file
writing), ``/infer/wsi`` with QuPath's request (``output=asap``), and ``/infer`` for the label map (``output=image``);
each request is timed from the client, HTTP, reading the image and writing the reply included. Then a user's
correction: one tile's annotated cells submitted as QuPath submits them, ``/train`` timed until its task is done (the
bank update, in MONAI Label's own training process), and the next ``/infer`` of that tile (which reads the new bank).
Then ``/train`` asked to fine-tune both networks on the correction (``serving.fine_tune``, its default epochs), timed
the same way. The other tiles are scored against their truth (counting F1, object Dice, AJI) with the shipped models,
after the bank update, and after the fine-tuning: what one corrected tile teaches about the others.
Last, QuPath's request for a region of the embedded sample, whose reply the model card draws (``qupath_figure``).
"""

from __future__ import annotations

import io
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile
import torch
from tqdm.auto import tqdm

from ..data import DataError, list_dataset, load_sample, read_image
from ..outputs import cell_geometries, write_asap_xml
from ..patches import cell_centroids
from .metrics import counting_scores, segmentation_scores
from .protocol import ROOT, inference, machine

# what QuPath's MONAI Label extension sends for an image of the studies folder (the whole image)
QUPATH_BODY = {"level": 0, "location": [0, 0], "size": [0, 0], "tile_size": [1024, 1024], "min_poly_area": 30,
               "params": {}}
SAMPLE = ROOT / "docs" / "sample" / "images"
# the rectangle a QuPath user draws on the embedded sample for the model card's figure: x, y, width, height
SAMPLE_REGION = (40, 60, 170, 130)


def run(data_dir, organ=None, split: str = "test", repeats: int = 3, device: str = "cpu") -> dict:
    import requests

    from ..serving import running_server, train_and_wait

    samples = list_dataset(data_dir, split=split, organ=organ)
    if not samples:
        raise DataError(f"{data_dir}: no {split} images" + (f" of organ {organ}" if organ else ""))
    torch.set_flush_denormal(True)  # as the CLI (the inference config's initialize) and the app do
    inferer, network = inference(ROOT / "models" / "archetype_bank.pt", device)
    inferer.setup()
    studies = Path(tempfile.mkdtemp(prefix="diffkillr_studies_"))
    try:
        for sample in samples:
            shutil.copy(sample.image_path, studies / sample.image_path.name)
        embedded = next(SAMPLE.iterdir())
        shutil.copy(embedded, studies / embedded.name)
        with running_server(studies, studies.parent / f"{studies.name}.log", device=device) as url:
            tiles = []
            for sample in tqdm(samples, desc="tiles", unit="tile"):
                image = read_image(sample.image_path)
                times = {"workflow": [], "infer_asap": [], "infer_image": []}
                for _ in range(repeats):
                    start = time.perf_counter()
                    with torch.no_grad():
                        inferer.annotate(image.to(device), network)
                    times["workflow"].append(time.perf_counter() - start)
                    for output, endpoint, body in (("asap", "infer/wsi", QUPATH_BODY), ("image", "infer", None)):
                        start = time.perf_counter()
                        reply = requests.post(f"{url}/{endpoint}/diffkillr?image={sample.image_id}&output={output}",
                                              json=body, timeout=600)
                        reply.raise_for_status()
                        times[f"infer_{output}"].append(time.perf_counter() - start)
                tiles.append({"image_id": sample.image_id, **{k: float(np.median(v)) for k, v in times.items()}})

            def scores() -> dict:
                """Counting F1, object Dice and AJI of the tiles but the corrected one, from the server's label maps."""
                rows = []
                for sample in samples[1:]:
                    reply = requests.post(f"{url}/infer/diffkillr?image={sample.image_id}&output=image", timeout=600)
                    reply.raise_for_status()
                    predicted = tifffile.imread(io.BytesIO(reply.content)).astype(np.int32)
                    truth = np.asarray(load_sample(sample)[1], np.int32)
                    found = counting_scores(cell_centroids(predicted)[1].reshape(-1, 2),
                                            cell_centroids(truth)[1].reshape(-1, 2))
                    segmented = segmentation_scores(predicted, truth)
                    rows.append([found["f1"], segmented["dice_obj"], segmented["aji"]])
                return dict(zip(("f1", "dice_obj", "aji"), np.mean(rows, 0).tolist())) if rows else {}

            other_tiles = {"shipped": scores()}
            corrected = samples[0]
            _, labels = load_sample(corrected)
            label = studies.parent / f"{studies.name}_label.xml"
            write_asap_xml([{"outlines": [piece[0] for piece in ([g["coordinates"]] if g["type"] == "Polygon"
                                                                 else g["coordinates"])]}
                            for g in cell_geometries(labels).values()], label, (0, 0, *labels.shape[::-1]))
            with open(label, "rb") as f:
                requests.put(f"{url}/datastore/label?image={corrected.image_id}&tag=final",
                             files={"label": (label.name, f, "application/xml")}, data={"params": "{}"},
                             timeout=60).raise_for_status()
            start = time.perf_counter()
            task = train_and_wait(url)
            train_seconds = time.perf_counter() - start
            start = time.perf_counter()
            reply = requests.post(f"{url}/infer/diffkillr?image={corrected.image_id}&output=json", timeout=600)
            reply.raise_for_status()
            next_infer = time.perf_counter() - start
            stats = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["diffkillr"]
            other_tiles["bank_updated"] = scores()
            start = time.perf_counter()
            tuned = train_and_wait(url, timeout=3600, body={"fine_tune": True})
            fine_tune_seconds = time.perf_counter() - start
            fine_tuned = requests.get(f"{url}/info/", timeout=30).json()["train_stats"]["diffkillr"]["fine_tuned"]
            other_tiles["fine_tuned"] = scores()
            x, y, w, h = SAMPLE_REGION
            answer = requests.post(f"{url}/infer/wsi/diffkillr?image={embedded.stem}&output=asap",
                                   json={**QUPATH_BODY, "location": [x, y], "size": [w, h]}, timeout=600)
            answer.raise_for_status()
    finally:
        shutil.rmtree(studies, ignore_errors=True)
    return {"organ": organ, "split": split, "repeats": repeats, "device": device, "threads": torch.get_num_threads(),
            "machine": machine(), "tiles": tiles,
            "correction": {"image_id": corrected.image_id, "cells": int(labels.max()), "status": task["status"],
                           "train_seconds": train_seconds, "bank_update_seconds": stats.get("seconds"),
                           "archetypes_after": reply.json()["archetypes"], "next_infer_seconds": next_infer,
                           "fine_tune_status": tuned["status"], "fine_tune_seconds": fine_tune_seconds,
                           "fine_tuned": fine_tuned},
            "other_tiles": other_tiles,
            "qupath": {"image": embedded.relative_to(ROOT).as_posix(), "region": list(SAMPLE_REGION),
                       "polygons": qupath_polygons(answer.content)}}


def qupath_polygons(asap: bytes) -> list[list[list[float]]]:
    """The polygons QuPath's extension makes of an ASAP reply: per ``<Annotation>``, the X, Y of its coordinates."""
    return [[[float(c.get("X")), float(c.get("Y"))] for c in annotation.iter("Coordinate")]
            for annotation in ET.fromstring(asap).iter("Annotation")]


def print_summary(result: dict) -> None:
    tiles = result["tiles"]
    print(f"\n{len(tiles)} tiles x {result['repeats']} repeats, {result['threads']} threads; seconds per tile "
          "(mean of per-tile medians) and ratio to the in-process workflow")
    for key in ("workflow", "infer_asap", "infer_image"):
        mean = np.mean([t[key] for t in tiles])
        ratio = np.mean([t[key] / t["workflow"] for t in tiles])
        print(f"{key:<12}{mean:>8.2f} s{ratio:>8.2f}x")
    c = result["correction"]
    print(f"correction of {c['image_id']} ({c['cells']} cells): /train {c['train_seconds']:.1f} s until done "
          f"(bank update {c['bank_update_seconds']} s inside it), next /infer {c['next_infer_seconds']:.2f} s, "
          f"{c['archetypes_after']} archetypes; fine-tuning {c['fine_tune_status']} in {c['fine_tune_seconds']:.1f} s")
    for stage, score in result["other_tiles"].items():
        print(f"other tiles, {stage}: " + ", ".join(f"{k} {v:.3f}" for k, v in score.items()))
