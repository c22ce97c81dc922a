"""serving: the bundle as a MONAI Label app, for QuPath (the app itself is ``monailabel_app/main.py``).

Three tasks on MONAI Label's public classes, sharing one ``Annotator`` (the inference config's workflow, loaded once):

* ``AnnotateCells`` (``/infer/diffkillr``): annotates one image of the studies folder, or the region QuPath sends.
  QuPath asks for ``output=asap`` and gets one polygon per cell; otherwise the reply is the instance label map as a
  TIFF, rows first, as the CLI writes it. The JSON part lists every cell with its measurements.
* ``LearnFromCorrections`` (``/train/diffkillr``): DiffKillR's promise made interactive. Every cell of every label
  a user submitted (``PUT /datastore/label``) becomes an archetype. The bank grows, the stain proposals are
  recalibrated on the user's cells, and the next ``/infer`` uses the new bank without a restart. Asked with
  ``{"fine_tune": true}``, both networks are then fine-tuned from the app's current weights on the users' cells
  (``fine_tune``), and the next ``/infer`` uses those weights.
* ``MostUncertainImage`` (``/activelearning/most_uncertain``): the unlabelled image whose cells the workflow is least
  sure of (their mean ``uncertainty``), the one where a correction teaches the most.

The app serves its own bank (``<studies>/diffkillr/bank.pt``), a copy of the shipped one grown by the corrections,
and its own fine-tuned weights (``<studies>/diffkillr/invariant.pt``, ``mapping.pt``) once a ``/train`` made them,
so the shipped models never change. MONAI Label runs each ``/train`` in a separate process, so the annotator re-reads
the bank and the weights whenever their files change instead of sharing memory with the trainer.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from monai.bundle import ConfigParser
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask

from .bank import concatenate, extract_cells, load_bank, save_bank, take
from .checkpoint import load_weights
from .data import DataError, read_image, read_image_and_opacity, read_instances, written_atomically
from .detect import calibrate_proposals
from .match import unlike_the_bank
from .outputs import NUCLEUS, cell_records, write_asap_xml, write_label_tiff
from .stitch import Annotation, with_corrections

__all__ = ["DiffKillRApp", "Annotator", "AnnotateCells", "LearnFromCorrections", "MostUncertainImage", "app_bank",
           "app_weights", "grown_bank", "fine_tune", "running_server", "train_and_wait"]

# the networks the app can fine-tune, by their training overlay's name, and their shipped weights in models/
NETWORKS = {"invariant": "invariant.pt", "mapping": "model.pt"}


def app_bank(bundle_root, studies) -> Path:
    """The bank the app serves, ``<studies>/diffkillr/bank.pt``; on first use a copy of the shipped bank."""
    path = Path(studies) / "diffkillr" / "bank.pt"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        with written_atomically(path) as (tmp,):
            shutil.copyfile(Path(bundle_root) / "models" / "archetype_bank.pt", tmp)
    return path


def app_weights(bundle_root, studies) -> dict[str, Path]:
    """The weights the app annotates with, per network (``NETWORKS``): its fine-tuned copy in ``<studies>/diffkillr``
    once ``/train`` made one, else the shipped file."""
    folder = Path(studies) / "diffkillr"
    return {net: folder / f"{net}.pt" if (folder / f"{net}.pt").is_file() else Path(bundle_root) / "models" / shipped
            for net, shipped in NETWORKS.items()}


class Annotator:
    """The inference config's workflow (``configs/inference.yaml``: its ``inferer`` and ``network_def``) on one image
    at a time, with the app's bank and weights (``app_bank``, ``app_weights``), which may change between calls: new
    files (by modification time and size) are read before the next image. Thread-safe: MONAI Label may serve
    requests concurrently, and the workflow is one at a time."""

    def __init__(self, bundle_root, studies, device: str = "cpu"):
        torch.set_flush_denormal(True)  # as the inference config's initialize does: denormals slow the CPU down
        self.bundle_root, self.studies = Path(bundle_root), Path(studies)
        self.bank_path = app_bank(bundle_root, studies)
        self.device = torch.device(device)
        self.parser = ConfigParser(ConfigParser.load_config_file(str(self.bundle_root / "configs" / "inference.yaml")))
        self.parser.update({"bundle_root": str(bundle_root), "device": f"$torch.device('{self.device}')",
                            "bank_path": str(self.bank_path)})
        self.inferer, self.network, self.weights, self.stamped = None, None, None, None
        self.lock = threading.Lock()

    def stamp(self) -> list:
        """What the annotation depends on, as files: the bank's and each network's (path, modification time, size)."""
        files = [self.bank_path, *app_weights(self.bundle_root, self.studies).values()]
        return [[str(f), f.stat().st_mtime_ns, f.stat().st_size] for f in files]

    def current(self):
        """The workflow's inferer on the bank and weights as they are now."""
        stamp = self.stamp()
        if stamp != self.stamped:
            weights = app_weights(self.bundle_root, self.studies)
            self.parser["invariant_path"] = str(weights["invariant"])
            # a fresh inferer and network: the bank and the encoder are read in setup
            inferer = self.parser.get_parsed_content("inferer", lazy=False)
            inferer.setup()
            self.network = load_weights(self.parser.get_parsed_content("network_def", lazy=False),
                                        weights["mapping"]).to(self.device).eval()
            self.inferer, self.weights, self.stamped = inferer, weights, stamp
        return self.inferer

    @torch.no_grad()
    def __call__(self, image: torch.Tensor, opaque=None) -> tuple[Annotation, dict]:
        """The annotation of an image (C, H, W), and what made it: ``archetypes`` (how many the bank has) and
        ``weights`` (the weight file of each network)."""
        with self.lock:
            inferer = self.current()
            made_by = {"archetypes": len(inferer.archetype_ids),
                       "weights": {net: str(path) for net, path in self.weights.items()}}
            return inferer.annotate(image.to(self.device), self.network, opaque=opaque), made_by


