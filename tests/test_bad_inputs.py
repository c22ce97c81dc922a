"""The bad-input corpus: every odd or broken input a user may hand the bundle, and what they must get. A bad input is
one ``DataError`` whose line names the file (or the setting) and what is wrong; an odd but valid one is read right.

The corpus runs at the level each input is first touched (reader, dataset listing, bank, weights, settings, the
annotator); ``test_inference.py`` holds that the command line turns any ``DataError`` into exit status 1 and that one
line, and leaves no partial output.
"""

import json
import os
import re
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from PIL import Image

from bundle.bank import load_bank, save_bank
from bundle.checkpoint import load_weights
from bundle.data import DataError, list_dataset, read_image, read_instances
from bundle.inferer import ArchetypeInferer
from bundle.match import unlike_the_bank
from bundle.networks import DiffeoMappingNet
from bundle.workflow import check_device, check_output_dir

ROOT = Path(__file__).resolve().parents[1]
RGB = (np.arange(40 * 60 * 3) % 251).astype(np.uint8).reshape(40, 60, 3)


def png(path, array=RGB, **kwargs):
    Image.fromarray(array).save(path, **kwargs)
    return path


def written(path, content):
    """``path`` with ``content`` (str or bytes) in it."""
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    return path


def truncated(path, full):
    data = full.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def read(builder):
    return lambda tmp: read_image(builder(tmp))


# name -> (what the user does, expected): "ok", a check of the result, or the pattern the error line must match
IMAGES = {
    "empty file": (lambda t: written(t / "a.png", b""), r"a\.png: .*"),
    "text named .png": (lambda t: written(t / "a.png", "hello"), r"a\.png: not a readable image"),
    "truncated PNG": (lambda t: truncated(t / "a.png", png(t / "full.png")), r"a\.png: cannot read image"),
    "truncated TIFF": (lambda t: truncated(t / "a.tif", tifffile.imwrite(t / "f.tif", RGB, photometric="rgb")
                                           or t / "f.tif"), r"a\.tif: cannot read image"),
    "multi-page TIFF": (lambda t: tifffile.imwrite(t / "a.tif", np.stack([RGB] * 3), photometric="rgb")
                        or t / "a.tif", r"a\.tif: holds 3 pages"),
    "8-bit RGB PNG": (lambda t: png(t / "a.png"), (3, 40, 60)),
    "16-bit RGB TIFF": (lambda t: tifffile.imwrite(t / "a.tif", RGB.astype(np.uint16) * 257, photometric="rgb")
                        or t / "a.tif", (3, 40, 60)),
    "float TIFF in [0, 1]": (lambda t: tifffile.imwrite(t / "a.tif", RGB / 255.0, photometric="rgb")
                             or t / "a.tif", (3, 40, 60)),
    "float TIFF with NaN": (lambda t: tifffile.imwrite(t / "a.tif", np.where(RGB > 200, np.nan, RGB / 255.0),
                                                       photometric="rgb") or t / "a.tif", r"a\.tif: \d+ pixels are NaN"),
    "float TIFF in [0, 255]": (lambda t: tifffile.imwrite(t / "a.tif", RGB.astype(np.float32), photometric="rgb")
                               or t / "a.tif", r"a\.tif: float pixels must lie in \[0, 1\]"),
    "grey PNG": (lambda t: png(t / "a.png", RGB[..., 0]), (1, 40, 60)),
    "grey + alpha PNG": (lambda t: png(t / "a.png", RGB[..., :2].copy()), (1, 40, 60)),
    "RGBA PNG": (lambda t: png(t / "a.png", np.dstack([RGB, np.full((40, 60), 255, np.uint8)])), (3, 40, 60)),
    "5-channel TIFF": (lambda t: tifffile.imwrite(t / "a.tif", np.dstack([RGB, RGB[..., :2]]), photometric="minisblack",
                                                  planarconfig="contig", extrasamples=[0] * 4) or t / "a.tif",
                       r"a\.tif: has 5 channels"),
    "JPEG": (lambda t: png(t / "a.jpg", quality=95), (3, 40, 60)),
    "OME-TIFF": (lambda t: tifffile.imwrite(t / "a.ome.tif", RGB, photometric="rgb", ome=True) or t / "a.ome.tif",
                 (3, 40, 60)),
    "1-bit PNG": (lambda t: png(t / "a.png", RGB[..., 0] > 100), r"a\.png: is a 1-bit"),
    "1 x 1 pixel": (lambda t: png(t / "a.png", RGB[:1, :1]), (3, 1, 1)),
    "unicode name with spaces": (lambda t: png(t / "noyau cellulaire é.png"), (3, 40, 60)),
    "a symbolic link to an image": (lambda t: os.symlink(png(t / "real.png"), t / "a.png") or t / "a.png", (3, 40, 60)),
    "a loop of symbolic links": (lambda t: (os.symlink(t / "b.png", t / "a.png"), os.symlink(t / "a.png", t / "b.png"))
                                 and t / "a.png", r"a\.png: a symbolic link that leads to no file"),
    "a missing file": (lambda t: t / "a.png", r"a\.png: file not found"),
    "a folder named like an image": (lambda t: (t / "a.png").mkdir() or t / "a.png", r"a\.png: a folder, not a file"),
}


