"""outputs: what a user opens after annotation, one set of files per image, published together.

* ``<id>_labels.tif``: instance label map (uint16, or uint32 past 65,535 cells); opens in napari and QuPath;
* ``<id>.geojson``: QuPath FeatureCollection, one feature per cell, classification "Nucleus", with measurements; its
  geometry covers exactly the cell's label pixels (a MultiPolygon where stitching left a cell in two pieces, with
  holes where other cells cut into it), on QuPath's grid (pixel (row, col) is the unit square from x = col,
  y = row); each feature's id is a UUID, as QuPath requires, and its label value is the measurement "Label";
* ``<id>_cells.csv``: one row per cell (``stitch.CELL_COLUMNS``), id = label value;
* ``<id>_overlay.png``: the image with cell contours and orientation ticks.

``SaveAnnotationd`` is the inference config's ``postprocessing``: it writes the four files of each annotated image.
They are written to a hidden temporary folder and moved into place only when all four succeeded
(``data.written_atomically``), so a failure never leaves a half-written file or a mix of old and new outputs.
"""

from __future__ import annotations

import csv
import json
import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import tifffile
import torch
from skimage.measure import find_contours, regionprops
from skimage.segmentation import find_boundaries

from .data import DataError, image_id_of, image_pixel_size, written_atomically
from .stitch import CELL_COLUMNS, CELLS_KEY, Annotation, cells_from_tensor

__all__ = ["SaveAnnotationd", "write_outputs", "cell_geometries", "output_names", "cell_records", "write_asap_xml"]

NUCLEUS = "Nucleus"  # the class QuPath gives every cell
NUCLEUS_COLOUR = [200, 0, 0]


def output_names(image_id: str) -> dict[str, str]:
    """The file name of each output of one image."""
    return {"labels": f"{image_id}_labels.tif", "geojson": f"{image_id}.geojson", "csv": f"{image_id}_cells.csv",
            "overlay": f"{image_id}_overlay.png"}


def write_outputs(annotation: Annotation, image: torch.Tensor, output_dir, image_id: str,
                  pixel_size: float | None = None) -> list[Path]:
    """Write the four outputs of one image, all or none; returns their final paths. With a ``pixel_size`` (um), the
    label TIFF states it (QuPath and Fiji read it) and the CSV and GeoJSON give areas in um^2 too."""
    finals = [Path(output_dir) / name for name in output_names(image_id).values()]
    with written_atomically(*finals) as (labels, geojson, table, overlay):
        write_label_tiff(annotation.labels, labels, pixel_size)
        write_geojson(annotation, geojson, image_id, pixel_size)
        write_csv(annotation.cells, table, pixel_size)
        write_overlay(image, annotation, overlay)
    return finals


class SaveAnnotationd:
    """Postprocessing: write the outputs of the annotated image in ``data``.

    ``data[label_key]`` is the inferer's label map (1, H, W) or (H, W) with the per-cell table in its metadata
    (``stitch.CELLS_KEY``); ``data[image_key]`` the image (C, H, W), whose metadata ``filename_or_obj`` names the
    outputs (``<file stem>_labels.tif`` ...). Adds ``data["outputs"]``, the paths written. ``pixel_size`` (um), when
    given, is every image's; otherwise each image's file is asked for its own (``data.pixel_size_um``).
    """

    def __init__(self, output_dir, pixel_size: float | None = None, label_key: str = "pred", image_key: str = "image"):
        self.output_dir, self.label_key, self.image_key = Path(output_dir), label_key, image_key
        if pixel_size is not None and not (isinstance(pixel_size, (int, float)) and pixel_size > 0):
            raise DataError(f"pixel_size: must be the pixel's side in micrometres, a number above 0; got {pixel_size!r}")
        self.pixel_size = pixel_size

    def __call__(self, data: dict) -> dict:
        labels, image = data[self.label_key], data[self.image_key]
        table = labels.meta.get(CELLS_KEY) if hasattr(labels, "meta") else None
        if table is None:
            raise ValueError(f"{self.label_key!r} carries no per-cell table ({CELLS_KEY!r} metadata): not an "
                             "ArchetypeInferer output")
        plain = torch.as_tensor(labels).cpu().numpy()
        annotation = Annotation(labels=plain.reshape(plain.shape[-2:]).astype(np.int32),
                                cells=cells_from_tensor(table))
        source = image.meta.get("filename_or_obj", "image") if hasattr(image, "meta") else "image"
        image_id = image_id_of(str(source))
        pixel_size = image_pixel_size(source, self.pixel_size)
        data = dict(data)
        data["outputs"] = [str(p) for p in write_outputs(annotation, torch.as_tensor(image), self.output_dir, image_id,
                                                         pixel_size)]
        return data