def region_of(request: dict, shape) -> tuple[int, int, int, int]:
    """(x, y, w, h) of the region a request asks for, in pixels of the image; QuPath sends ``location`` [x, y] and
    ``size`` [w, h], with a size of [0, 0] (or none) for the whole image."""
    height, width = shape
    x, y = (int(v) for v in (request.get("location") or (0, 0)))
    w, h = (int(v) for v in (request.get("size") or (0, 0)))
    if w <= 0 or h <= 0:
        return 0, 0, width, height
    if not (0 <= x < width and 0 <= y < height):
        raise DataError(f"region at x={x}, y={y} lies outside the {width} x {height} image")
    return x, y, min(w, width - x), min(h, height - y)


class AnnotateCells(InferTask):
    """``/infer/diffkillr``: the whole workflow on an image (or QuPath's region of it).

    Request: ``image`` (the path MONAI Label resolved from the image id), optional ``location`` [x, y] and ``size``
    [w, h], and ``output``: ``"asap"`` for QuPath's polygons, anything else for the label map. Reply: a fresh file
    (MONAI Label deletes it once sent) and a JSON with ``cells`` (``cell_records``), ``count``, ``archetypes`` (how
    many the bank has now), ``weights`` (the weight file of each network), the region, and ``latencies``.

    ``corrections(image_id)`` gives the label a user submitted for the image (a path), or None. Its cells replace what
    the workflow finds under them (``stitch.with_corrections``): annotating an image again never undoes a correction.
    """

    def __init__(self, annotator: Annotator, corrections=None):
        super().__init__(type=InferType.SEGMENTATION, labels=[NUCLEUS], dimension=2,
                         description="DiffKillR: every nucleus, matched to an archetype of the bank and registered "
                                     "onto it; masks, orientations and per-cell uncertainty")
        self.annotator = annotator
        self.corrections = corrections or (lambda image_id: None)

    def info(self) -> dict:
        return {**super().info(), "pathology": True, "nuclick": False}

    def is_valid(self) -> bool:
        return True

    def __call__(self, request: dict):
        start = time.perf_counter()
        path = request["image"]
        if not isinstance(path, str):
            raise DataError("the image must be a file of the studies folder or an uploaded file")
        image, opaque = read_image_and_opacity(path)
        x, y, w, h = region_of(request, image.shape[1:])
        annotation, made_by = self.annotator(image[:, y:y + h, x:x + w],
                                             None if opaque is None else opaque[y:y + h, x:x + w])
        corrected = self.corrections(request.get("image_id"))
        if corrected:  # the cells a user drew on this image stay as drawn
            corrected = read_instances(corrected, shape=tuple(image.shape[1:]))
            annotation = with_corrections(annotation, corrected[y:y + h, x:x + w])
        infer_seconds = time.perf_counter() - start
        cells = cell_records(annotation, offset=(x, y))
        if request.get("output") in ("asap", "dsa"):
            result = tempfile.NamedTemporaryFile(suffix=".xml", delete=False).name
            write_asap_xml(cells, result, (x, y, w, h))
        else:
            result = tempfile.NamedTemporaryFile(suffix=".tif", delete=False).name
            write_label_tiff(annotation.labels, result)
        total = time.perf_counter() - start
        return result, {
            "count": len(cells),
            # set when the cells look like none of the archetypes (noise, padding, another stain or magnification)
            "unlike_the_bank": unlike_the_bank(annotation.cells["match_distance"]),
            # the bank's archetypes and the weight files (shipped, or fine-tuned from corrections) it ran with
            **made_by,
            "location": [x, y],
            "size": [w, h],
            "cells": cells,
            "latencies": {"pre": 0.0, "infer": round(infer_seconds, 3), "post": round(total - infer_seconds, 3),
                          "total": round(total, 3), "transform": None},
        }


