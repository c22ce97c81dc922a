"""Stitching warped masks into one label map, and the files a user opens."""

import csv
import json

import numpy as np
import pytest
import tifffile
import torch

from skimage.draw import polygon as draw_polygon
from skimage.measure import find_contours

from bundle.outputs import cell_geometries, cell_records, without_collinear_points, write_asap_xml, write_outputs
from bundle.stitch import CELL_COLUMNS, Annotation, cells_from_tensor, cells_to_tensor, regions, stitch


def disk(p=16, r=4.0, centre=(8, 8)):
    yy, xx = np.mgrid[:p, :p]
    return torch.from_numpy(((yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= r * r).astype(np.float32))[None]


def test_the_most_confident_cell_is_placed_first_and_a_second_find_of_it_is_a_duplicate():
    masks = torch.stack([disk(), disk(), disk()])
    centres = np.array([[20, 20], [21, 20], [40, 40]])  # cells 0 and 1 are the same nucleus
    out = stitch(masks, centres, (64, 64), confidence=torch.tensor([0.5, 0.9, 0.7]))
    assert list(out.kept) == [1, 2]  # cell 1 is more confident than cell 0
    assert out.duplicates == {0: 1}  # never counted twice, never lost silently
    assert set(np.unique(out.labels)) == {0, 1, 2}


def test_partly_overlapping_cells_both_stay_and_share_no_pixel():
    masks = torch.stack([disk(r=5), disk(r=5)])
    out = stitch(masks, np.array([[20, 20], [20, 27]]), (64, 64), confidence=torch.tensor([1.0, 0.9]))
    assert len(out.kept) == 2 and out.duplicates == {}
    assert (out.labels == 1).sum() > (out.labels == 2).sum() > 0


def test_cells_at_the_border_are_clipped_and_empty_masks_are_reported():
    masks = torch.stack([disk(), torch.zeros(1, 16, 16)])
    out = stitch(masks, np.array([[0, 0], [30, 30]]), (40, 50), confidence=torch.tensor([1.0, 1.0]))
    assert out.labels.shape == (40, 50)
    assert 0 < (out.labels == 1).sum() < disk().sum()
    assert out.empty == [1]


def test_stitching_is_deterministic_under_ties():
    masks = torch.stack([disk(), disk()])
    a = stitch(masks, np.array([[20, 20], [20, 21]]), (64, 64), confidence=torch.ones(2))
    b = stitch(masks, np.array([[20, 20], [20, 21]]), (64, 64), confidence=torch.ones(2))
    assert np.array_equal(a.labels, b.labels) and list(a.kept) == [0]


def annotation_of(labels):
    ids = [int(i) for i in np.unique(labels) if i]
    cells = {k: [] for k in CELL_COLUMNS}
    for i in ids:
        rows, cols = np.nonzero(labels == i)
        for k, v in zip(CELL_COLUMNS, (i, rows.mean(), cols.mean(), len(rows), 30.0, 0.1, 3, 0.0, 0.2)):
            cells[k].append(v)
    return Annotation(labels=labels, cells=cells, seconds={})


def test_outputs_agree_with_the_label_map(tmp_path):
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 5:20] = 1
    labels[25:35, 40:55] = 2
    paths = write_outputs(annotation_of(labels), torch.rand(3, 40, 60), tmp_path, "img")
    assert sorted(p.name for p in paths) == ["img.geojson", "img_cells.csv", "img_labels.tif", "img_overlay.png"]
    written = tifffile.imread(tmp_path / "img_labels.tif")
    assert written.dtype == np.uint16 and np.array_equal(written, labels)
    geo = json.loads((tmp_path / "img.geojson").read_text())
    assert geo["type"] == "FeatureCollection" and len(geo["features"]) == 2
    feature = geo["features"][1]
    assert feature["properties"]["classification"]["name"] == "Nucleus"
    xs, ys = np.array(feature["geometry"]["coordinates"][0]).T
    assert 39 <= xs.min() and xs.max() <= 55 and 24 <= ys.min() and ys.max() <= 35  # x = column, y = row
    with open(tmp_path / "img_cells.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["id"]) for r in rows] == [1, 2]
    assert [int(r["area"]) for r in rows] == [150, 150]


def shoelace_area(ring) -> float:
    x, y = np.asarray(ring, float).T
    return 0.5 * abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))


def test_geojson_polygons_drop_only_points_on_straight_runs():
    mask = np.zeros((30, 30), np.float32)
    mask[5:20, 5:25] = 1
    mask[12:20, 15:25] = 0  # an L: six corners, long straight runs
    mask[22:26, 8:11] = 1  # and a small separate block
    rings = find_contours(np.pad(mask, 1), 0.5)
    assert len(rings) == 2
    for ring in rings:
        kept = without_collinear_points(ring)
        assert np.array_equal(kept[0], kept[-1])  # still closed
        # the L keeps its 6 corners, each cut by one diagonal step: 12 points + the closing one, of 71
        assert len(kept) == 13 if len(ring) > 50 else len(kept) < len(ring)
        assert shoelace_area(kept) == pytest.approx(shoelace_area(ring))  # the same polygon
        assert {tuple(p) for p in kept} <= {tuple(p) for p in ring}  # no point moved or invented


