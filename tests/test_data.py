"""Specification of bundle.data: reading images, instance annotations and dataset folders.

All inputs are small synthetic files written to tmp_path. Shapes are deliberately
non-square and contents asymmetric, so a rows/columns swap cannot pass unnoticed.
"""

import json

import itk
import nibabel
import numpy as np
import pytest
import torch
from PIL import Image

from bundle.data import (
    DataError,
    Sample,
    list_dataset,
    load_sample,
    read_aperio_xml,
    read_image,
    read_instances,
    read_qupath_geojson,
)

H, W = 7, 11  # non-square on purpose
BRIGHT = (2, 8)  # (row, col) of the one bright pixel; (8, 2) does not exist in a 7-row image


def bright_rgb():
    array = np.zeros((H, W, 3), np.uint8)
    array[BRIGHT] = (255, 128, 0)
    return array


def write_png(path, array, mode=None):
    (Image.fromarray(array, mode) if mode else Image.fromarray(array)).save(path)
    return path


def aperio_xml(regions):
    """Aperio ImageScope XML with one <Region> per list of (x, y) vertices."""
    body = "".join(
        f'<Region Id="{i + 1}"><Vertices>'
        + "".join(f'<Vertex X="{x}" Y="{y}" Z="0"/>' for x, y in vertices)
        + "</Vertices></Region>"
        for i, vertices in enumerate(regions)
    )
    return f'<?xml version="1.0"?><Annotations><Annotation Id="1"><Regions>{body}</Regions></Annotation></Annotations>'


def box(col0, row0, col1, row1):
    """Closed rectangle outline as (x, y) = (column, row) vertices."""
    return [(col0, row0), (col1, row0), (col1, row1), (col0, row1)]


def feature(geometry_type, coordinates):
    return {"type": "Feature", "geometry": {"type": geometry_type, "coordinates": coordinates}, "properties": {}}


def write_json(path, data):
    path.write_text(json.dumps(data))
    return path


# --------------------------------------------------------------------------- images


def test_rgb_png_is_three_channels_scaled_to_unit_range(tmp_path):
    image = read_image(write_png(tmp_path / "a.png", bright_rgb()))
    assert image.dtype == torch.float32
    assert tuple(image.shape) == (3, H, W)
    assert torch.allclose(image[:, BRIGHT[0], BRIGHT[1]], torch.tensor([1.0, 128 / 255, 0.0]))
    assert image.sum() == pytest.approx(1.0 + 128 / 255)


def test_non_square_image_keeps_rows_first_orientation(tmp_path):
    image = read_image(write_png(tmp_path / "a.png", bright_rgb()))
    assert tuple(image.shape[1:]) == (H, W)
    rows, cols = torch.nonzero(image[0], as_tuple=True)
    assert (rows.tolist(), cols.tolist()) == ([BRIGHT[0]], [BRIGHT[1]])


def test_rgba_png_drops_alpha(tmp_path):
    rgba = np.concatenate([bright_rgb(), np.full((H, W, 1), 77, np.uint8)], axis=-1)
    image = read_image(write_png(tmp_path / "a.png", rgba))
    assert tuple(image.shape) == (3, H, W)
    assert image[0, BRIGHT[0], BRIGHT[1]] == 1.0
    assert image[:, 0, 0].tolist() == [0.0, 0.0, 0.0]  # alpha (77) did not leak into any channel


def test_where_an_rgba_image_is_transparent_is_read_with_it(tmp_path):
    from bundle.data import read_image_and_opacity

    rgba = np.full((20, 30, 4), 200, np.uint8)
    Image.fromarray(rgba).save(tmp_path / "opaque.png")
    assert read_image_and_opacity(tmp_path / "opaque.png")[1] is None  # nothing transparent: nothing to carry
    rgba[:5, :, 3] = 0
    Image.fromarray(rgba).save(tmp_path / "padded.png")
    image, opaque = read_image_and_opacity(tmp_path / "padded.png")
    assert image.shape == (3, 20, 30) and opaque.shape == (20, 30)
    assert not opaque[:5].any() and opaque[5:].all()


def test_grayscale_png_is_one_channel(tmp_path):
    grey = np.zeros((H, W), np.uint8)
    grey[BRIGHT] = 51
    image = read_image(write_png(tmp_path / "a.png", grey))
    assert tuple(image.shape) == (1, H, W)
    assert image[0, BRIGHT[0], BRIGHT[1]].item() == pytest.approx(0.2)