def corrected_cells(datastore) -> list[dict]:
    """Every cell of every label the users submitted (tag ``final``), read from the datastore: one cell dictionary
    (``bank.extract_cells``, with ``image_ids`` and ``organs``) per corrected image."""
    per_image = []
    for image_id in sorted(datastore.get_labeled_images()):
        image = read_image(datastore.get_image_uri(image_id))
        labels = read_instances(datastore.get_label_uri(image_id, "final"), shape=tuple(image.shape[1:]))
        cells = extract_cells(image, labels)
        n = len(cells["cell_ids"])
        cells["image_ids"], cells["organs"] = [image_id] * n, [""] * n
        per_image.append(cells)
    return per_image


def grown_bank(shipped: dict, corrections: list[dict], studies) -> dict:
    """The shipped bank with the users' cells added. A corrected image's own cells replace any the bank held from
    it (a label submitted again replaces, never duplicates). The stain proposals are recalibrated on the users' cells,
    in their own images: they are what this user's tissue looks like."""
    channels = shipped["images"].shape[1]
    for cells in corrections:
        if len(cells["cell_ids"]) and cells["images"].shape[1] != channels:
            raise DataError(f"{cells['image_ids'][0]}: a corrected image of {cells['images'].shape[1]} channel(s) "
                            f"cannot join a bank of {channels}-channel archetypes")
    corrected_ids = {i for cells in corrections for i in cells["image_ids"]}
    kept = [i for i, image_id in enumerate(shipped["image_ids"]) if image_id not in corrected_ids]
    new = concatenate([c for c in corrections if len(c["cell_ids"])]) if corrections else {}
    parts = [take(shipped, kept)] + ([new] if new.get("image_ids") else [])
    bank = concatenate(parts)
    bank["meta"] = dict(shipped["meta"])
    n_new = len(new.get("image_ids", []))
    bank["meta"]["corrections"] = {"images": sorted(corrected_ids), "cells": n_new}
    if n_new:
        user = {**new, "meta": {}}
        calibration = calibrate_proposals(user, studies, progress=False)
        bank["meta"]["proposals"] = calibration["params"]
        bank["meta"]["proposals_found"] = calibration["found"]
    return bank


# fine-tuning draws as many of the bank's other cells as the users drew, and at least this many: a few dozen cells
# alone would pull both networks towards them and away from the tissue they were trained on
FINE_TUNE_OTHERS = 64


def fine_tune(bundle_root, studies, users: dict, bank: dict, epochs: int, device: str = "cpu") -> dict:
    """Fine-tune both networks (``NETWORKS``) from the app's current weights (``app_weights``) on the users' cells
    ``users`` and a seeded draw of as many other cells of ``bank`` (at least ``FINE_TUNE_OTHERS``), for ``epochs``
    epochs each, with the training configs' own recipe (``configs/train.yaml`` and the network's overlay; validation
    every epoch on the same cells keeps the best). The results become the app's weights, written atomically; the
    runs stay in ``<studies>/diffkillr/runs``. Returns, per network, the weights it started from and its seconds."""
    from monai.bundle import ConfigWorkflow

    folder = Path(studies) / "diffkillr"
    if not len(users.get("image_ids", [])):
        raise DataError("no corrected cell to fine-tune on: submit a label (PUT /datastore/label) first")
    users_ids = set(users["image_ids"])
    others = [i for i, image_id in enumerate(bank["image_ids"]) if image_id not in users_ids]
    n = min(len(others), max(len(users["image_ids"]), FINE_TUNE_OTHERS))
    drawn = np.sort(np.random.default_rng(0).choice(len(others), size=n, replace=False)) if n else []
    cells = concatenate([{k: v for k, v in users.items() if k != "meta"}, take(bank, [others[i] for i in drawn])])
    cells["meta"] = dict(bank["meta"])
    cells_path = save_bank(cells, folder / "fine_tune_cells.pt")
    started_from = app_weights(bundle_root, studies)
    done = {}
    for net in NETWORKS:
        start = time.perf_counter()
        run = folder / "runs" / net
        shutil.rmtree(run, ignore_errors=True)
        workflow = ConfigWorkflow(
            config_file=[str(Path(bundle_root) / "configs" / name) for name in ("train.yaml", f"train_{net}.yaml")],
            workflow_type=None, bundle_root=str(bundle_root), bank_path=str(cells_path),
            pretrained=str(started_from[net]), ckpt_dir=str(run), resume=False, device=f"$torch.device('{device}')",
            val_interval=1, **{"train#trainer#max_epochs": int(epochs)})
        workflow.initialize()
        workflow.run()
        workflow.finalize()
        with written_atomically(folder / f"{net}.pt") as (tmp,):
            shutil.copyfile(run / "model.pt", tmp)
        done[net] = {"from": str(started_from[net]), "seconds": round(time.perf_counter() - start, 3)}
    return {"cells": len(cells["image_ids"]), "users_cells": len(users["image_ids"]), "epochs": int(epochs),
            "networks": done}


