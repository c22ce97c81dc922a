"""The bundle's main job, end to end: configs/inference.yaml (dataset -> preprocessing -> inferer -> postprocessing) on
the embedded sample with the shipped models, the way the CLI runs it and the way MONAI Label's BundleInferTask does."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser, ConfigWorkflow
from PIL import Image

from bundle.benchmarks.metrics import counting_scores
from bundle.checkpoint import load_weights
from bundle.data import list_dataset, load_sample
from bundle.inferer import compiled
from bundle.networks import DiffeoInvariantNet, DiffeoMappingNet
from bundle.patches import cell_centroids
from bundle.selftrain import best_overlap
from bundle.stitch import CELLS_KEY
from bundle.student import student_maps
from bundle.workflow import error_line

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "inference.yaml"
SAMPLE = ROOT / "docs" / "sample"
SAMPLE_ID = list_dataset(SAMPLE)[0].image_id
# a floor under the shipped models' counting F1 on the sample, not the expected value
SAMPLE_F1_FLOOR = 0.70


def run_inference(**overrides) -> ConfigWorkflow:
    """The config run in-process as `python -m monai.bundle run` runs it: initialize, then run."""
    workflow = ConfigWorkflow(config_file=str(CONFIG), workflow_type=None, bundle_root=str(ROOT),
                              **{"device": "$torch.device('cpu')", **overrides})
    workflow.initialize()
    workflow.run()
    return workflow


@pytest.fixture(scope="module")
def sample_outputs(tmp_path_factory):
    out = tmp_path_factory.mktemp("outputs")
    run_inference(output_dir=str(out))
    return out


def shipped_workflow():
    """The inference config's inferer and DiffeoMappingNet with the shipped weights, on the CPU, to call directly."""
    parser = ConfigParser(ConfigParser.load_config_file(str(CONFIG)))
    parser.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')"})
    return parser.get_parsed_content("inferer"), load_weights(parser.get_parsed_content("network_def"),
                                                              ROOT / "models" / "model.pt")


def read_labels(out: Path, image_id: str = SAMPLE_ID) -> np.ndarray:
    return tifffile.imread(out / f"{image_id}_labels.tif").astype(np.int32)


def test_every_output_is_written_for_the_sample_and_nothing_else(sample_outputs):
    names = sorted(p.name for p in sample_outputs.iterdir())
    assert names == sorted([f"{SAMPLE_ID}.geojson", f"{SAMPLE_ID}_cells.csv", f"{SAMPLE_ID}_labels.tif",
                            f"{SAMPLE_ID}_overlay.png"])  # no temporary leftovers
    assert all((sample_outputs / name).stat().st_size > 0 for name in names)


def test_the_geojson_has_one_nucleus_feature_per_label(sample_outputs):
    labels = read_labels(sample_outputs)
    geo = json.loads((sample_outputs / f"{SAMPLE_ID}.geojson").read_text())
    assert geo["type"] == "FeatureCollection"
    assert sorted(f["properties"]["measurements"]["Label"] for f in geo["features"]) == list(range(1, labels.max() + 1))
    for feature in geo["features"]:
        assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
        assert feature["properties"]["classification"]["name"] == "Nucleus"
        measurements = feature["properties"]["measurements"]
        assert measurements["Area px^2"] == (labels == measurements["Label"]).sum()
        assert {"Orientation deg", "Match distance", "Archetype id", "Folded pixels %", "Uncertainty"} <= set(measurements)
        assert 0 <= measurements["Uncertainty"] <= 1