def test_grayscale_with_alpha_png_is_one_channel_of_grey(tmp_path):
    grey_alpha = np.zeros((H, W, 2), np.uint8)
    grey_alpha[..., 1] = 200
    grey_alpha[BRIGHT[0], BRIGHT[1], 0] = 255
    image = read_image(write_png(tmp_path / "a.png", grey_alpha, "LA"))
    assert tuple(image.shape) == (1, H, W)
    assert image[0, BRIGHT[0], BRIGHT[1]] == 1.0
    assert image.sum() == 1.0


def test_16_bit_png_is_divided_by_65535(tmp_path):
    grey = np.zeros((H, W), np.uint16)
    grey[BRIGHT] = 65535
    grey[0, 0] = 257
    image = read_image(write_png(tmp_path / "a.png", grey))
    assert tuple(image.shape) == (1, H, W)
    assert image[0, BRIGHT[0], BRIGHT[1]].item() == pytest.approx(1.0)
    assert image[0, 0, 0].item() == pytest.approx(257 / 65535)


@pytest.mark.parametrize("compression", [False, True], ids=["plain", "lzw"])
def test_tiff_written_by_itk_reads_rows_first(tmp_path, compression):
    path = tmp_path / "a.tif"
    itk.imwrite(itk.image_from_array(bright_rgb(), is_vector=True), str(path), compression=compression)
    image = read_image(path)
    assert tuple(image.shape) == (3, H, W)
    assert image[0, BRIGHT[0], BRIGHT[1]] == 1.0
    assert image[0].sum() == 1.0


def test_float_tiff_is_passed_through(tmp_path):
    array = np.zeros((H, W), np.float32)
    array[BRIGHT] = 0.25
    path = tmp_path / "a.tif"
    itk.imwrite(itk.image_from_array(array), str(path))
    image = read_image(path)
    assert tuple(image.shape) == (1, H, W)
    assert image[0, BRIGHT[0], BRIGHT[1]].item() == pytest.approx(0.25)


def test_missing_image_is_a_data_error_naming_it(tmp_path):
    with pytest.raises(DataError, match=r"nope\.png.*not found"):
        read_image(tmp_path / "nope.png")


def test_garbage_bytes_are_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"this is not a picture" * 20)
    with pytest.raises(DataError, match=r"garbage\.png"):
        read_image(path)