class LearnFromCorrections(TrainTask):
    """``/train/diffkillr``: every submitted cell becomes an archetype of the app's bank (``grown_bank``), written
    atomically; the annotator reads it before its next image. With ``{"fine_tune": true}`` in the request (and
    ``"epochs"``, default 2), both networks are then fine-tuned on the users' cells (``fine_tune``). The self-trained
    student does not learn from the corrections."""

    def __init__(self, bundle_root, bank_path, studies, device: str = "cpu"):
        super().__init__("DiffKillR: add the corrected cells to the archetype bank; fine_tune: true also fine-tunes "
                         "both networks on them")
        self.bundle_root, self.bank_path, self.studies = Path(bundle_root), Path(bank_path), Path(studies)
        self.device = device

    def stats(self) -> dict:
        record = self.bank_path.with_suffix(".json")
        return json.loads(record.read_text()) if record.is_file() else {}

    def __call__(self, request: dict, datastore) -> dict:
        start = time.perf_counter()
        tune = str(request.get("fine_tune", False)).lower() in ("true", "1", "yes")  # JSON true, or a form's text
        epochs = request.get("epochs", 2)
        if tune and (isinstance(epochs, bool) or not str(epochs).isdigit() or int(epochs) < 1):
            raise DataError(f"epochs: must be a whole number of epochs, at least 1; got {epochs!r}")
        shipped = load_bank(self.bundle_root / "models" / "archetype_bank.pt")
        corrections = corrected_cells(datastore)
        bank = grown_bank(shipped, corrections, self.studies)
        save_bank(bank, self.bank_path)
        result = {"cells": len(bank["image_ids"]), "added": bank["meta"]["corrections"]["cells"],
                  "corrected_images": bank["meta"]["corrections"]["images"],
                  "seconds": round(time.perf_counter() - start, 3)}
        if tune:
            users = concatenate([c for c in corrections if len(c["cell_ids"])]) if corrections else {}
            result["fine_tuned"] = fine_tune(self.bundle_root, self.studies, users, shipped, int(epochs),
                                             self.device)
            result["seconds"] = round(time.perf_counter() - start, 3)
        with written_atomically(self.bank_path.with_suffix(".json")) as (tmp,):
            Path(tmp).write_text(json.dumps(result))
        return result


class MostUncertainImage(Strategy):
    """``/activelearning/most_uncertain``: the unlabelled image whose cells are, on average, the least sure
    (``uncertainty``: how far each registered archetype was from the image's own evidence). Each image is annotated
    once per bank and weights; the scores are kept in ``<studies>/diffkillr/uncertainty.json``."""

    def __init__(self, annotator: Annotator, studies):
        super().__init__("DiffKillR: the unlabelled image whose cells are most uncertain")
        self.annotator, self.record = annotator, Path(studies) / "diffkillr" / "uncertainty.json"

    def __call__(self, request: dict, datastore) -> dict:
        candidates = sorted(datastore.get_unlabeled_images())
        if not candidates:
            return {}
        scores = json.loads(self.record.read_text()) if self.record.is_file() else {}
        workflow = self.annotator.stamp()  # a new bank or new weights: every score again
        for image_id in candidates:
            path = Path(datastore.get_image_uri(image_id))
            stamp = [workflow, path.stat().st_mtime_ns]
            if scores.get(image_id, {}).get("stamp") != stamp:
                uncertainty = np.asarray(self.annotator(*read_image_and_opacity(path))[0].cells["uncertainty"],
                                         dtype=float)
                mean = float(np.nanmean(uncertainty)) if np.isfinite(uncertainty).any() else 0.0
                scores[image_id] = {"stamp": stamp, "uncertainty": mean, "cells": int(len(uncertainty))}
        with written_atomically(self.record) as (tmp,):
            Path(tmp).write_text(json.dumps(scores))
        chosen = max(candidates, key=lambda i: scores[i]["uncertainty"])
        return {"id": chosen, "uncertainty": scores[chosen]["uncertainty"], "cells": scores[chosen]["cells"]}


