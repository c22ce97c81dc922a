"""reliability: the main job killed at random moments, and the MONAI Label app under concurrent requests
(``scripts/benchmark.py reliability``; the tests run both at a smaller scale).

**Kills.** A folder of images (the embedded sample turned and mirrored: eight different images) is annotated once
without interruption, for reference and for its duration. Then the same command with ``--resume true`` is started
again and again, each time killed with SIGKILL at a random moment of that duration (when fewer than two files are
left to write, the folder starts over). After every kill each visible
file of the output folder is read back whole (label TIFF, GeoJSON, CSV, PNG). Last, one more ``--resume true`` run
finishes the folder; its outputs must equal the reference run's, and no hidden temporary folder may be left.

**Concurrent requests.** A real server (``serving.running_server``) on a small studies folder; every image is asked for
once in turn (the serial answers), then ``requests`` ``/infer`` calls are sent at once from as many threads. Each
concurrent answer must equal the serial one for its image; the server's peak resident memory (``VmHWM``) is read
before and after.
"""

from __future__ import annotations

import csv
import io
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from ..data import list_dataset, load_sample
from .protocol import ROOT, machine

SAMPLE = ROOT / "docs" / "sample"


def sample_variants(folder: Path, n: int = 8) -> list[str]:
    """``n`` (at most 8) images in ``folder``: the embedded sample under the dihedral group (turned, mirrored), each a
    different image to annotate. Returns their ids."""
    image, _ = load_sample(list_dataset(SAMPLE)[0])
    rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    ids = []
    for k in range(min(n, 8)):
        turned = np.rot90(rgb, k % 4)
        turned = turned[:, ::-1] if k >= 4 else turned
        ids.append(f"variant{k}")
        Image.fromarray(np.ascontiguousarray(turned)).save(folder / f"variant{k}.png")
    return ids


def main_job(dataset_dir: Path, output_dir: Path, resume: bool) -> list[str]:
    """The main job's command line (``configs/inference.yaml``) on a folder."""
    return [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "inference.yaml"),
            "--bundle_root", str(ROOT), "--dataset_dir", str(dataset_dir), "--output_dir", str(output_dir),
            "--resume", str(resume)]


def unreadable_files(folder: Path) -> list[str]:
    """The visible files of an output folder that do not read back whole, each with why."""
    bad = []
    for path in sorted(p for p in folder.iterdir() if not p.name.startswith(".")):
        try:
            if path.suffix == ".tif":
                tifffile.imread(path)
            elif path.suffix == ".geojson":
                json.loads(path.read_text())["features"]
            elif path.suffix == ".csv":
                with open(path, newline="") as handle:
                    rows = list(csv.reader(handle))
                if not rows or any(len(row) != len(rows[0]) for row in rows):
                    raise ValueError("ragged rows")
            elif path.suffix == ".png":
                with Image.open(path) as picture:
                    picture.load()
            else:
                raise ValueError("not an output of the bundle")
        except Exception as err:  # anything that does not read back is a partial or foreign file
            bad.append(f"{path.name}: {type(err).__name__}: {err}")
    return bad


def _same_outputs(a: Path, b: Path) -> list[str]:
    """The output files in which folders ``a`` and ``b`` differ (label maps by pixels, the rest by bytes, the overlay
    PNGs by pixels)."""
    names = sorted(p.name for p in a.iterdir() if not p.name.startswith("."))
    other = sorted(p.name for p in b.iterdir() if not p.name.startswith("."))
    if names != other:
        return [f"files: {sorted(set(names) ^ set(other))}"]
    differ = []
    for name in names:
        if name.endswith(".tif"):
            same = np.array_equal(tifffile.imread(a / name), tifffile.imread(b / name))
        elif name.endswith(".png"):
            same = np.array_equal(np.asarray(Image.open(a / name)), np.asarray(Image.open(b / name)))
        else:
            same = (a / name).read_bytes() == (b / name).read_bytes()
        if not same:
            differ.append(name)
    return differ


def _visible(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) if folder.is_dir() else []


