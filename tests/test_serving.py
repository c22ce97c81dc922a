"""The bundle served by a real MONAI Label server, as QuPath's MONAI Label extension uses it: annotate, correct,
learn from the correction, annotate again, ask which image to annotate next."""

import io
import json
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

pytest.importorskip("monailabel", reason="MONAI Label is not installed: see the test command in README.md")
requests = pytest.importorskip("requests")

from bundle.data import list_dataset, load_sample  # noqa: E402
from bundle.outputs import cell_geometries  # noqa: E402
from bundle.serving import train_and_wait  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def asap_label(labels: np.ndarray) -> bytes:
    """The cells of a label map as QuPath's extension submits them: ASAP XML, class and group the cell's class,
    coordinates truncated to whole pixels as its ``(int) p.getX()`` does."""
    root = ET.Element("ASAP_Annotations")
    group = ET.SubElement(root, "Annotations", Name="", X="0", Y="0", W="0", H="0")
    for geometry in cell_geometries(labels).values():
        outer = geometry["coordinates"][0] if geometry["type"] == "Polygon" else geometry["coordinates"][0][0]
        annotation = ET.SubElement(group, "Annotation", Name="Nucleus", Type="Polygon", PartOfGroup="Nucleus",
                                   Color="#c80000")
        coordinates = ET.SubElement(annotation, "Coordinates")
        for order, (x, y) in enumerate(outer[:-1]):
            ET.SubElement(coordinates, "Coordinate", Order=str(order), X=str(int(x)), Y=str(int(y)))
    return ET.tostring(root)