def test_the_csv_agrees_with_the_label_map(sample_outputs):
    labels = read_labels(sample_outputs)
    with open(sample_outputs / f"{SAMPLE_ID}_cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert labels.max() > 10 and [int(r["id"]) for r in rows] == list(range(1, labels.max() + 1))
    for r in rows:
        rr, cc = np.nonzero(labels == int(r["id"]))
        assert int(r["area"]) == len(rr)
        assert abs(float(r["centroid_row"]) - rr.mean()) < 1e-3 and abs(float(r["centroid_col"]) - cc.mean()) < 1e-3
        assert 0.0 <= float(r["orientation_deg"]) < 180.0


def test_counting_on_the_sample_beats_the_measured_floor(sample_outputs):
    _, truth = load_sample(list_dataset(SAMPLE)[0])
    _, found = cell_centroids(read_labels(sample_outputs))
    assert counting_scores(found, cell_centroids(truth)[1])["f1"] >= SAMPLE_F1_FLOOR


def test_monai_labels_call_gives_the_label_map_the_cli_writes(sample_outputs, tmp_path):
    # BundleInferTask: network_def with models/model.pt (strict=False), then preprocessing -> inferer(one tensor,
    # network) -> postprocessing, all read from configs/inference.yaml
    parser = ConfigParser(ConfigParser.load_config_file(str(CONFIG)))
    parser.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')", "output_dir": str(tmp_path)})
    network = parser.get_parsed_content("network_def")
    checkpoint = torch.load(ROOT / "models" / "model.pt", map_location="cpu", weights_only=True)
    network.load_state_dict(checkpoint.get("model", checkpoint), strict=False)
    data = parser.get_parsed_content("preprocessing")({"image": str(list_dataset(SAMPLE)[0].image_path)})
    pred = parser.get_parsed_content("inferer")(data["image"][None], network)[0]
    assert pred.shape == (1, *data["image"].shape[1:]) and pred.dtype == torch.int32
    assert pred.meta[CELLS_KEY].shape[0] == int(pred.max())  # the per-cell table travels with the label map
    data = parser.get_parsed_content("postprocessing")({**data, "pred": pred})
    assert np.array_equal(pred[0].numpy(), read_labels(sample_outputs))
    assert np.array_equal(read_labels(tmp_path), read_labels(sample_outputs))
    assert sorted(Path(p).name for p in data["outputs"]) == sorted(p.name for p in sample_outputs.iterdir())


def test_an_image_without_cells_gives_an_empty_annotation(tmp_path):
    (tmp_path / "in").mkdir()
    Image.fromarray(np.full((100, 120, 3), 235, np.uint8)).save(tmp_path / "in" / "blank.png")
    run_inference(dataset_dir=str(tmp_path / "in"), output_dir=str(tmp_path / "out"))
    assert read_labels(tmp_path / "out", "blank").max() == 0
    assert json.loads((tmp_path / "out" / "blank.geojson").read_text())["features"] == []


def bad_input_cases(tmp_path):
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    Image.fromarray(np.zeros((40, 40, 3), np.uint8)).save(tiny / "small.png")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "cut.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    torch.save({"images": torch.zeros(0, 3, 96, 96, dtype=torch.uint8), "masks": torch.zeros(0, 1, 96, 96),
                "orientation": torch.zeros(0), "centroids": torch.zeros(0, 2), "cell_ids": torch.zeros(0),
                "image_ids": [], "organs": [], "meta": {}}, tmp_path / "empty_bank.pt")
    torch.save({"model": {"weight": torch.zeros(3)}}, tmp_path / "wrong.pt")
    (tmp_path / "text.pt").write_text("not a checkpoint")
    (tmp_path / "a_file").write_text("")
    return {
        "missing folder": ({"dataset_dir": str(tmp_path / "nowhere")}, "nowhere"),
        "image smaller than a patch": ({"dataset_dir": str(tiny)}, "small.png"),
        "unreadable image": ({"dataset_dir": str(broken)}, "cut.png"),
        "empty bank": ({"bank_path": str(tmp_path / "empty_bank.pt")}, "empty_bank.pt"),
        "checkpoint that does not match": ({"mapping_path": str(tmp_path / "wrong.pt")}, "wrong.pt"),
        "text file as the encoder's checkpoint": ({"invariant_path": str(tmp_path / "text.pt")}, "text.pt"),
        "output folder that is a file": ({"output_dir": str(tmp_path / "a_file")}, "a_file"),
        "batch size of zero": ({"batch_size": 0}, "batch_size"),
        "text as the similarity threshold": ({"min_similarity": "high"}, "min_similarity"),
        "similarity threshold no cosine reaches": ({"min_similarity": 2.0}, "min_similarity"),
    }


@pytest.mark.parametrize("case", ["missing folder", "image smaller than a patch", "unreadable image", "empty bank",
                                  "checkpoint that does not match", "text file as the encoder's checkpoint",
                                  "output folder that is a file", "batch size of zero", "text as the similarity threshold",
                                  "similarity threshold no cosine reaches"])