def write_label_tiff(labels: np.ndarray, path, pixel_size: float | None = None) -> None:
    dtype = np.uint16 if labels.max(initial=0) <= np.iinfo(np.uint16).max else np.uint32
    # TIFF states resolution as pixels per centimetre
    scale = {} if pixel_size is None else {"resolution": (1e4 / pixel_size, 1e4 / pixel_size), "resolutionunit": 3}
    tifffile.imwrite(path, labels.astype(dtype), compression="zlib", **scale)


def _signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed ring (N, 2) of (row, col) points; its sign gives the winding."""
    r, c = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.dot(r, np.roll(c, -1)) - np.dot(c, np.roll(r, -1)))


def _inside(point: np.ndarray, ring: np.ndarray) -> bool:
    """Whether a (row, col) point lies inside a closed ring (even-odd rule)."""
    r, c = ring[:-1, 0], ring[:-1, 1]
    r2, c2 = np.roll(r, -1), np.roll(c, -1)
    crosses = (r > point[0]) != (r2 > point[0])
    with np.errstate(divide="ignore", invalid="ignore"):
        at = c + (point[0] - r) * (c2 - c) / (r2 - r)
    return bool(np.count_nonzero(crosses & (point[1] < at)) % 2)


def cell_geometries(labels: np.ndarray, origin=(0, 0)) -> dict[int, dict]:
    """The GeoJSON geometry of every label, by label: a ``Polygon`` for a cell in one piece, a ``MultiPolygon`` for
    a cell in several, each piece with its holes. Coordinates are QuPath's: [x, y] with pixel (row, col) the unit
    square [col, col + 1) x [row, row + 1), so its centre is (col + 0.5, row + 0.5).

    Rings are traced at the 0.5 level of the cell's own mask (``find_contours``), so they run between the cell's
    pixels and their neighbours: a pixel's centre lies inside the geometry exactly when the pixel carries the label.
    Each cell is traced inside its own bounding box (``regionprops``), so the cost follows the cells' area, not
    cells x image size. ``origin`` (row, col): where ``labels`` lies in the image (a region of a slide).
    """
    geometries = {}
    for region in regionprops(labels):
        # find_contours works in pixel-centre coordinates: shift by the padding, the box, and half a pixel to QuPath's
        r0, c0 = origin[0] + region.bbox[0] - 0.5, origin[1] + region.bbox[1] - 0.5
        # find_contours winds the rings around the cell's pixels one way (negative shoelace area in (row, col)) and
        # those around holes the other
        rings = [without_collinear_points(ring) for ring in find_contours(np.pad(region.image, 1).astype(np.float32), 0.5)]
        outer = [ring for ring in rings if _signed_area(ring) < 0]
        holes = [ring for ring in rings if _signed_area(ring) >= 0]
        pieces = [[ring] for ring in outer]
        for hole in holes:
            owner = next((piece for piece in pieces if _inside(hole[0], piece[0])), None)
            if owner is not None:
                owner.append(hole)

        def xy(ring):
            return [[float(c + c0), float(r + r0)] for r, c in ring]

        polygons = [[xy(ring) for ring in piece] for piece in pieces]
        geometries[int(region.label)] = ({"type": "Polygon", "coordinates": polygons[0]} if len(polygons) == 1
                                         else {"type": "MultiPolygon", "coordinates": polygons})
    return geometries


def without_collinear_points(ring: np.ndarray) -> np.ndarray:
    """The closed ring (N, 2) (first point = last) without the points that lie on a straight run between their
    neighbours: the same polygon, with far fewer points (a contour traced on a pixel mask is mostly such runs).
    Lossless and vectorised, unlike a Douglas-Peucker simplification, which moves the outline."""
    points = ring[:-1] if np.array_equal(ring[0], ring[-1]) else ring
    before, after = points - np.roll(points, 1, axis=0), np.roll(points, -1, axis=0) - points
    cross = before[:, 0] * after[:, 1] - before[:, 1] * after[:, 0]
    turning = np.abs(cross) > 1e-9
    if turning.sum() < 3:  # degenerate (a line or a point): keep the ring as traced
        return ring
    kept = points[turning]
    return np.concatenate([kept, kept[:1]])


def feature_id(image_id: str, label: int) -> str:
    """The GeoJSON id of one cell: a UUID (QuPath replaces any other id), the same for the same image and label, so
    that rerunning an image gives the same file."""
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"diffkillr:{image_id}:{int(label)}"))


def outlined_cells(annotation: Annotation):
    """Each cell's row of the table (a dict by ``CELL_COLUMNS``) with its geometry (``cell_geometries``), in label
    order; a row whose label has no pixel left is skipped."""
    geometries = cell_geometries(annotation.labels)
    for row in zip(*(annotation.cells[k] for k in CELL_COLUMNS)):
        cell = dict(zip(CELL_COLUMNS, row))
        if cell["id"] in geometries:
            yield cell, geometries[cell["id"]]


def geojson_feature(cell: dict, geometry: dict, image_id: str, pixel_size: float | None = None) -> dict:
    """One cell (its row of the table, by ``CELL_COLUMNS``) as a QuPath detection."""
    return {
        "type": "Feature",
        "id": feature_id(image_id, cell["id"]),
        "geometry": geometry,
        "properties": {
            "objectType": "detection",
            "classification": {"name": NUCLEUS, "color": NUCLEUS_COLOUR},
            "measurements": {
                "Label": cell["id"],  # the label map's value and the CSV's id
                "Area px^2": cell["area"],
                **({} if pixel_size is None else {"Area µm^2": round(cell["area"] * pixel_size ** 2, 3)}),
                "Orientation deg": round(cell["orientation_deg"], 2),
                "Match distance": round(cell["match_distance"], 4),
                "Archetype id": cell["archetype_id"],
                "Folded pixels %": round(cell["folded_pct"], 3),
                **({} if np.isnan(cell["uncertainty"]) else {"Uncertainty": round(cell["uncertainty"], 4)}),
            },
        },
    }


def write_geojson(annotation: Annotation, path, image_id: str, pixel_size: float | None = None) -> None:
    features = [geojson_feature(cell, geometry, image_id, pixel_size) for cell, geometry in outlined_cells(annotation)]
    Path(path).write_text(json.dumps({"type": "FeatureCollection", "features": features}))


def cell_records(annotation: Annotation, offset=(0, 0)) -> list[dict]:
    """Every cell as JSON: its label, outline (QuPath's grid: [x, y] pairs, offset by the region's corner), centroid
    and measurements, the same as the GeoJSON and CSV outputs carry."""
    x0, y0 = offset
    records = []
    for cell, geometry in outlined_cells(annotation):
        pieces = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        records.append({
            "label": cell["id"],
            "outlines": [[[x + x0, y + y0] for x, y in piece[0]] for piece in pieces],  # outer rings, holes left out
            "centroid": [cell["centroid_col"] + 0.5 + x0, cell["centroid_row"] + 0.5 + y0],
            "area_px": cell["area"],
            "orientation_deg": round(cell["orientation_deg"], 2),
            "match_distance": round(cell["match_distance"], 4),
            "archetype_id": cell["archetype_id"],
            "folded_pct": round(cell["folded_pct"], 3),
            "uncertainty": None if np.isnan(cell["uncertainty"]) else round(cell["uncertainty"], 4),
        })
    return records


def write_asap_xml(cells: list[dict], path, region) -> None:
    """The cells as ASAP XML, which QuPath's MONAI Label extension turns into one polygon annotation of class
    ``NUCLEUS`` per ``<Annotation>`` (a cell stitched into pieces gives one per piece)."""
    root = ET.Element("ASAP_Annotations")
    x, y, w, h = region
    annotations = ET.SubElement(root, "Annotations", Name="DiffKillR", X=str(x), Y=str(y), W=str(w), H=str(h))
    colour = "#{:02X}{:02X}{:02X}".format(*NUCLEUS_COLOUR)
    for cell in cells:
        for outline in cell["outlines"]:
            annotation = ET.SubElement(annotations, "Annotation", Name=NUCLEUS, Type="Polygon", PartOfGroup=NUCLEUS,
                                       Color=colour)
            coordinates = ET.SubElement(annotation, "Coordinates")
            for order, (px, py) in enumerate(outline[:-1]):  # the ring's closing point repeats its first
                ET.SubElement(coordinates, "Coordinate", Order=str(order), X=f"{px:g}", Y=f"{py:g}")
    groups = ET.SubElement(root, "AnnotationGroups")
    ET.SubElement(ET.SubElement(groups, "Group", Name=NUCLEUS, PartOfGroup="None", Color=colour), "Attributes")
    ET.ElementTree(root).write(path, encoding="utf-8", xml_declaration=True)


def csv_header(pixel_size: float | None = None) -> list[str]:
    return list(CELL_COLUMNS) + ([] if pixel_size is None else ["area_um2"])


def csv_rows(cells: dict, pixel_size: float | None = None) -> list[tuple]:
    """The table's rows (a list per column of ``CELL_COLUMNS`` in), under ``csv_header``."""
    columns = [cells[k] for k in CELL_COLUMNS]
    if pixel_size is not None:
        columns.append([round(a * pixel_size ** 2, 3) for a in cells["area"]])
    return list(zip(*columns))


