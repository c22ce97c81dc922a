"""Scale: an image is annotated at the bank's pixel size, whatever its own, and its outputs come back in its own
pixels."""

import csv
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch

from bundle.data import list_dataset, load_sample
from bundle.scale import labels_at, reading_plan, resample

sys.path.insert(0, str(Path(__file__).parent))
from test_inference import SAMPLE, run_inference  # noqa: E402


@pytest.mark.parametrize("levels_um, bank_um, level, zoom", [
    ([0.25, 0.5, 1.0], 0.5, 1, 1.0),     # a pyramid level at the bank's scale is read as it is
    ([0.26, 0.52], 0.25, 0, 1.0),        # within SAME_SCALE: the same magnification from another scanner
    ([0.5, 1.0], 0.25, 0, 2.0),          # a 20x slide for a 40x bank: level 0, zoomed in
    ([0.25, 1.0, 4.0], 0.5, 0, 0.5),     # an SVS pyramid (quarters) for a 20x bank: level 0 reduced, not level 1
    ([0.25, 0.5], None, 0, 1.0),         # a bank that states no pixel size: level 0 as it is
])
def test_an_image_is_read_from_the_level_that_matches_the_bank_s_pixel_size(levels_um, bank_um, level, zoom):
    shapes = [(int(8000 * levels_um[0] / s), int(8000 * levels_um[0] / s)) for s in levels_um]
    assert reading_plan(shapes, levels_um[0], bank_um) == (level, pytest.approx(zoom))
    assert reading_plan(shapes, None, bank_um) == (0, 1.0)  # an image that states none: as it is


@pytest.mark.parametrize("zoom", [2.0, 0.5])
def test_resampling_keeps_the_image_where_it_was_and_labels_come_back_to_their_pixels(zoom):
    image = torch.zeros(1, 64, 64)
    image[:, 20:30, 40:50] = 1.0  # a bright square, rows 20-29, columns 40-49
    h, w = round(64 * zoom), round(64 * zoom)
    zoomed = resample(lambda rows, cols: image[:, rows, cols], (64, 64), zoom, slice(0, h), slice(0, w))
    assert zoomed.shape == (1, h, w)
    rows, cols = np.nonzero(zoomed[0].numpy() > 0.5)
    # pixel centres map to pixel centres: the square's centre (24.5, 44.5) lands at (25 zoom - 0.5, 45 zoom - 0.5)
    assert rows.mean() == pytest.approx(25 * zoom - 0.5, abs=0.5) and cols.mean() == pytest.approx(45 * zoom - 0.5,
                                                                                                      abs=0.5)
    back = labels_at((zoomed[0].numpy() > 0.5).astype(np.int32), np.arange(64), np.arange(64), 1 / zoom)
    assert np.array_equal(back, (image[0].numpy() > 0.5).astype(np.int32))


def cell_count(out: Path, image_id: str) -> int:
    with open(out / f"{image_id}_cells.csv", newline="") as handle:
        return sum(1 for _ in csv.DictReader(handle))


def test_a_20x_tile_is_annotated_at_the_bank_s_40x_and_its_outputs_are_in_its_own_pixels(tmp_path):
    from skimage.transform import rescale

    image, _ = load_sample(list_dataset(SAMPLE)[0])
    half = (rescale(image.permute(1, 2, 0).numpy(), 0.5, channel_axis=-1) * 255).round().astype(np.uint8)
    folder = tmp_path / "images"
    folder.mkdir()
    tifffile.imwrite(folder / "20x.tif", half, photometric="rgb", resolution=(1e4 / 0.5, 1e4 / 0.5),
                     resolutionunit="CENTIMETER")
    run_inference(output_dir=str(tmp_path / "at40x"))  # the sample as it is, 40x
    run_inference(dataset_dir=str(folder), output_dir=str(tmp_path / "at20x"))
    run_inference(dataset_dir=str(folder), output_dir=str(tmp_path / "as_it_is"), pixel_size=0.25)  # a wrong claim
    at_40x = cell_count(tmp_path / "at40x", list_dataset(SAMPLE)[0].image_id)
    at_20x, as_it_is = cell_count(tmp_path / "at20x", "20x"), cell_count(tmp_path / "as_it_is", "20x")
    assert abs(at_20x - at_40x) <= 0.15 * at_40x and as_it_is < 0.75 * at_40x

    labels = tifffile.imread(tmp_path / "at20x" / "20x_labels.tif")
    assert labels.shape == half.shape[:2] and labels.max() > 0
    with open(tmp_path / "at20x" / "20x_cells.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert max(float(row["centroid_row"]) for row in table) < half.shape[0]
    assert sum(int(row["area"]) for row in table) == pytest.approx((labels > 0).sum(), rel=0.05)
