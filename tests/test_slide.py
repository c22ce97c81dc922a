"""Slides: a TIFF too large to hold is read region by region, written as it goes, and continued after a kill, with
the same cells as the image annotated in memory."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from monai.bundle import ConfigParser

import bundle.data as data
import bundle.inferer as inferer_module
import bundle.slide as slide
from bundle.checkpoint import load_weights
from bundle.data import DataError, image_datalist, list_dataset, load_sample, read_image
from bundle.outputs import write_csv, write_geojson

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "docs" / "sample"


def sample_mosaic() -> np.ndarray:
    """The embedded sample as a 2 x 2 mosaic, (H, W, 3) uint8."""
    image, _ = load_sample(list_dataset(SAMPLE)[0])
    mosaic = torch.cat([torch.cat([image, image.flip(2)], 2)] * 2, 1)
    return (mosaic.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="module")
def workflow():
    parser = ConfigParser(ConfigParser.load_config_file(str(ROOT / "configs" / "inference.yaml")))
    parser.update({"bundle_root": str(ROOT), "device": "$torch.device('cpu')"})
    inferer = parser.get_parsed_content("inferer")
    network = load_weights(parser.get_parsed_content("network_def"), ROOT / "models" / "model.pt")
    return inferer, network


@pytest.fixture
def small_regions(monkeypatch):
    """Regions, the slide threshold and the pyramid's tiles shrunk, so that the sample's mosaic is a slide of 16
    regions with a pyramid of three levels."""
    monkeypatch.setattr(inferer_module, "TILE", 128)
    monkeypatch.setattr(data, "SLIDE_PIXELS", 100 * 100)
    monkeypatch.setattr(slide, "PYRAMID_TILE", 64)


@pytest.fixture
def mosaic_folder(tmp_path):
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "mosaic.tif", sample_mosaic(), photometric="rgb", tile=(64, 64))
    return folder


def test_a_tiff_above_slide_pixels_is_a_slide_and_the_evaluator_never_reads_it(mosaic_folder, monkeypatch):
    tifffile.imwrite(mosaic_folder / "tile.tif", sample_mosaic()[:90, :90], photometric="rgb")
    monkeypatch.setattr(data, "SLIDE_PIXELS", 100 * 100)
    assert [Path(p).name for p in slide.slide_paths(mosaic_folder)] == ["mosaic.tif"]
    assert [Path(d["image"]).name for d in image_datalist(mosaic_folder)] == ["tile.tif"]


@pytest.mark.parametrize("layout", ["tiled", "striped", "planar", "16 bit", "pyramid", "JPEG tiles", "LZW"])
def test_a_region_of_a_slide_reads_as_the_same_region_of_the_whole_image(tmp_path, layout):
    pixels = sample_mosaic()
    path = tmp_path / "slide.tif"
    if layout == "tiled":
        tifffile.imwrite(path, pixels, photometric="rgb", tile=(64, 64))
    elif layout == "striped":
        tifffile.imwrite(path, pixels, photometric="rgb", rowsperstrip=16)
    elif layout == "planar":
        tifffile.imwrite(path, np.moveaxis(pixels, -1, 0), photometric="rgb", planarconfig="separate")
    elif layout == "16 bit":
        tifffile.imwrite(path, pixels.astype(np.uint16) * 257, photometric="rgb", tile=(64, 64))
    elif layout == "JPEG tiles":  # as SVS files and most scanners store them (decoded by imagecodecs)
        tifffile.imwrite(path, pixels, photometric="rgb", tile=(64, 64), compression="jpeg")
    elif layout == "LZW":  # as the MoNuSeg tiles are stored
        tifffile.imwrite(path, pixels, photometric="rgb", tile=(64, 64), compression="lzw")
    else:  # full resolution with a half-resolution level, as slide scanners write them
        with tifffile.TiffWriter(path) as tif:
            tif.write(pixels, photometric="rgb", tile=(64, 64), subifds=1)
            tif.write(pixels[::2, ::2], photometric="rgb", tile=(64, 64), subfiletype=1)
    whole = read_image(path)
    with slide.LazyImage(path) as image:
        assert image.shape == tuple(whole.shape)
        region = image[:, 70:203, 33:301]
    assert torch.equal(region, whole[:, 70:203, 33:301])


def half_scale_mosaic() -> np.ndarray:
    """The sample mosaic at half its scale (a 20x scan of the 40x tissue), (H/2, W/2, 3) uint8."""
    from skimage.transform import rescale

    return (rescale(sample_mosaic(), 0.5, channel_axis=-1) * 255).round().astype(np.uint8)


@pytest.mark.parametrize("zoom_um", [0.5, 0.15])
def test_a_region_of_a_resampled_slide_reads_as_the_same_region_of_the_whole_slide_resampled(tmp_path, zoom_um):
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, sample_mosaic(), photometric="rgb", tile=(64, 64))
    with slide.LazyImage(path, pixel_size=zoom_um, bank_pixel_size=0.25) as image:
        assert image.zoom == pytest.approx(zoom_um / 0.25)
        assert image.shape[1:] == (round(512 * image.zoom),) * 2 and image.to_level_zero == pytest.approx(1 / image.zoom)
        whole = image[:, 0 : image.shape[1], 0 : image.shape[2]]
        region = image[:, 70:203, 33:301]
    # no seam where two regions meet (up to the float rounding of the sampling grid)
    assert torch.allclose(region, whole[:, 70:203, 33:301], atol=1e-4)


def test_a_20x_slide_gets_the_cells_of_the_40x_image_in_its_own_pixels(workflow, small_regions, tmp_path):
    inferer, network = workflow
    tifffile.imwrite(tmp_path / "40x.tif", sample_mosaic(), photometric="rgb", tile=(64, 64),
                     resolution=(1e4 / 0.25, 1e4 / 0.25), resolutionunit="CENTIMETER")
    tifffile.imwrite(tmp_path / "20x.tif", half_scale_mosaic(), photometric="rgb", tile=(64, 64),
                     resolution=(1e4 / 0.5, 1e4 / 0.5), resolutionunit="CENTIMETER")
    inferer.setup()
    assert inferer.bank_pixel_size == 0.25  # the shipped bank's MoNuSeg tiles: 40x
    at_40x = slide.annotate_slide(inferer, network, tmp_path / "40x.tif", tmp_path / "out40")
    at_20x = slide.annotate_slide(inferer, network, tmp_path / "20x.tif", tmp_path / "out20")
    with pytest.MonkeyPatch.context() as patch:  # the 20x slide as it is: cells half the bank's size
        patch.setattr(inferer, "bank_pixel_size", None)
        as_it_is = slide.annotate_slide(inferer, network, tmp_path / "20x.tif", tmp_path / "as_it_is")
    assert abs(at_20x["cells"] - at_40x["cells"]) <= 0.1 * at_40x["cells"] and as_it_is["cells"] < 0.75 * at_40x["cells"]

    # in the 20x slide's own pixels: its label pyramid's level 0, the CSV's centroids, the GeoJSON's outlines
    with tifffile.TiffFile(tmp_path / "out20" / "20x_labels.ome.tif") as tif:
        labels = tif.series[0].levels[0].asarray()
    assert labels.shape == (256, 256) and labels.max() == at_20x["cells"]
    table = np.genfromtxt(tmp_path / "out20" / "20x_cells.csv", delimiter=",", names=True)
    assert table["centroid_row"].max() < 256 and table["centroid_col"].max() < 256
    outline = np.concatenate([np.array(f["geometry"]["coordinates"][0]) for f in
                              json.loads((tmp_path / "out20" / "20x.geojson").read_text())["features"]
                              if f["geometry"]["type"] == "Polygon"])
    assert outline.min() >= 0 and outline.max() <= 256
    assert table["area"].sum() == pytest.approx((labels > 0).sum(), rel=0.02)  # pixels of the 20x slide
    big = np.genfromtxt(tmp_path / "out40" / "40x_cells.csv", delimiter=",", names=True)
    assert table["area_um2"].mean() == pytest.approx(big["area_um2"].mean(), rel=0.1)


def test_a_slide_that_is_not_an_image_is_one_line(tmp_path):
    path = tmp_path / "stack.tif"
    tifffile.imwrite(path, np.zeros((5, 64, 64, 7), np.uint8))
    with pytest.raises(DataError, match="stack.tif"):
        slide.LazyImage(path)


def annotate_in_memory(inferer, network, path, out: Path):
    annotation = inferer.annotate(read_image(path), network)
    write_geojson(annotation, out / "memory.geojson", "mosaic")
    write_csv(annotation.cells, out / "memory.csv")
    return annotation


def test_a_slide_gets_the_cells_and_files_of_the_image_annotated_in_memory(workflow, small_regions, mosaic_folder,
                                                                          tmp_path):
    inferer, network = workflow
    out = tmp_path / "out"
    summary = slide.annotate_slide(inferer, network, mosaic_folder / "mosaic.tif", out)
    memory = annotate_in_memory(inferer, network, mosaic_folder / "mosaic.tif", tmp_path)

    assert sorted(p.name for p in out.iterdir()) == ["mosaic.geojson", "mosaic_cells.csv", "mosaic_labels.ome.tif"]
    assert summary["cells"] == memory.labels.max() > 50 and summary["regions"] == 16
    with tifffile.TiffFile(out / "mosaic_labels.ome.tif") as tif:
        assert tif.is_ome
        levels = tif.series[0].levels
        assert len(levels) == 3
        level0 = levels[0].asarray()
        assert np.array_equal(level0, memory.labels)
        # each level of the pyramid halves the one above, nearest label (never a blend of two)
        for k, level in enumerate(levels[1:], 1):
            assert np.array_equal(level.asarray(), memory.labels[:: 2 ** k, :: 2 ** k])
    assert (out / "mosaic_cells.csv").read_text() == (tmp_path / "memory.csv").read_text()
    assert json.loads((out / "mosaic.geojson").read_text()) == json.loads((tmp_path / "memory.geojson").read_text())


def killed_at(index: int, regions_annotated):
    """``ArchetypeInferer.regions_annotated`` of a run killed once region ``index`` is in the label map, before the
    slide writer gets it."""
    def killed(self, *args, **kwargs):
        for region in regions_annotated(self, *args, **kwargs):
            if region.index == index:
                raise KeyboardInterrupt
            yield region

    return killed


def test_a_slide_run_killed_half_way_continues_from_its_finished_regions(workflow, small_regions, mosaic_folder,
                                                                         tmp_path, monkeypatch):
    inferer, network = workflow
    path, out = mosaic_folder / "mosaic.tif", tmp_path / "out"
    slide.annotate_slide(inferer, network, path, tmp_path / "uninterrupted")

    # killed while the seventh region is being written: its labels are in the map, its cells in no file yet
    annotated = type(inferer).regions_annotated
    monkeypatch.setattr(type(inferer), "regions_annotated", killed_at(6, annotated))
    with pytest.raises(KeyboardInterrupt):
        slide.annotate_slide(inferer, network, path, out)
    assert not (out / "mosaic.geojson").exists()  # nothing half-written is published
    assert json.loads((out / ".mosaic.slide-progress" / "progress.json").read_text())["regions"] == 6

    monkeypatch.setattr(type(inferer), "regions_annotated", annotated)
    summary = slide.annotate_slide(inferer, network, path, out)
    assert summary["resumed_from"] == 6
    assert sorted(p.name for p in out.iterdir()) == ["mosaic.geojson", "mosaic_cells.csv", "mosaic_labels.ome.tif"]
    for name in ("mosaic.geojson", "mosaic_cells.csv", "mosaic_labels.ome.tif"):
        assert (out / name).read_bytes() == (tmp_path / "uninterrupted" / name).read_bytes()


def test_a_slide_changed_since_the_unfinished_run_starts_over(workflow, small_regions, mosaic_folder, tmp_path,
                                                               monkeypatch, capsys):
    inferer, network = workflow
    path, out = mosaic_folder / "mosaic.tif", tmp_path / "out"
    annotated = type(inferer).regions_annotated
    monkeypatch.setattr(type(inferer), "regions_annotated", killed_at(3, annotated))
    with pytest.raises(KeyboardInterrupt):
        slide.annotate_slide(inferer, network, path, out)
    monkeypatch.setattr(type(inferer), "regions_annotated", annotated)
    tifffile.imwrite(path, sample_mosaic()[:, ::-1].copy(), photometric="rgb", tile=(64, 64))  # another image
    summary = slide.annotate_slide(inferer, network, path, out)
    assert summary["resumed_from"] == 0 and "starting over" in capsys.readouterr().out


def test_the_main_command_annotates_a_folder_of_a_slide_and_a_tile(small_regions, mosaic_folder, tmp_path):
    from monai.bundle import ConfigWorkflow

    tifffile.imwrite(mosaic_folder / "tile.tif", sample_mosaic()[:90, :90], photometric="rgb")
    out = tmp_path / "out"
    workflow = ConfigWorkflow(config_file=str(ROOT / "configs" / "inference.yaml"), workflow_type=None,
                              bundle_root=str(ROOT), device="$torch.device('cpu')", dataset_dir=str(mosaic_folder),
                              output_dir=str(out))
    workflow.initialize()
    workflow.run()
    assert sorted(p.name for p in out.iterdir()) == ["mosaic.geojson", "mosaic_cells.csv", "mosaic_labels.ome.tif",
                                                     "tile.geojson", "tile_cells.csv", "tile_labels.tif",
                                                     "tile_overlay.png"]


# the main command with regions shrunk as ``small_regions`` shrinks them (a subprocess cannot be monkeypatched), and a
# line saying how many regions this process annotated
SHRUNK_MAIN_COMMAND = """
import os, sys
import bundle.data as data, bundle.inferer as inferer, bundle.slide as slide
from monai.bundle import run