def rasterised(geometry: dict, shape) -> np.ndarray:
    """The pixels whose centres lie inside a GeoJSON Polygon or MultiPolygon, holes cut out. QuPath's grid: pixel
    (row, col) is the unit square from [x, y] = [col, row], so its centre is at [col + 0.5, row + 0.5]."""
    polygons = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    inside = np.zeros(shape, bool)
    for outer, *holes in polygons:
        for ring, value in [(outer, True)] + [(hole, False) for hole in holes]:
            x, y = np.asarray(ring, float).T
            rr, cc = draw_polygon(y - 0.5, x - 0.5, shape)
            inside[rr, cc] = value
    return inside


def test_every_cell_geometry_covers_exactly_its_label_pixels():
    labels = np.zeros((40, 60), np.int32)
    labels[5:15, 5:20] = 1
    yy, xx = np.mgrid[:40, :60]
    labels[(yy - 20) ** 2 + (xx - 30) ** 2 <= 36] = 2
    labels[25:35, 40:55] = 3
    labels[28:31, 45:49] = 0  # a hole in cell 3
    labels[30:34, 5:9] = labels[30:33, 12:15] = 4  # cell 4 in two pieces, as stitching can leave a cell
    geometries = cell_geometries(labels)
    assert sorted(geometries) == [1, 2, 3, 4]
    assert geometries[4]["type"] == "MultiPolygon" and len(geometries[4]["coordinates"]) == 2
    assert geometries[3]["type"] == "Polygon" and len(geometries[3]["coordinates"]) == 2  # outer ring and the hole
    for label, geometry in geometries.items():
        assert np.array_equal(rasterised(geometry, labels.shape), labels == label), label


def test_geometries_sit_on_qupaths_pixel_grid():
    labels = np.zeros((20, 30), np.int32)
    labels[5:15, 5:20] = 1  # rows 5..14, columns 5..19: the square x in [5, 20], y in [5, 15] on QuPath's grid
    x, y = np.asarray(cell_geometries(labels)[1]["coordinates"][0]).T
    assert (x.min(), x.max(), y.min(), y.max()) == (5, 20, 5, 15)


def test_the_written_geojson_reads_back_as_the_same_label_map(tmp_path):
    from bundle.data import read_qupath_geojson

    labels = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    labels[(yy - 12) ** 2 + (xx - 14) ** 2 <= 40] = 1
    labels[20:33, 30:37] = 2
    labels[(yy - 25) ** 2 + (xx - 48) ** 2 <= 20] = 3
    write_outputs(annotation_of(labels), torch.rand(3, 40, 60), tmp_path, "img")
    assert np.array_equal(read_qupath_geojson(tmp_path / "img.geojson", labels.shape), labels)


def test_the_asap_xml_for_qupath_reads_back_as_the_same_label_map_with_the_regions_offset(tmp_path):
    import xml.etree.ElementTree as ET

    from bundle.data import read_instances

    labels = np.zeros((40, 60), np.int32)
    yy, xx = np.mgrid[:40, :60]
    labels[(yy - 12) ** 2 + (xx - 14) ** 2 <= 40] = 1
    labels[20:33, 30:37] = 2
    labels[(yy - 25) ** 2 + (xx - 48) ** 2 <= 20] = 3
    # the cells of a region whose corner is at x = 100, y = 7 of a larger image, as QuPath asks for one
    write_asap_xml(cell_records(annotation_of(labels), offset=(100, 7)), tmp_path / "cells.xml", (100, 7, 60, 40))
    root = ET.parse(tmp_path / "cells.xml").getroot()
    assert [a.get("Name") for a in root.iter("Annotation")] == ["Nucleus"] * 3  # QuPath's class for each polygon
    whole = read_instances(tmp_path / "cells.xml", shape=(47, 160))
    assert np.array_equal(whole[7:, 100:], labels) and not whole[:7].any() and not whole[:, :100].any()


def test_cell_records_carry_the_measurements_of_the_csv():
    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6], labels[10:15, 10:15] = 1, 2
    records = cell_records(annotation_of(labels))
    assert [r["label"] for r in records] == [1, 2] and [r["area_px"] for r in records] == [16, 25]
    assert records[1]["centroid"] == [12.5, 12.5]  # the centre of pixel (12, 12), on QuPath's grid


def test_with_a_pixel_size_the_label_tiff_states_it_and_areas_come_in_square_micrometres_too(tmp_path):
    from bundle.data import pixel_size_um

    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6], labels[10:15, 10:15] = 1, 2
    write_outputs(annotation_of(labels), torch.rand(3, 20, 20), tmp_path, "img", pixel_size=0.5)
    assert pixel_size_um(tmp_path / "img_labels.tif") == pytest.approx(0.5)  # what QuPath and Fiji read
    with open(tmp_path / "img_cells.csv") as f:
        assert [float(row["area_um2"]) for row in csv.DictReader(f)] == [4.0, 6.25]
    features = json.loads((tmp_path / "img.geojson").read_text())["features"]
    assert [feature["properties"]["measurements"]["Area µm^2"] for feature in features] == [4.0, 6.25]
    write_outputs(annotation_of(labels), torch.rand(3, 20, 20), tmp_path / "px", "img")  # none known: pixels only
    with open(tmp_path / "px" / "img_cells.csv") as f:
        assert "area_um2" not in next(csv.reader(f))
    assert pixel_size_um(tmp_path / "px" / "img_labels.tif") is None