def kills(n_kills: int = 20, n_images: int = 8, seed: int = 0, work: Path | None = None,
          on_files: bool = False) -> dict:
    """The kill benchmark (module docstring): ``n_kills`` SIGKILLs, each at a seeded random moment of the
    uninterrupted run's duration or, ``on_files``, the moment a random number of new output files has appeared (some
    images done and others not, whatever the machine's speed: what the tests use). Returns per kill its
    moment, the outputs it left and the files that did not read back, and the final comparison."""
    own = work is None
    work = Path(work or tempfile.mkdtemp(prefix="diffkillr_kills_"))
    images = work / "images"
    sample_variants(images, n_images)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    start = time.perf_counter()
    subprocess.run(main_job(images, work / "reference", False), check=True, capture_output=True, env=env)
    duration = time.perf_counter() - start
    expected = len(_visible(work / "reference"))
    out = work / "killed"
    rng = random.Random(seed)
    records = []
    # a run that ends before its moment was not killed: draw again, until n_kills runs were
    while sum(not r["finished_first"] for r in records) < n_kills and len(records) < 3 * n_kills:
        if expected - len(_visible(out)) < 2:  # nothing left to kill it in: start the folder over
            shutil.rmtree(out, ignore_errors=True)
        before = len(_visible(out))
        moment = rng.uniform(0.0, duration)
        new_files = rng.randint(1, expected - before - 1)
        process = subprocess.Popen(main_job(images, out, True), stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL, env=env)
        began = time.perf_counter()
        while process.poll() is None:
            now = time.perf_counter() - began
            if (len(_visible(out)) >= before + new_files) if on_files else now >= moment:
                process.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        finished = process.wait() == 0
        records.append({"moment_s": time.perf_counter() - began, "finished_first": finished,
                        "files_before": before, "files": len(_visible(out)),
                        "unreadable": unreadable_files(out) if out.is_dir() else [],
                        "hidden": sorted(p.name for p in out.glob(".*")) if out.is_dir() else []})
    final = subprocess.run(main_job(images, out, True), capture_output=True, text=True, env=env)
    result = {"n_kills": n_kills, "n_images": n_images, "seed": seed, "on_files": on_files,
              "reference_seconds": duration, "kills": records, "final_returncode": final.returncode,
              "final_stderr": final.stderr[-2000:],
              "differs_from_reference": _same_outputs(work / "reference", out) if final.returncode == 0 else None,
              "hidden_left": sorted(p.name for p in out.glob(".*")),
              "partial_files": sum(len(r["unreadable"]) for r in records), "machine": machine()}
    if own:
        shutil.rmtree(work, ignore_errors=True)
    return result


def peak_memory_mb(pid: int) -> float | None:
    """A process's peak resident memory (``VmHWM``), in MB; None where /proc does not say."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def concurrent_infer(url: str, image_ids: list[str], requests_total: int = 50, server_pid: int | None = None) -> dict:
    """``requests_total`` ``/infer`` calls sent at once (one thread each) against the serial answers (module
    docstring). Returns failures, mismatches, seconds and the server's peak memory before and after."""
    import requests

    def ask(image_id: str) -> np.ndarray:
        reply = requests.post(f"{url}/infer/diffkillr?image={image_id}&output=image", timeout=900)
        reply.raise_for_status()
        return tifffile.imread(io.BytesIO(reply.content))

    start = time.perf_counter()
    serial = {image_id: ask(image_id) for image_id in image_ids}
    serial_seconds = time.perf_counter() - start
    before = peak_memory_mb(server_pid) if server_pid else None
    asked = [image_ids[i % len(image_ids)] for i in range(requests_total)]
    failures, mismatches = [], []
    start = time.perf_counter()
    with ThreadPoolExecutor(max_workers=requests_total) as pool:
        futures = [(image_id, pool.submit(ask, image_id)) for image_id in asked]
        for image_id, future in futures:
            try:
                if not np.array_equal(future.result(), serial[image_id]):
                    mismatches.append(image_id)
            except Exception as err:  # an HTTP error or a dropped connection: a failed request
                failures.append(f"{image_id}: {type(err).__name__}: {err}")
    return {"requests": requests_total, "images": len(image_ids), "failures": failures, "mismatches": mismatches,
            "serial_seconds_per_request": serial_seconds / len(image_ids),
            "concurrent_seconds": time.perf_counter() - start,
            "peak_memory_mb_before": before, "peak_memory_mb_after": peak_memory_mb(server_pid) if server_pid else None}


def run(n_kills: int = 20, requests_total: int = 50) -> dict:
    """Both measurements (``scripts/benchmark.py reliability``)."""
    from ..serving import running_server

    result = {"kills": kills(n_kills)}
    studies = Path(tempfile.mkdtemp(prefix="diffkillr_studies_"))
    try:
        ids = sample_variants(studies, 8)
        with running_server(studies, studies.parent / f"{studies.name}.log") as url:
            result["concurrent"] = concurrent_infer(url, ids, requests_total, url.pid)
    finally:
        shutil.rmtree(studies, ignore_errors=True)
    result["machine"] = machine()
    return result


def print_summary(result: dict) -> None:
    k = result["kills"]
    print(f"kills: {k['n_kills']} SIGKILLs over a {k['reference_seconds']:.1f} s run of {k['n_images']} images; "
          f"{k['partial_files']} files did not read back; final run exit {k['final_returncode']}, "
          f"differs from the uninterrupted run in {k['differs_from_reference']}; hidden folders left {k['hidden_left']}")
    c = result["concurrent"]
    print(f"concurrent: {c['requests']} /infer at once, {len(c['failures'])} failed, {len(c['mismatches'])} differ "
          f"from serial; {c['concurrent_seconds']:.1f} s in all ({c['serial_seconds_per_request']:.2f} s per request "
          f"serially); server peak memory {c['peak_memory_mb_before']} MB before, {c['peak_memory_mb_after']} MB after")