def write_csv(cells: dict, path, pixel_size: float | None = None) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(csv_header(pixel_size))
        writer.writerows(csv_rows(cells, pixel_size))


def write_overlay(image: torch.Tensor, annotation: Annotation, path, tick: float = 8.0) -> None:
    """Contours in yellow and a short tick along each cell's orientation (counter-clockwise from x, as displayed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.collections import LineCollection

    rgb = image.permute(1, 2, 0).clamp(0, 1).cpu().numpy()
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    rgb = rgb.copy()
    rgb[find_boundaries(annotation.labels, mode="inner")] = (1.0, 0.9, 0.0)
    h, w = annotation.labels.shape
    fig = plt.figure(figsize=(w / 100, h / 100), dpi=100)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.imshow(rgb, interpolation="nearest")
    theta = np.deg2rad(np.asarray(annotation.cells["orientation_deg"], dtype=float))
    r = np.asarray(annotation.cells["centroid_row"], dtype=float)
    c = np.asarray(annotation.cells["centroid_col"], dtype=float)
    dx, dy = tick * np.cos(theta), -tick * np.sin(theta)  # y is down on screen
    segments = np.stack([np.stack([c - dx, r - dy], 1), np.stack([c + dx, r + dy], 1)], 1)
    ax.add_collection(LineCollection(segments, colors="cyan", linewidths=1.0))
    ax.set_xlim(-0.5, w - 0.5)
    ax.set_ylim(h - 0.5, -0.5)
    ax.axis("off")
    fig.savefig(path, dpi=100)
    plt.close(fig)