inferer.TILE, data.SLIDE_PIXELS, slide.PYRAMID_TILE = 128, 100 * 100, 64
found, count = inferer.ArchetypeInferer.region_found, []
def counted(self, *args, **kwargs):
    count.append(1)
    return found(self, *args, **kwargs)
inferer.ArchetypeInferer.region_found = counted
configs, dataset, out, root = sys.argv[1:]
run(run_id="run", init_id="initialize", final_id="finalize", config_file=configs.split(","), bundle_root=root,
    dataset_dir=dataset, output_dir=out, device="$torch.device('cpu')")
print(f"rank {os.environ.get('RANK', 0)} annotated {len(count)} regions")
"""


@pytest.mark.slow
def test_two_ranks_under_torchrun_annotate_one_slide_together_into_the_files_of_one_process(mosaic_folder, tmp_path):
    driver = tmp_path / "main.py"
    driver.write_text(SHRUNK_MAIN_COMMAND)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    configs = [str(ROOT / "configs" / name) for name in ("inference.yaml", "multi_gpu_inference.yaml")]
    one = subprocess.run([sys.executable, str(driver), configs[0], str(mosaic_folder), str(tmp_path / "one"), str(ROOT)],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                          "--nproc_per_node=2", str(driver), ",".join(configs), str(mosaic_folder), str(tmp_path / "two"),
                          str(ROOT)], capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]

    assert "rank 0 annotated 16 regions" in one.stdout  # the grid of ``small_regions``
    assert "rank 0 annotated 8 regions" in two.stdout and "rank 1 annotated 8 regions" in two.stdout
    files = sorted(p.name for p in (tmp_path / "one").iterdir())
    assert files == ["mosaic.geojson", "mosaic_cells.csv", "mosaic_labels.ome.tif"]
    assert files == sorted(p.name for p in (tmp_path / "two").iterdir())
    for name in files:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