def test_truncated_png_is_a_data_error_naming_the_file(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    path = write_png(tmp_path / "cut.png", noise)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.png"):
        read_image(path)


def test_a_truncated_tiff_is_one_line_with_libtiffs_reason_and_no_chatter_on_stderr(tmp_path, capfd):
    import tifffile

    path = tmp_path / "cut.tif"
    tifffile.imwrite(path, np.random.default_rng(0).integers(0, 256, (300, 300, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as raised:
        read_image(path)
    message = str(raised.value)
    assert message.startswith(f"{path}: cannot read image") and "\n" not in message and "Read error" in message
    assert "TIFF" not in capfd.readouterr().err  # libtiff's warnings went into the message, not onto the terminal


# --------------------------------------------------------------------------- Aperio XML


def test_xml_vertex_x_is_column_and_y_is_row(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(aperio_xml([box(30, 2, 35, 6)]))  # columns 30-35, rows 2-6
    labels, n_degenerate = read_aperio_xml(path, (20, 40))
    assert labels.shape == (20, 40) and labels.dtype == np.int32
    assert n_degenerate == 0
    assert labels[4, 32] == 1
    assert labels[32 % 20, 4] == 0  # where a swapped reading (wrapped into the image) would put it
    rows, cols = np.nonzero(labels)
    assert rows.min() >= 2 and rows.max() <= 6
    assert cols.min() >= 30 and cols.max() <= 35


def test_xml_later_regions_are_drawn_over_earlier_ones(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(aperio_xml([box(2, 2, 12, 8), box(8, 4, 16, 10)]))
    labels, _ = read_aperio_xml(path, (12, 20))
    assert labels[3, 3] == 1  # only the first region
    assert labels[6, 10] == 2  # overlap: the second (later) region wins
    assert labels[9, 15] == 2


def test_xml_region_fully_covered_by_later_ones_disappears_and_ids_stay_consecutive(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(aperio_xml([box(5, 5, 6, 6), box(1, 1, 10, 10), box(12, 2, 15, 4)]))
    labels, n_degenerate = read_aperio_xml(path, (12, 20))
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert labels[5, 5] == 1 and labels[3, 13] == 2
    assert n_degenerate == 0  # painted over is not degenerate


def test_xml_degenerate_regions_are_skipped_and_counted(tmp_path):
    path = tmp_path / "a.xml"
    regions = [
        [(1, 1), (5, 5)],  # two vertices: not a polygon
        box(2, 2, 6, 6),
        box(100, 100, 110, 110),  # entirely outside the image: zero pixels
        [(3.2, 0.2), (3.8, 0.2), (3.5, 0.8)],  # sliver between pixel centres: zero pixels
        box(10, 2, 14, 6),
    ]
    path.write_text(aperio_xml(regions))
    labels, n_degenerate = read_aperio_xml(path, (12, 20))
    assert n_degenerate == 3
    assert labels[4, 4] == 1 and labels[4, 12] == 2  # ids consecutive among drawn regions
    assert labels.max() == 2


def test_xml_without_regions_gives_an_empty_map(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(aperio_xml([]))
    labels, n_degenerate = read_aperio_xml(path, (5, 6))
    assert labels.shape == (5, 6) and not labels.any() and n_degenerate == 0


def test_malformed_xml_is_a_data_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.xml"
    path.write_text("<Annotations><Region>")
    with pytest.raises(DataError, match=r"broken\.xml.*malformed XML"):
        read_aperio_xml(path, (5, 6))


def test_xml_vertex_without_numbers_is_a_data_error(tmp_path):
    path = tmp_path / "bad.xml"
    path.write_text(aperio_xml([[(1, 1), ("a", 2), (3, 3)]]))
    with pytest.raises(DataError, match=r"bad\.xml"):
        read_aperio_xml(path, (5, 6))


def test_read_instances_dispatches_xml_and_requires_a_shape(tmp_path):
    path = tmp_path / "a.xml"
    path.write_text(aperio_xml([box(30, 2, 35, 6)]))
    assert read_instances(path, (20, 40))[4, 32] == 1
    with pytest.raises(DataError, match=r"a\.xml.*shape"):
        read_instances(path)


def test_asap_xml_as_qupath_submits_it_is_read_on_qupaths_grid_and_its_rectangle_is_not_a_cell(tmp_path):
    # the region the user ran inference on (a Rectangle) and one cell: x 30..35, y 2..6 on QuPath's corner grid
    path = tmp_path / "a.xml"
    path.write_text(
        '<ASAP_Annotations><Annotations Name="" X="0" Y="0" W="0" H="0">'
        '<Annotation Name="Region" Type="Rectangle" PartOfGroup="Region"><Coordinates>'
        '<Coordinate Order="0" X="0" Y="0"/><Coordinate Order="1" X="40" Y="0"/><Coordinate Order="2" X="40" Y="20"/>'
        '<Coordinate Order="3" X="0" Y="20"/></Coordinates></Annotation>'
        '<Annotation Name="Nucleus" Type="Polygon" PartOfGroup="Nucleus"><Coordinates>'
        '<Coordinate Order="0" X="30" Y="2"/><Coordinate Order="1" X="35" Y="2"/><Coordinate Order="2" X="35" Y="6"/>'
        '<Coordinate Order="3" X="30" Y="6"/></Coordinates></Annotation>'
        '</Annotations></ASAP_Annotations>')
    labels = read_instances(path, (20, 40))
    expected = np.zeros((20, 40), np.int32)
    expected[2:6, 30:35] = 1  # pixel (row, col) is the unit square from (x, y) = (col, row)
    assert np.array_equal(labels, expected)


def test_a_16_bit_rgb_tiff_is_read_and_scaled_by_its_maximum(tmp_path):
    import tifffile

    pixels = np.random.default_rng(0).integers(0, 65536, (30, 40, 3)).astype(np.uint16)
    tifffile.imwrite(tmp_path / "a.tif", pixels, photometric="rgb")
    image = read_image(tmp_path / "a.tif")
    assert image.shape == (3, 30, 40)
    assert torch.allclose(image, torch.from_numpy(pixels.transpose(2, 0, 1) / 65535.0).float())


def test_an_rgb_tiff_stored_plane_by_plane_is_read_with_its_channels_last(tmp_path):
    import tifffile

    pixels = np.random.default_rng(0).integers(0, 256, (3, 30, 40)).astype(np.uint8)
    tifffile.imwrite(tmp_path / "a.tif", pixels, photometric="rgb", planarconfig="separate")
    assert torch.equal(read_image(tmp_path / "a.tif"), torch.from_numpy(pixels / 255.0).float())


def test_float_pixels_in_zero_to_one_are_read_and_others_refused_in_one_line(tmp_path):
    import tifffile

    pixels = np.random.default_rng(0).random((30, 40, 3)).astype(np.float32)
    tifffile.imwrite(tmp_path / "ok.tif", pixels, photometric="rgb")
    assert torch.equal(read_image(tmp_path / "ok.tif"), torch.from_numpy(pixels.transpose(2, 0, 1)))
    pixels[3, 4, 1], pixels[5, 6, 0] = np.nan, np.inf
    tifffile.imwrite(tmp_path / "nan.tif", pixels, photometric="rgb")
    with pytest.raises(DataError, match=r"nan\.tif: 2 pixels are NaN or infinite"):
        read_image(tmp_path / "nan.tif")
    tifffile.imwrite(tmp_path / "wide.tif", np.full((30, 40, 3), 200.0, np.float32), photometric="rgb")
    with pytest.raises(DataError, match=r"wide\.tif: float pixels must lie in \[0, 1\]"):
        read_image(tmp_path / "wide.tif")


def test_a_stack_of_pages_and_a_five_channel_image_are_refused_not_misread(tmp_path):
    import tifffile

    tifffile.imwrite(tmp_path / "pages.tif", np.zeros((5, 30, 40), np.uint8))
    with pytest.raises(DataError, match=r"pages\.tif: holds 5 pages or planes"):
        read_image(tmp_path / "pages.tif")
    tifffile.imwrite(tmp_path / "five.tif", np.zeros((30, 40, 5), np.uint8), photometric="minisblack",
                     planarconfig="contig", extrasamples=[0, 0, 0, 0])
    with pytest.raises(DataError, match=r"five\.tif: has 5 channels"):
        read_image(tmp_path / "five.tif")


# --------------------------------------------------------------------------- GeoJSON


def test_geojson_polygon_x_is_column_and_y_is_row(tmp_path):
    ring = [[30, 2], [35, 2], [35, 6], [30, 6], [30, 2]]
    path = write_json(tmp_path / "a.geojson", feature("Polygon", [ring]))
    labels = read_qupath_geojson(path, (20, 40))
    assert labels.shape == (20, 40) and labels.dtype == np.int32
    assert labels[4, 32] == 1
    assert labels[32 % 20, 4] == 0
    assert np.nonzero(labels)[0].max() <= 6


def test_geojson_polygon_hole_is_cleared(tmp_path):
    outer = [[1, 1], [13, 1], [13, 9], [1, 9], [1, 1]]
    hole = [[5, 3], [9, 3], [9, 7], [5, 7], [5, 3]]
    labels = read_qupath_geojson(write_json(tmp_path / "a.geojson", feature("Polygon", [outer, hole])), (12, 16))
    assert labels[2, 2] == 1
    assert labels[5, 7] == 0  # inside the hole
    assert labels[8, 12] == 1


def test_geojson_multipolygon_is_one_instance(tmp_path):
    part_a = [[[1, 1], [4, 1], [4, 4], [1, 4]]]
    part_b = [[[10, 6], [14, 6], [14, 9], [10, 9]]]
    labels = read_qupath_geojson(write_json(tmp_path / "a.json", feature("MultiPolygon", [part_a, part_b])), (12, 16))
    assert labels[2, 2] == 1 and labels[7, 12] == 1
    assert labels.max() == 1


def test_geojson_feature_collection_later_over_earlier_and_other_types_skipped(tmp_path):
    collection = {
        "type": "FeatureCollection",
        "features": [
            feature("Polygon", [[[1, 1], [10, 1], [10, 8], [1, 8]]]),
            feature("Point", [3, 3]),
            feature("Polygon", [[[6, 4], [14, 4], [14, 10], [6, 10]]]),
        ],
    }
    labels = read_qupath_geojson(write_json(tmp_path / "a.geojson", collection), (12, 16))
    assert labels[2, 2] == 1
    assert labels[6, 8] == 2
    assert labels.max() == 2


def test_geojson_list_of_features_is_accepted(tmp_path):
    features = [feature("Polygon", [[[1, 1], [4, 1], [4, 4], [1, 4]]]), feature("Polygon", [[[8, 1], [12, 1], [12, 4]]])]
    labels = read_instances(write_json(tmp_path / "a.geojson", features), (6, 14))
    assert labels.max() == 2


@pytest.mark.parametrize("text", ["{not json", '{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": 5}}', "42"])
def test_bad_geojson_is_a_data_error_naming_the_file(tmp_path, text):
    path = tmp_path / "bad.geojson"
    path.write_text(text)
    with pytest.raises(DataError, match=r"bad\.geojson"):
        read_qupath_geojson(path, (5, 6))


# --------------------------------------------------------------------------- label images


def instance_map():
    """Non-consecutive ids 5 and 9 on a non-square map."""
    labels = np.zeros((H, W), np.uint16)
    labels[1:3, 6:10] = 5
    labels[4:6, 0:2] = 9
    return labels


def assert_relabelled(labels):
    assert labels.dtype == np.int32 and labels.shape == (H, W)
    assert sorted(np.unique(labels).tolist()) == [0, 1, 2]
    assert labels[1, 7] == 1 and labels[5, 1] == 2  # order of the original ids kept


def test_png_label_image_is_relabelled_consecutively(tmp_path):
    assert_relabelled(read_instances(write_png(tmp_path / "l.png", instance_map())))


def test_tif_label_image_is_relabelled_consecutively(tmp_path):
    path = tmp_path / "l.tif"
    itk.imwrite(itk.image_from_array(instance_map()), str(path), compression=True)
    assert_relabelled(read_instances(path))


def test_nifti_label_image_is_relabelled_consecutively(tmp_path):
    path = tmp_path / "l.nii.gz"
    nibabel.save(nibabel.Nifti1Image(instance_map().astype(np.int16), np.eye(4)), str(path))
    assert_relabelled(read_instances(path, shape=(H, W)))


def test_rgb_label_image_gives_one_instance_per_non_black_colour(tmp_path):
    colours = np.zeros((H, W, 3), np.uint8)
    colours[1:3, 6:10] = (255, 0, 0)
    colours[4:6, 0:2] = (0, 0, 255)
    colours[0, 0] = (255, 0, 1)  # nearly the same red is still another instance
    labels = read_instances(write_png(tmp_path / "c.png", colours))
    assert labels.dtype == np.int32 and labels.shape == (H, W)
    assert labels.max() == 3
    assert labels[6, 10] == 0
    assert len({labels[1, 7], labels[5, 1], labels[0, 0]}) == 3
    assert len(np.unique(labels[1:3, 6:10])) == 1


def test_label_image_shape_mismatch_is_a_data_error_with_both_shapes(tmp_path):
    path = write_png(tmp_path / "l.png", instance_map())
    with pytest.raises(DataError, match=r"l\.png.*\(7, 11\).*\(11, 7\)"):
        read_instances(path, shape=(11, 7))


# --------------------------------------------------------------------------- dataset folders

ORGANS_CSV = "image_id,organ,official_split\nA,Lung,train\nB,Kidney,test\nC,lung,test\n"


def make_dataset(root, annotation="xml", organs_csv=ORGANS_CSV):
    (root / "images").mkdir(parents=True)
    for image_id in "ABC":
        write_png(root / "images" / f"{image_id}.png", bright_rgb())
        if annotation == "xml":
            (root / "annotations").mkdir(exist_ok=True)
            (root / "annotations" / f"{image_id}.xml").write_text(aperio_xml([box(7, 1, 9, 3)]))
        elif annotation == "labels":
            (root / "labels").mkdir(exist_ok=True)
            write_png(root / "labels" / f"{image_id}.png", instance_map())
    if organs_csv is not None:
        (root / "organs.csv").write_text(organs_csv)
    return root


def test_dataset_lists_samples_sorted_with_organ_and_split(tmp_path):
    samples = list_dataset(make_dataset(tmp_path))
    assert [s.image_id for s in samples] == ["A", "B", "C"]
    assert samples[0] == Sample("A", tmp_path / "images" / "A.png", tmp_path / "annotations" / "A.xml", "Lung", "train")


def test_dataset_split_filter(tmp_path):
    make_dataset(tmp_path)
    assert [s.image_id for s in list_dataset(tmp_path, split="test")] == ["B", "C"]
    assert [s.image_id for s in list_dataset(tmp_path, split="train")] == ["A"]


def test_dataset_organ_filter_ignores_case(tmp_path):
    make_dataset(tmp_path)
    assert [s.image_id for s in list_dataset(tmp_path, organ="LUNG")] == ["A", "C"]
    assert [s.image_id for s in list_dataset(tmp_path, split="test", organ="lung")] == ["C"]


def test_dataset_without_organs_csv_puts_every_image_in_every_split(tmp_path):
    make_dataset(tmp_path, organs_csv=None)
    for split in ("train", "test"):
        samples = list_dataset(tmp_path, split=split)
        assert [s.image_id for s in samples] == ["A", "B", "C"]
        assert all(s.split is None and s.organ is None for s in samples)


def test_dataset_with_labels_folder_loads_label_images(tmp_path):
    make_dataset(tmp_path, annotation="labels")
    sample = list_dataset(tmp_path)[1]
    assert sample.annotation_path == tmp_path / "labels" / "B.png"
    image, labels = load_sample(sample)
    assert tuple(image.shape) == (3, H, W)
    assert_relabelled(labels)


def test_load_sample_rasterises_xml_at_the_image_shape(tmp_path):
    image, labels = load_sample(list_dataset(make_dataset(tmp_path))[0])
    assert tuple(image.shape) == (3, H, W) and labels.shape == (H, W)
    assert labels[BRIGHT] == 1 and labels.max() == 1


def test_plain_folder_of_images_is_image_only(tmp_path):
    write_png(tmp_path / "x.png", bright_rgb())
    write_png(tmp_path / "w.png", bright_rgb())
    (tmp_path / "notes.txt").write_text("not an image")
    samples = list_dataset(tmp_path)
    assert [s.image_id for s in samples] == ["w", "x"]
    assert all(s.annotation_path is None for s in samples)
    with pytest.raises(DataError, match="no annotation"):
        load_sample(samples[0])


def test_missing_dataset_folder_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match=r"nowhere.*not found"):
        list_dataset(tmp_path / "nowhere")


def test_empty_dataset_folder_is_a_data_error(tmp_path):
    (tmp_path / "images").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_dataset(tmp_path)


def test_split_filter_leaving_nothing_names_the_filter_and_the_splits(tmp_path):
    make_dataset(tmp_path)
    with pytest.raises(DataError, match=r"split='val'.*\['test', 'train'\]"):
        list_dataset(tmp_path, split="val")


def test_organ_filter_leaving_nothing_names_the_filter_and_the_organs(tmp_path):
    make_dataset(tmp_path)
    with pytest.raises(DataError, match=r"organ='Liver'.*\['Kidney', 'Lung', 'lung'\]"):
        list_dataset(tmp_path, organ="Liver")
    with pytest.raises(DataError, match=r"organ='Kidney'.*split 'train'.*\['Lung'\]"):
        list_dataset(tmp_path, split="train", organ="Kidney")


def test_missing_image_of_a_sample_is_a_data_error_naming_it(tmp_path):
    sample = list_dataset(make_dataset(tmp_path))[0]
    sample.image_path.unlink()
    with pytest.raises(DataError, match=r"A\.png"):
        load_sample(sample)


def test_truncated_image_of_a_sample_is_a_data_error_naming_it(tmp_path):
    make_dataset(tmp_path)
    noise = np.random.default_rng(0).integers(0, 256, (64, 80, 3), dtype=np.uint8)
    path = write_png(tmp_path / "images" / "B.png", noise)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"B\.png"):
        load_sample(list_dataset(tmp_path)[1])


def test_missing_annotation_file_is_a_data_error(tmp_path):
    sample = list_dataset(make_dataset(tmp_path))[2]
    sample.annotation_path.unlink()
    with pytest.raises(DataError, match=r"C\.xml.*not found"):
        load_sample(sample)


def test_annotation_of_another_shape_is_a_data_error(tmp_path):
    make_dataset(tmp_path, annotation="labels")
    write_png(tmp_path / "labels" / "A.png", np.zeros((W, H), np.uint8))
    with pytest.raises(DataError, match=r"A\.png.*shape"):
        load_sample(list_dataset(tmp_path)[0])


def test_writing_a_file_again_clears_what_a_killed_run_left_and_spares_a_run_in_progress(tmp_path):
    import os
    import time

    from bundle.data import STALE_SECONDS, written_atomically

    killed = tmp_path / ".a_labels.tif.x1y2z3"  # the hidden folder of a run killed while writing a_labels.tif
    killed.mkdir()
    (killed / "0_a_labels.tif").write_bytes(b"half")
    old = time.time() - STALE_SECONDS - 60
    os.utime(killed, (old, old))
    running = tmp_path / ".a_labels.tif.q9w8e7"  # another run writing it now
    running.mkdir()
    other = tmp_path / ".b_labels.tif.x1y2z3"  # another file's: not this write's business
    other.mkdir()
    os.utime(other, (old, old))
    with written_atomically(tmp_path / "a_labels.tif") as (tmp,):
        tmp.write_bytes(b"whole")
    assert (tmp_path / "a_labels.tif").read_bytes() == b"whole"
    assert not killed.exists() and running.exists() and other.exists()


def test_the_pixel_size_an_image_states_is_read_unless_it_is_no_microscopes(tmp_path):
    import tifffile

    from bundle.data import pixel_size_um

    pixels = np.zeros((10, 10, 3), np.uint8)
    tifffile.imwrite(tmp_path / "40x.tif", pixels, photometric="rgb", resolution=(40000, 40000), resolutionunit=3)
    assert pixel_size_um(tmp_path / "40x.tif") == pytest.approx(0.25)  # 40,000 px per cm
    tifffile.imwrite(tmp_path / "72dpi.tif", pixels, photometric="rgb", resolution=(72, 72), resolutionunit=2)
    assert pixel_size_um(tmp_path / "72dpi.tif") is None  # a writer's default, 353 um: no microscope's
    Image.fromarray(pixels).save(tmp_path / "a.png", dpi=(50800, 50800))
    assert pixel_size_um(tmp_path / "a.png") == pytest.approx(0.5, rel=1e-3)
    Image.fromarray(pixels).save(tmp_path / "b.png")
    assert pixel_size_um(tmp_path / "b.png") is None


def test_a_slide_states_its_pixel_size_in_ome_metadata_or_an_aperio_description(tmp_path):
    import tifffile

    from bundle.data import pixel_size_um

    pixels = np.zeros((10, 10, 3), np.uint8)
    tifffile.imwrite(tmp_path / "a.ome.tif", pixels, photometric="rgb", ome=True,
                     metadata={"PhysicalSizeX": 500, "PhysicalSizeXUnit": "nm"})
    assert pixel_size_um(tmp_path / "a.ome.tif") == pytest.approx(0.5)
    aperio = "Aperio Image Library v12.0.15\r\n46000x32914 (256x256) JPEG/RGB Q=70|AppMag = 40|MPP = 0.2520"
    tifffile.imwrite(tmp_path / "scan.svs", pixels, photometric="rgb", description=aperio)
    assert pixel_size_um(tmp_path / "scan.svs") == pytest.approx(0.252)


def test_a_photo_with_an_exif_rotation_is_read_as_it_is_displayed(tmp_path):
    pixels = np.zeros((40, 60, 3), np.uint8)
    pixels[:10, :20] = 255
    image = Image.fromarray(pixels)
    exif = image.getexif()
    exif[0x0112] = 6  # displayed turned a quarter clockwise
    image.save(tmp_path / "a.jpg", exif=exif.tobytes(), quality=100)
    read = read_image(tmp_path / "a.jpg")
    assert read.shape == (3, 60, 40)  # as displayed
    assert read[:, :20, -10:].mean() > 0.9 and read[:, 20:, :].mean() < 0.1  # the bright corner turned to the top right


def test_a_one_bit_image_is_refused_as_holding_no_stain(tmp_path):
    Image.fromarray(np.random.default_rng(0).random((40, 60)) > 0.5).save(tmp_path / "mask.png")
    with pytest.raises(DataError, match=r"mask\.png: is a 1-bit"):
        read_image(str(tmp_path / "mask.png"))  # a path as a string, as configs give it
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(tmp_path / "rgb.png")
    assert read_image(str(tmp_path / "rgb.png")).shape == (3, 40, 60)