def test_bad_input_is_one_line_naming_the_file_and_leaves_no_outputs(tmp_path, case):
    overrides, name = bad_input_cases(tmp_path)[case]
    out = overrides.get("output_dir", str(tmp_path / "out"))
    with pytest.raises(Exception) as raised:
        run_inference(**{"output_dir": out, **overrides})
    line = error_line(raised.value)
    assert line is not None and line.startswith("error: ") and name in line and "\n" not in line
    assert not Path(out).is_dir() or not any(Path(out).iterdir())


def test_an_error_log_about_a_users_mistake_is_dropped_and_one_about_a_bug_kept():
    import logging

    from bundle.data import DataError
    from bundle.workflow import not_about_a_user_error

    record = logging.LogRecord("ignite", logging.ERROR, __file__, 1, "run is terminating due to exception", None, None)
    try:
        try:
            raise DataError("cut.png: cannot read image")
        except DataError as err:
            raise RuntimeError("applying transform") from err
    except RuntimeError:
        assert not not_about_a_user_error(record)
    try:
        raise ValueError("a bug")
    except ValueError:
        assert not_about_a_user_error(record)


@pytest.mark.slow
def test_an_error_inside_the_annotation_loop_is_still_one_line(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "broken.png").write_text("not a picture")  # found when the loop reads it
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG), "--bundle_root", str(ROOT),
         "--dataset_dir", str(tmp_path / "images"), "--output_dir", str(tmp_path / "out")],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert " - ERROR - " not in result.stdout + result.stderr  # ignite's own log lines about it (they go to stdout)
    assert [line for line in result.stderr.splitlines() if "error: " in line][-1].startswith(
        f"error: {tmp_path / 'images' / 'broken.png'}: ")


def test_an_output_folder_that_cannot_be_written_is_one_line_before_any_image_is_annotated(tmp_path):
    (tmp_path / "a_file").write_text("")
    with pytest.raises(Exception) as raised:
        run_inference(output_dir=str(tmp_path / "a_file" / "out"))
    assert error_line(raised.value) == f"error: {tmp_path / 'a_file' / 'out'}: cannot write there (Not a directory)"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_asking_for_a_gpu_on_a_machine_without_one_is_one_line_before_any_work(tmp_path):
    with pytest.raises(Exception) as raised:
        run_inference(output_dir=str(tmp_path / "out"), device="cuda")
    line = error_line(raised.value)
    assert line is not None and line.startswith("error: device: cuda") and "--device" in line
    assert not (tmp_path / "out").exists()


def test_a_device_torch_does_not_know_is_one_line():
    from bundle.data import DataError
    from bundle.workflow import check_device

    with pytest.raises(DataError, match="not a device torch knows"):
        check_device("gpu0")
    assert check_device("cpu") == torch.device("cpu")


@pytest.mark.slow
def test_the_bundle_cli_prints_one_error_line_and_exits_non_zero(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "monai.bundle", "run", "--config_file", str(CONFIG), "--bundle_root", str(ROOT),
         "--dataset_dir", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "o")],
        capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert [line for line in result.stderr.splitlines() if line.startswith("error:")] == [
        f"error: {tmp_path / 'nowhere'}: dataset folder not found"]


@pytest.mark.slow
def test_the_compiled_encoder_embeds_like_the_network():
    torch.manual_seed(0)
    network = DiffeoInvariantNet(3, channels=(8, 16), strides=(2, 2), embedding_dim=16)
    for module in network.modules():  # non-trivial batch-norm statistics, which compilation folds into the convolutions
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    crops = torch.rand(4, 3, 64, 64)
    with torch.no_grad():
        expected = network.eval()(crops)
        assert torch.allclose(compiled(network)(crops), expected, atol=1e-5)


def test_the_inferer_refuses_a_batch_of_several_images():
    parser = ConfigParser(ConfigParser.load_config_file(str(CONFIG)))
    parser.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')"})
    network = load_weights(DiffeoMappingNet(3, backbone="voxelmorph"), ROOT / "models" / "model.pt")
    with pytest.raises(ValueError, match="one image at a time"):
        parser.get_parsed_content("inferer")(torch.rand(2, 3, 80, 80), network)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    from bundle.release import export_networks

    folder = tmp_path_factory.mktemp("exported")
    export_networks(ROOT, folder)
    return folder