def best_iou(truth: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """For each true cell, the IoU of the predicted cell that overlaps it most."""
    out = []
    for cell in np.unique(truth[truth > 0]):
        inside = truth == cell
        ids, counts = np.unique(labels[inside], return_counts=True)
        counts, ids = counts[ids > 0], ids[ids > 0]
        if len(ids) == 0:
            out.append(0.0)
            continue
        best = ids[np.argmax(counts)]
        out.append(counts.max() / np.logical_or(inside, labels == best).sum())
    return np.asarray(out)


@pytest.fixture(scope="module")
def studies(tmp_path_factory):
    """A studies folder: "a", the sample cut to 256 x 200 (not square, so a transposed answer shows); "b", "a"
    mirrored; "c", a smaller crop of the sample turned a quarter. Returns (folder, the true labels of image "a")."""
    folder = tmp_path_factory.mktemp("studies")
    image, labels = load_sample(list_dataset(ROOT / "docs" / "sample")[0])
    rgb = (image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    Image.fromarray(rgb[:, :200]).save(folder / "a.png")
    Image.fromarray(rgb[:, :200][:, ::-1].copy()).save(folder / "b.png")
    Image.fromarray(np.rot90(rgb[:160, :180]).copy()).save(folder / "c.png")
    return folder, labels[:, :200]


@pytest.fixture(scope="module")
def server(studies, tmp_path_factory):
    """``monailabel start_server`` on the repository's app folder, on 127.0.0.1 and a free port; its base URL."""
    from bundle.serving import running_server

    with running_server(studies[0], tmp_path_factory.mktemp("server") / "server.log") as url:
        yield url


def infer_labels(url: str, image_id: str) -> tuple[np.ndarray, dict]:
    """The label map (``output=image``) and the JSON (``output=json``) of one image."""
    file = requests.post(f"{url}/infer/diffkillr?image={image_id}&output=image", timeout=300)
    assert file.status_code == 200, file.text
    result = requests.post(f"{url}/infer/diffkillr?image={image_id}&output=json", timeout=300)
    assert result.status_code == 200, result.text
    return tifffile.imread(io.BytesIO(file.content)), result.json()


def test_info_names_the_model_its_label_the_trainer_and_the_strategy(server):
    info = requests.get(f"{server}/info/", timeout=30).json()
    assert info["models"]["diffkillr"]["labels"] == ["Nucleus"] and info["models"]["diffkillr"]["pathology"]
    assert "diffkillr" in info["trainers"] and "most_uncertain" in info["strategies"]


def test_infer_gives_the_clis_label_map_rows_first_and_the_cells_with_their_measurements(server, studies, tmp_path):
    labels, result = infer_labels(server, "a")
    assert labels.shape == (256, 200)  # rows first, as the image: not transposed
    (tmp_path / "in").mkdir()
    shutil.copy(studies[0] / "a.png", tmp_path / "in" / "a.png")
    cli = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(ROOT / "configs" / "inference.yaml"),
         "--bundle_root", str(ROOT), "--dataset_dir", str(tmp_path / "in"), "--output_dir", str(tmp_path / "out"),
         "--device", "cpu"],
        capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert np.array_equal(labels, tifffile.imread(tmp_path / "out" / "a_labels.tif"))  # one inference path
    assert result["count"] == labels.max() == len(result["cells"]) > 10
    cell = result["cells"][0]
    assert {"label", "outlines", "centroid", "area_px", "orientation_deg", "match_distance", "archetype_id",
            "uncertainty"} <= set(cell)
    assert cell["area_px"] == (labels == cell["label"]).sum()


def test_qupaths_request_gets_asap_polygons_in_image_coordinates_for_its_region(server):
    body = {"level": 0, "location": [60, 40], "size": [120, 150], "tile_size": [1024, 1024], "min_poly_area": 30,
            "params": {}}
    reply = requests.post(f"{server}/infer/wsi/diffkillr?image=a&output=asap", json=body, timeout=300)
    assert reply.status_code == 200, reply.text
    annotations = list(ET.fromstring(reply.content).iter("Annotation"))
    assert len(annotations) > 5 and {a.get("Name") for a in annotations} == {"Nucleus"}
    points = np.array([[float(c.get("X")), float(c.get("Y"))] for a in annotations for c in a.iter("Coordinate")])
    assert points[:, 0].min() >= 60 and points[:, 0].max() <= 180 and points[:, 1].min() >= 40
    assert points[:, 1].max() <= 190


def test_a_corrected_label_becomes_archetypes_and_the_next_infer_follows_it(server, studies):
    folder, truth = studies
    before, result_before = infer_labels(server, "a")
    # the user corrects every cell of "a" in QuPath and submits the label
    put = requests.put(f"{server}/datastore/label?image=a&tag=final",
                       files={"label": ("a8341.xml", asap_label(truth), "application/xml")},
                       data={"params": "{}"}, timeout=60)
    assert put.status_code == 200, put.text
    assert (folder / "labels" / "final" / "a.xml").is_file()
    # /train as QuPath sends it: in the background, then polled until it is done
    task = train_and_wait(server)
    assert task["status"] == "DONE", task
    after, result_after = infer_labels(server, "a")  # no restart
    _, result_b = infer_labels(server, "b")
    assert result_after["archetypes"] > result_before["archetypes"]
    # the corrected cells come out as the user drew them (up to QuPath's whole-pixel coordinates)
    iou_before, iou_after = best_iou(truth, before), best_iou(truth, after)
    assert iou_after.min() > 0.9 > iou_before.mean()
    # on "b", "a" mirrored (the same nuclei, to a flip-invariant encoder), the cells now match the new archetypes
    shipped = len(torch.load(ROOT / "models" / "archetype_bank.pt", weights_only=True)["image_ids"])
    assert np.mean([cell["archetype_id"] >= shipped for cell in result_b["cells"]]) > 0.9


def test_active_learning_proposes_the_unlabelled_image_whose_cells_are_most_uncertain(server, studies):
    reply = requests.post(f"{server}/activelearning/most_uncertain", json={}, timeout=600)
    assert reply.status_code == 200, reply.text
    chosen = reply.json()
    record = json.loads((studies[0] / "diffkillr" / "uncertainty.json").read_text())
    unlabelled = {"b", "c"} if (studies[0] / "labels" / "final" / "a.xml").is_file() else {"a", "b", "c"}
    assert chosen["id"] in unlabelled and set(record) >= unlabelled
    assert record[chosen["id"]]["uncertainty"] == max(record[i]["uncertainty"] for i in unlabelled)


def test_a_label_submitted_again_replaces_that_images_cells_in_the_bank_instead_of_adding_them_twice(studies):
    from bundle.bank import extract_cells, load_bank
    from bundle.serving import grown_bank

    folder, truth = studies
    shipped = load_bank(ROOT / "models" / "archetype_bank.pt")
    image, _ = load_sample(list_dataset(ROOT / "docs" / "sample")[0])
    cells = extract_cells(image[:, :, :200], truth)
    n = len(cells["cell_ids"])
    cells.update(image_ids=["a"] * n, organs=[""] * n)
    once = grown_bank(shipped, [cells], folder)
    twice = grown_bank({**once, "meta": once["meta"]}, [cells], folder)
    assert len(once["image_ids"]) == len(shipped["image_ids"]) + n == len(twice["image_ids"])
    assert once["meta"]["corrections"] == {"images": ["a"], "cells": n}
    assert "proposals" in once["meta"]  # recalibrated on the user's cells


def test_a_corrected_grey_image_cannot_join_a_bank_of_colour_archetypes(studies):
    from bundle.bank import extract_cells, load_bank
    from bundle.data import DataError
    from bundle.serving import grown_bank

    folder, truth = studies
    image, _ = load_sample(list_dataset(ROOT / "docs" / "sample")[0])
    cells = extract_cells(image[:1, :, :200], truth)  # one channel
    cells.update(image_ids=["grey"] * len(cells["cell_ids"]), organs=[""] * len(cells["cell_ids"]))
    with pytest.raises(DataError, match="grey: a corrected image of 1 channel"):
        grown_bank(load_bank(ROOT / "models" / "archetype_bank.pt"), [cells], folder)


def test_fifty_requests_at_once_all_succeed_answer_as_one_at_a_time_and_keep_memory_bounded(server):
    from bundle.benchmarks.reliability import concurrent_infer

    result = concurrent_infer(server, ["a", "b", "c"], requests_total=50, server_pid=server.pid)
    assert result["failures"] == [] and result["mismatches"] == []
    # the requests queue for the one workflow instead of each holding its own: the server's peak hardly moves
    if result["peak_memory_mb_before"] is not None:
        assert result["peak_memory_mb_after"] - result["peak_memory_mb_before"] < 300, result


def test_asked_to_fine_tune_train_makes_new_weights_from_the_corrections_and_the_next_infer_runs_on_them(server,
                                                                                                        studies):
    folder, truth = studies
    if not (folder / "labels" / "final" / "a.xml").is_file():  # run alone: the correction of the test above
        requests.put(f"{server}/datastore/label?image=a&tag=final", data={"params": "{}"}, timeout=60,
                     files={"label": ("a.xml", asap_label(truth), "application/xml")}).raise_for_status()
    _, before = infer_labels(server, "b")
    task = train_and_wait(server, body={"fine_tune": True, "epochs": 1})
    assert task["status"] == "DONE", task
    _, after = infer_labels(server, "b")  # no restart
    assert before["weights"] == {"invariant": str(ROOT / "models" / "invariant.pt"),
                                 "mapping": str(ROOT / "models" / "model.pt")}
    assert after["weights"] == {net: str(folder / "diffkillr" / f"{net}.pt") for net in ("invariant", "mapping")}
    for net, shipped in (("invariant", "invariant.pt"), ("mapping", "model.pt")):
        old = torch.load(ROOT / "models" / shipped, weights_only=True)["model"]
        new = torch.load(folder / "diffkillr" / f"{net}.pt", weights_only=True)["model"]
        assert old.keys() == new.keys() and any(not torch.equal(old[k], new[k]) for k in old)
    stats = requests.get(f"{server}/info/", timeout=30).json()["train_stats"]["diffkillr"]["fine_tuned"]
    assert stats["epochs"] == 1 and stats["users_cells"] > 20 and stats["cells"] >= 2 * stats["users_cells"]
    assert after["count"] > 0


def test_fine_tuning_without_a_corrected_cell_or_with_a_bad_number_of_epochs_is_one_line(tmp_path):
    from bundle.data import DataError
    from bundle.serving import LearnFromCorrections, fine_tune

    with pytest.raises(DataError, match="no corrected cell to fine-tune on"):
        fine_tune(ROOT, tmp_path, {}, torch.load(ROOT / "models" / "archetype_bank.pt", weights_only=True), epochs=1)
    train = LearnFromCorrections(ROOT, tmp_path / "bank.pt", tmp_path)
    for epochs in ("two", 0, -1, True):  # refused before the bank is touched (no datastore is even read)
        with pytest.raises(DataError, match="epochs: must be a whole number"):
            train({"fine_tune": True, "epochs": epochs}, datastore=None)
    assert not (tmp_path / "bank.pt").exists()