def test_each_feature_has_a_stable_uuid_and_its_label_as_a_measurement(tmp_path):
    import uuid

    labels = np.zeros((20, 20), np.int32)
    labels[2:6, 2:6], labels[10:15, 10:15] = 1, 2
    features = []
    for run in ("a", "b"):
        write_outputs(annotation_of(labels), torch.rand(3, 20, 20), tmp_path / run, "img")
        features.append(json.loads((tmp_path / run / "img.geojson").read_text())["features"])
    ids = [feature["id"] for feature in features[0]]
    assert all(str(uuid.UUID(i)) == i for i in ids) and len(set(ids)) == 2  # QuPath keeps only UUIDs
    assert ids == [feature["id"] for feature in features[1]]  # rerunning an image gives the same file
    assert [feature["properties"]["measurements"]["Label"] for feature in features[0]] == [1, 2]


def test_two_pieces_that_touch_only_at_a_corner_are_both_kept():
    labels = np.zeros((12, 12), np.int32)
    labels[2:5, 2:5] = labels[5:8, 5:8] = 1
    geometry = cell_geometries(labels)[1]
    assert np.array_equal(rasterised(geometry, labels.shape), labels == 1)


def test_a_users_corrected_cells_replace_the_cells_found_under_them():
    from bundle.stitch import with_corrections

    found = np.zeros((30, 40), np.int32)
    found[2:8, 2:8] = 1  # redrawn by the user: replaced
    found[10:20, 10:16] = 2  # touched by a user's cell: keeps its other pixels
    found[22:28, 30:38] = 3  # untouched
    corrected = np.zeros_like(found)
    corrected[1:9, 1:10] = 5
    corrected[10:20, 15:22] = 9
    out = with_corrections(annotation_of(found), corrected)
    assert out.labels.max() == 4 and out.cells["id"] == [1, 2, 3, 4]
    assert np.array_equal(out.labels == 3, corrected == 5) and np.array_equal(out.labels == 4, corrected == 9)
    assert (out.labels == 1).sum() == 10 * 5 and np.array_equal(out.labels == 2, found == 3)
    assert out.cells["area"] == [50, 48, 72, 70] and out.cells["archetype_id"][2:] == [-1, -1]
    assert out.cells["orientation_deg"][2] == pytest.approx(0.0) and out.cells["uncertainty"][2:] == [0.0, 0.0]
    assert out.cells["centroid_row"][3] == pytest.approx(14.5) and out.cells["centroid_col"][3] == pytest.approx(18.0)


def test_the_per_cell_table_travels_as_one_tensor_and_comes_back_unchanged():
    cells = annotation_of(np.array([[0, 1], [2, 2]], np.int32)).cells
    table = cells_to_tensor(cells)
    assert table.shape == (2, len(CELL_COLUMNS)) and table.dtype == torch.float64
    back = cells_from_tensor(table)
    assert back == cells and all(isinstance(v, int) for v in back["id"] + back["area"] + back["archetype_id"])
    assert cells_from_tensor(cells_to_tensor({k: [] for k in CELL_COLUMNS})) == {k: [] for k in CELL_COLUMNS}


def test_a_failing_writer_leaves_no_partial_outputs(tmp_path, monkeypatch):
    import bundle.outputs as outputs

    def broken(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(outputs, "write_overlay", broken)
    with pytest.raises(OSError):
        write_outputs(annotation_of(np.ones((8, 8), np.int32)), torch.rand(3, 8, 8), tmp_path, "img")
    assert list(tmp_path.iterdir()) == []


def test_an_image_without_cells_gives_empty_outputs(tmp_path):
    write_outputs(annotation_of(np.zeros((20, 20), np.int32)), torch.rand(3, 20, 20), tmp_path, "empty")
    assert json.loads((tmp_path / "empty.geojson").read_text())["features"] == []
    assert (tmp_path / "empty_cells.csv").read_text().strip() == ",".join(CELL_COLUMNS)


def test_the_region_cores_cover_a_large_image_once_and_each_region_adds_its_margin_inside_the_image():
    shape, tile, margin = (300, 520), 128, 40
    cover = np.zeros(shape, int)
    grid = regions(shape, tile, margin)
    for (r0, r1, c0, c1), (q0, q1, p0, p1) in grid:
        cover[r0:r1, c0:c1] += 1
        assert r1 - r0 <= tile and c1 - c0 <= tile
        assert (q0, p0) == (max(r0 - margin, 0), max(c0 - margin, 0))
        assert (q1, p1) == (min(r1 + margin, shape[0]), min(c1 + margin, shape[1]))
    assert (cover == 1).all()
    assert len(grid) == 3 * 5