@pytest.mark.slow
def test_the_exported_networks_answer_like_the_python_modules_for_any_number_of_cells(exported):
    from bundle.checkpoint import ExportedNetwork
    from bundle.release import EXPORTED

    parser = ConfigParser(ConfigParser.load_config_file(str(CONFIG)))
    parser.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')"})
    torch.manual_seed(0)
    shapes = {"network_def": [(1, 6, 64, 64), (37, 6, 64, 64)], "invariant_def": [(1, 3, 64, 64), (300, 3, 64, 64)],
              "student_def": [(1, 3, 256, 256), (1, 3, 320, 208)]}
    for network_key, weights_key, name in EXPORTED:
        module = load_weights(parser.get_parsed_content(network_key), parser.get_parsed_content(weights_key)).eval()
        program = ExportedNetwork(exported / name)
        for shape in shapes[network_key]:  # batch sizes (and image sizes) other than the export's example
            x = torch.rand(shape)
            with torch.no_grad():
                torch.testing.assert_close(program(x), module(x), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
def test_the_exported_overlay_annotates_the_sample_as_the_python_modules_do(exported, sample_outputs, tmp_path):
    from bundle.release import EXPORTED

    workflow = ConfigWorkflow(
        config_file=[str(CONFIG), str(ROOT / "configs" / "exported.yaml")], workflow_type=None, bundle_root=str(ROOT),
        device="$torch.device('cpu')", output_dir=str(tmp_path),
        **{f"{key}#path": str(exported / name) for key, _, name in EXPORTED})
    workflow.initialize()
    assert isinstance(workflow.parser.get_parsed_content("network"), torch.nn.Module)
    workflow.run()
    assert np.array_equal(read_labels(tmp_path), read_labels(sample_outputs))


def test_an_exported_network_is_refused_training_and_a_missing_one_is_one_line(tmp_path):
    from bundle.checkpoint import ExportedNetwork
    from bundle.data import DataError

    with pytest.raises(DataError, match="export.py --networks"):
        ExportedNetwork(tmp_path / "model.pt2")
    (tmp_path / "text.pt2").write_text("not an archive")
    with pytest.raises(DataError, match="not a readable exported network"):
        ExportedNetwork(tmp_path / "text.pt2")


@pytest.mark.slow
def test_an_image_of_noise_is_annotated_with_a_warning_and_tissue_without(tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    noise = (np.random.default_rng(0).random((384, 384, 3)) * 255).astype(np.uint8)
    Image.fromarray(noise).save(images / "noise.png")
    (images / f"{SAMPLE_ID}.png").write_bytes((SAMPLE / "images" / f"{SAMPLE_ID}.png").read_bytes())
    run_inference(dataset_dir=str(images), output_dir=str(tmp_path / "out"))
    warnings = [line for line in capsys.readouterr().out.splitlines() if "warning:" in line]
    assert len(warnings) == 1 and warnings[0].startswith("noise: warning: its cells look like none of the bank's")
    assert (tmp_path / "out" / "noise_labels.tif").is_file()  # flagged, not refused: the user decides


@pytest.mark.slow
def test_no_cell_is_centred_on_a_transparent_pixel(tmp_path):
    image, _ = load_sample(list_dataset(SAMPLE)[0])
    rgba = np.concatenate([(image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8),
                           np.full((*image.shape[1:], 1), 255, np.uint8)], axis=2)
    rgba[:128, :, 3] = 0  # the top half transparent: padding, or a region another tool masked out
    (tmp_path / "images").mkdir()
    Image.fromarray(rgba).save(tmp_path / "images" / "half.png")
    run_inference(dataset_dir=str(tmp_path / "images"), output_dir=str(tmp_path / "out"))
    with open(tmp_path / "out" / "half_cells.csv") as f:
        rows = [float(row["centroid_row"]) for row in csv.DictReader(f)]
    assert len(rows) > 10 and min(rows) > 120  # cells in the opaque half, none centred in the transparent one


@pytest.mark.slow
def test_a_pixel_size_given_puts_areas_in_square_micrometres_and_a_bad_one_is_one_line(tmp_path):
    run_inference(output_dir=str(tmp_path / "out"), pixel_size=0.25)
    with open(tmp_path / "out" / f"{SAMPLE_ID}_cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert rows and all(float(r["area_um2"]) == pytest.approx(int(r["area"]) * 0.0625, abs=1e-3) for r in rows)
    with pytest.raises(Exception) as raised:
        run_inference(output_dir=str(tmp_path / "bad"), pixel_size=-1)
    assert error_line(raised.value).startswith("error: pixel_size: must be the pixel's side in micrometres")


def test_a_large_image_annotated_region_by_region_gives_every_nucleus_as_one_region_would(monkeypatch):
    # the sample as a 2 x 2 mosaic, with regions shrunk so that 16 of them and their seams cross it
    import bundle.inferer as inferer_module

    inferer, network = shipped_workflow()
    image, _ = load_sample(list_dataset(SAMPLE)[0])
    mosaic = torch.cat([torch.cat([image, image.flip(2)], 2)] * 2, 1)
    whole = inferer.annotate(mosaic, network)
    monkeypatch.setattr(inferer_module, "TILE", 128)
    tiled = inferer.annotate(mosaic, network)

    assert tiled.labels.max() == whole.labels.max() > 50
    iou = best_overlap(whole.labels, tiled.labels)
    # no nucleus cut at a seam (a nucleus cut in two keeps at most half of itself in either piece), doubled or lost
    # (the counts above). The v0.20.0 student is more sensitive to where a region ends: two nuclei of 171 near a
    # region's corner or edge keep about three quarters and seven eighths (every one above .97 with v0.13.0's)
    assert iou.min() > 0.5
    assert (iou >= 0.99).mean() > 0.9  # most come out pixel for pixel the same
    assert tiled.cells["id"] == list(range(1, tiled.labels.max() + 1))
    assert tiled.cells["area"] == np.bincount(tiled.labels.ravel())[1:].tolist()
    assert all(len(tiled.cells[k]) == len(tiled.cells["id"]) for k in tiled.cells)


@pytest.mark.slow
def test_a_bank_of_one_archetype_is_flagged_by_name_before_the_first_image(tmp_path, capsys):
    from bundle.bank import load_bank, save_bank, take, whole_archetypes

    bank = load_bank(ROOT / "models" / "archetype_bank.pt")
    one = int(torch.nonzero(whole_archetypes(bank))[0])
    path = save_bank({**take(bank, [one]), "meta": bank["meta"]}, tmp_path / "one.pt")
    run_inference(bank_path=str(path), output_dir=str(tmp_path / "out"))
    out = capsys.readouterr().out
    assert f"warning: {path}: only 1 archetype(s) to match cells to" in out
    assert out.index("only 1 archetype") < out.index(f"{SAMPLE_ID}:")  # said when the bank is read
    assert (tmp_path / "out" / f"{SAMPLE_ID}_labels.tif").is_file()  # flagged, not refused



def test_blank_glass_holds_no_tissue_but_one_nucleus_or_a_dark_background_does():
    from bundle.detect import holds_tissue

    glass = torch.full((3, 400, 400), 0.93)
    glass[1] -= 0.02  # a faint tint, as real glass has
    assert not holds_tissue(glass)
    one = glass.clone()
    one[:, 200:212, 200:212] = torch.tensor([0.35, 0.2, 0.55])[:, None, None]  # one small nucleus
    assert holds_tissue(one)
    assert holds_tissue(torch.zeros(1, 400, 400))  # fluorescence: a dark background is not glass
    image, _ = load_sample(list_dataset(SAMPLE)[0])
    assert holds_tissue(image)


def test_regions_of_blank_glass_cost_no_student_pass_and_change_no_cell(monkeypatch):
    # the sample on a slide of glass: only the regions that hold it are read by the student
    import bundle.inferer as inferer_module

    inferer, network = shipped_workflow()
    image, _ = load_sample(list_dataset(SAMPLE)[0])
    slide = torch.full((3, 1024, 1024), 0.93)
    slide[:, 384:640, 384:640] = image
    monkeypatch.setattr(inferer_module, "TILE", 256)
    passes = []
    monkeypatch.setattr(inferer_module, "student_maps", lambda *a: passes.append(1) or student_maps(*a))
    skipping = inferer.annotate(slide, network)
    assert 0 < len(passes) < len(inferer_module.region_grid((1024, 1024))) - 4
    monkeypatch.setattr(inferer_module, "holds_tissue", lambda image: True)  # every region read by the student
    reading_all = inferer.annotate(slide, network)
    assert skipping.labels.max() > 20 and np.array_equal(skipping.labels, reading_all.labels)