class DiffKillRApp(MONAILabelApp):
    """The MONAI Label app: ``monailabel start_server --app scripts/monailabel_app --studies <images>``.

    Settings (``--conf key value``): ``bundle_root`` (default: this repository), ``device`` (default: the first GPU,
    else the CPU)."""

    def __init__(self, app_dir, studies, conf):
        self.bundle_root = Path(conf.get("bundle_root") or Path(__file__).resolve().parents[1])
        self.device = conf.get("device") or ("cuda:0" if torch.cuda.is_available() else "cpu")
        self.annotator = Annotator(self.bundle_root, studies, self.device)
        self.bank_path = self.annotator.bank_path
        version = json.loads((self.bundle_root / "configs" / "metadata.json").read_text())["version"]
        super().__init__(app_dir=app_dir, studies=studies, conf=conf, name="DiffKillR", version=version,
                         description="Every nucleus from a few dozen annotated ones: archetype matching + registration")

    def init_infers(self) -> dict:
        return {"diffkillr": AnnotateCells(self.annotator, self.submitted_label)}

    def submitted_label(self, image_id) -> str | None:
        """The label a user submitted for an image of the studies folder (tag ``final``), or None."""
        if not isinstance(image_id, str) or Path(image_id).exists():  # an uploaded file, not one of the studies
            return None
        return self.datastore().get_label_uri(image_id, "final") or None

    def infer(self, request, datastore=None):
        # MONAI Label replaces the image id by its file's path: keep the id, which names the image's submitted label
        return super().infer({**request, "image_id": request.get("image")}, datastore)

    def init_trainers(self) -> dict:
        return {"diffkillr": LearnFromCorrections(self.bundle_root, self.bank_path, self.studies, self.device)}

    def init_strategies(self) -> dict:
        return {"most_uncertain": MostUncertainImage(self.annotator, self.studies)}

    def infer_wsi(self, request, datastore=None):
        # the task reads the requested region itself; MONAI Label's own path would tile .tif files through openslide
        return self.infer(request, datastore)


APP_DIR = Path(__file__).resolve().parents[1] / "scripts" / "monailabel_app"


class ServerURL(str):
    """A running server's base URL, and its process id (``pid``)."""

    pid: int


@contextmanager
def running_server(studies, log_path, device: str = "cpu", timeout: float = 240.0):
    """``monailabel start_server`` with this app on 127.0.0.1 and a free port, as a user starts it (for the tests
    and the benchmarks); yields its base URL (a ``ServerURL``), stops it on exit. Its output goes to ``log_path``."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "MONAI_LABEL_DATASTORE_AUTO_RELOAD": "false", "MONAI_LABEL_SESSIONS": "false"}
    log_path = Path(log_path)
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "monailabel.main", "start_server", "--app", str(APP_DIR), "--studies", str(studies),
             "-i", "127.0.0.1", "-p", str(port), "--conf", "device", device],
            stdout=log, stderr=subprocess.STDOUT, cwd=log_path.parent, env=env)
    url = ServerURL(f"http://127.0.0.1:{port}")
    url.pid = process.pid
    try:
        deadline = time.time() + timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"the MONAI Label server stopped:\n{log_path.read_text()[-3000:]}")
            if time.time() > deadline:
                raise RuntimeError(f"the MONAI Label server did not answer in {timeout:.0f} s:\n"
                                   f"{log_path.read_text()[-3000:]}")
            try:
                _request(f"{url}/info/", timeout=5)
                break
            except OSError:  # not listening yet
                time.sleep(1)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=60)


def _request(url: str, body: dict | None = None, timeout: float = 60.0):
    """GET ``url`` (POST ``body`` as JSON when given) and decode the JSON reply; HTTP errors raise."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as reply:
        return json.loads(reply.read() or b"null")


def train_and_wait(url: str, timeout: float = 600.0, body: dict | None = None) -> dict:
    """``POST /train/diffkillr`` as QuPath sends it (in the background, with ``body``), then the task polled until it
    ends."""
    _request(f"{url}/train/diffkillr", body=body or {}, timeout=60)
    deadline = time.time() + timeout
    while (task := _request(f"{url}/train/", timeout=30))["status"] in ("SUBMITTED", "RUNNING"):
        if time.time() > deadline:
            raise RuntimeError(f"training did not finish within {timeout:.0f} s")
        time.sleep(0.2)
    return task