def fails_in_one_line(call, expected: str) -> None:
    """``call()`` raises a DataError whose message is one line and contains the pattern ``expected``."""
    with pytest.raises(DataError) as raised:
        call()
    message = str(raised.value)
    assert "\n" not in message and re.search(expected, message), message


@pytest.mark.parametrize("case", list(IMAGES))
def test_an_image_file(tmp_path, case):
    build, expected = IMAGES[case]
    path = build(tmp_path)
    if isinstance(expected, str):
        fails_in_one_line(lambda: read_image(path), expected)
    else:
        image = read_image(path)
        assert tuple(image.shape) == expected and image.dtype == torch.float32
        assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0


def test_a_file_without_read_permission(tmp_path, monkeypatch):
    import bundle.data

    path = png(tmp_path / "a.png")
    # as the system answers for a file another user owns (CI runs as root, for whom every file is readable)
    monkeypatch.setattr(bundle.data.os, "access", lambda p, mode: Path(p) != path)
    fails_in_one_line(lambda: read_image(path), r"a\.png: no permission to read it")


def aperio(t, body):
    (t / "a.xml").write_text(f"<Annotations><Annotation><Regions>{body}</Regions></Annotation></Annotations>")
    return t / "a.xml"


SQUARE = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in ((5, 5), (15, 5), (15, 15), (5, 15)))
ANNOTATIONS = {
    "malformed XML": (lambda t: written(t / "a.xml", "<Annotations><Region>"), r"a\.xml: malformed XML"),
    "XML without regions": (lambda t: aperio(t, ""), 0),
    "XML with one region": (lambda t: aperio(t, f"<Region><Vertices>{SQUARE}</Vertices></Region>"), 1),
    "GeoJSON that is not JSON": (lambda t: written(t / "a.geojson", "{"), r"a\.geojson: .*"),
    "GeoJSON with a broken geometry": (lambda t: written(t / "a.geojson", json.dumps(
        {"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [["x", "y"]]}})), r"a\.geojson: .*"),
    "label image of another shape": (lambda t: png(t / "a.png", np.zeros((20, 20), np.uint8)),
                                     r"a\.png: label image has shape \(20, 20\) but the image has shape \(40, 60\)"),
    "label image with negative values": (lambda t: tifffile.imwrite(t / "a.tif", np.full((40, 60), -1, np.int16))
                                         or t / "a.tif", r"a\.tif: label image has negative values"),
}


@pytest.mark.parametrize("case", list(ANNOTATIONS))
def test_an_annotation_file(tmp_path, case):
    build, expected = ANNOTATIONS[case]
    path = build(tmp_path)
    if isinstance(expected, str):
        fails_in_one_line(lambda: read_instances(path, shape=(40, 60)), expected)
    else:
        assert read_instances(path, shape=(40, 60)).max() == expected


def dataset(t, csv_text=None, images=("a",)):
    (t / "images").mkdir()
    for name in images:
        png(t / "images" / f"{name}.png")
    if csv_text is not None:
        (t / "organs.csv").write_text(csv_text)
    return t


DATASETS = {
    "a folder that does not exist": (lambda t: t / "nowhere", r"nowhere: dataset folder not found"),
    "a folder without images": (lambda t: t, r"no images found"),
    "organs.csv with the wrong columns": (lambda t: dataset(t, "name,tissue\na,Kidney\n"), r"no 'image_id' column"),
    "organs.csv with the right columns": (lambda t: dataset(t, "image_id,organ,official_split\na,Kidney,train\n"), 1),
    "two files with one id": (lambda t: png(dataset(t) / "images" / "a.jpg").parents[1],
                              r"two images share the id 'a'"),
    "a broken link among the images": (lambda t: os.symlink(t / "gone.png", dataset(t) / "images" / "b.png") or t,
                                       r"b\.png: a symbolic link that leads to no file"),
}


@pytest.mark.parametrize("case", list(DATASETS))
def test_a_dataset_folder(tmp_path, case):
    build, expected = DATASETS[case]
    folder = build(tmp_path)
    if isinstance(expected, str):
        with pytest.raises(DataError, match=expected):
            list_dataset(folder)
    else:
        assert len(list_dataset(folder)) == expected


def cut_in_half(source: Path, path: Path) -> Path:
    return written(path, source.read_bytes()[: source.stat().st_size // 2])


def bank_without_whole_cells(t: Path) -> Path:
    bank = load_bank(ROOT / "models" / "archetype_bank.pt")
    return save_bank({**bank, "masks": torch.zeros_like(bank["masks"])}, t / "bank.pt")


SETTINGS = {
    "a missing bank": (lambda t: load_bank(t / "bank.pt"), r"bank\.pt: bank file not found"),
    "a truncated bank": (lambda t: load_bank(cut_in_half(ROOT / "models" / "archetype_bank.pt", t / "bank.pt")),
                         r"bank\.pt: not a readable bank file"),
    "a bank whose masks are all empty": (
        lambda t: ArchetypeInferer(bank_without_whole_cells(t), torch.nn.Identity()).setup(),
        r"no cell of the bank is a whole nucleus"),
    "a truncated checkpoint": (
        lambda t: load_weights(DiffeoMappingNet(3, backbone="voxelmorph"),
                               cut_in_half(ROOT / "models" / "model.pt", t / "model.pt")),
        r"model\.pt: not a readable checkpoint"),
    "a text file as the bank": (lambda t: load_bank(written(t / "bank.pt", "hello")),
                                r"bank\.pt: not a readable bank file"),
    "an empty bank file": (lambda t: load_bank(written(t / "bank.pt", b"")), r"bank\.pt: not a readable"),
    "a checkpoint of the other network": (
        lambda t: load_weights(DiffeoMappingNet(3, backbone="voxelmorph"), ROOT / "models" / "invariant.pt"),
        r"invariant\.pt: checkpoint does not match"),
    "an output folder that is a file": (lambda t: check_output_dir(written(t / "f", "")), r"f: cannot write there"),
    "a device torch does not know": (lambda t: check_device("gpu0"), r"device: 'gpu0' is not a device torch knows"),
    "a batch size of 0": (lambda t: ArchetypeInferer("bank.pt", torch.nn.Identity(), batch_size=0),
                          r"batch_size: must be a whole number"),
    "a similarity above 1": (lambda t: ArchetypeInferer("bank.pt", torch.nn.Identity(), min_similarity=2.0),
                             r"min_similarity: must be between -1 and 1"),
}


@pytest.mark.parametrize("case", list(SETTINGS))
def test_a_setting(tmp_path, case):
    run, expected = SETTINGS[case]
    fails_in_one_line(lambda: run(tmp_path), expected)


@pytest.fixture(scope="module")
def annotate():
    """The main job's annotator (``configs/inference.yaml``, shipped models) on one image tensor."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(ROOT / "configs" / "inference.yaml"))
    parser.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')"})
    inferer = parser.get_parsed_content("inferer")
    network = load_weights(parser.get_parsed_content("network_def"), ROOT / "models" / "model.pt").eval()
    return lambda image: inferer.annotate(image, network)


def flagged(annotation) -> bool:
    """Whether the main job warns that an image's cells look like none of the bank's (``match.unlike_the_bank``)."""
    return unlike_the_bank(annotation.cells["match_distance"]) is not None


# what the pixels hold: the expected number of cells (or "flagged": annotated with a warning), or the error pattern
CONTENT = {
    "all white": (lambda: torch.ones(3, 300, 300), 0),
    "all black": (lambda: torch.zeros(3, 300, 300), "flagged"),
    "uniform noise": (lambda: torch.rand(3, 300, 300, generator=torch.Generator().manual_seed(0)), "flagged"),
    "a thin strip": (lambda: torch.rand(3, 5, 600), r"image of 5x600 pixels is smaller than a 64x64 patch"),
}


@pytest.mark.parametrize("case", list(CONTENT))
def test_what_an_image_holds(annotate, case):
    build, expected = CONTENT[case]
    if isinstance(expected, str) and expected != "flagged":
        fails_in_one_line(lambda: annotate(build()), expected)
    elif expected == "flagged":
        assert flagged(annotate(build()))
    else:
        annotation = annotate(build())
        assert annotation.labels.max() == expected and not flagged(annotation)


def test_the_corpus_holds_at_least_forty_cases():
    assert len(IMAGES) + 1 + len(ANNOTATIONS) + len(DATASETS) + len(SETTINGS) + len(CONTENT) >= 40
