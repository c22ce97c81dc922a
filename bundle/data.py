"""data: read images, instance annotations and dataset folders.

Everything the pipeline knows about the outside world comes through this module,
so it is strict about conventions and loud about bad input.

Conventions
-----------
* Arrays are **rows first**: an image of H rows and W columns is a tensor
  ``(C, H, W)``; a label map is an array ``(H, W)``. ``H`` is the number of rows
  exactly as ``numpy.asarray(PIL.Image.open(path))`` reports it.
* Images are ``float32`` in ``[0, 1]``: integer pixels are divided by the largest
  value of their dtype (uint8 / 255, uint16 / 65535); float pixels are kept as
  they are. RGBA loses its alpha channel; grayscale keeps one channel.
* Instance label maps are ``int32``: 0 is background, instances are numbered
  1..N with no gaps.
* Polygon vertices (Aperio XML ``<Vertex X= Y=>``, GeoJSON ``[x, y]``) are
  ``x = column``, ``y = row``, in pixels, rasterised with
  :func:`skimage.draw.polygon`: a pixel belongs to a polygon when its centre is
  inside it. Aperio XML puts pixel centres on whole numbers, as the usual
  MoNuSeg tooling does; GeoJSON is QuPath's grid, where pixel (row, col) is the
  unit square from ``x = col, y = row``, its centre half a pixel further.
* Overlapping polygons: regions are drawn in file order, so a later region
  paints over an earlier one.
* Every failure a user can cause raises :class:`DataError`, whose message names
  the file and the problem; the library error is kept as ``__cause__``.

Dataset folder layout (see :func:`list_dataset`)::

    root/
        images/<id>.tif|tiff|png|jpg
        annotations/<id>.xml|geojson      (polygons)   -- or --
        labels/<id>.png|tif|tiff|nii.gz   (instance label images)
        organs.csv                        (optional: image_id, organ, official_split)

A plain folder of image files (no ``images/`` subfolder) is accepted too, as an
image-only dataset.
"""

from __future__ import annotations

import csv
import glob
import json
import os
import pathlib
import re
import shutil
import socket
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from skimage.draw import polygon as draw_polygon
from skimage.segmentation import relabel_sequential

__all__ = [
    "DataError",
    "ReadImaged",
    "image_id_of",
    "Sample",
    "image_datalist",
    "list_dataset",
    "load_sample",
    "read_aperio_xml",
    "read_asap_xml",
    "pixel_size_um",
    "image_pixel_size",
    "read_image",
    "read_image_and_opacity",
    "read_instances",
    "read_qupath_geojson",
    "written_atomically",
]

# metadata key of an image (MetaTensor) that has transparent pixels: where it is opaque, bool (H, W)
OPAQUE_KEY = "opaque"
# Aperio SVS is a tiled TIFF pyramid (read as a slide)
TIFF_SUFFIXES = (".tif", ".tiff", ".svs")
IMAGE_SUFFIXES = (*TIFF_SUFFIXES, ".png", ".jpg", ".jpeg")
# A TIFF above this many pixels (4096 x 4096) is a slide (``is_slide``, ``bundle.slide``): read region by region, never
# whole. Below it, the image and its label map held in memory stay under about 3 GB (2 CPU cores; model card, "Large
# images"), and the user also gets the overlay picture.
SLIDE_PIXELS = 4096 * 4096
POLYGON_SUFFIXES = (".xml", ".geojson", ".json")
LABEL_SUFFIXES = (".png", ".tif", ".tiff", ".nii.gz", ".nii")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


class DataError(ValueError):
    """Bad input: the message always names the file and the problem, in one line."""


def in_one_line(error: BaseException, last: bool = False) -> str:
    """A library's error as one line, for a ``DataError`` message: its type and its first non-empty line (``last``:
    its last, where the library puts the reason at the end, as ITK does after a C++ source location)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return f"{type(error).__name__}: {(lines[-1] if last else lines[0]) if lines else 'no message'}"


# ----------------------------------------------------------------------------
# Low-level reading
# ----------------------------------------------------------------------------


def _suffix(path: pathlib.Path) -> str:
    """Lower-case suffix, treating ``.nii.gz`` as one suffix."""
    name = path.name.lower()
    if name.endswith(".nii.gz"):
        return ".nii.gz"
    return path.suffix.lower()


def image_id_of(path) -> str:
    """An image's id: its file name without the (possibly double, ``.nii.gz``) suffix."""
    path = pathlib.Path(path)
    return path.name[: len(path.name) - len(_suffix(path))]


def _existing_file(path) -> pathlib.Path:
    path = pathlib.Path(path)
    if not path.is_file():
        if path.is_symlink():
            raise DataError(f"{path}: a symbolic link that leads to no file (a broken link, or a loop of links)")
        if path.is_dir():
            raise DataError(f"{path}: a folder, not a file")
        raise DataError(f"{path}: file not found")
    if not os.access(path, os.R_OK):
        raise DataError(f"{path}: no permission to read it (ask its owner, or copy it somewhere you may read)")
    return path


def _read_with_itk(path: pathlib.Path) -> np.ndarray:
    """Pixels as stored (native dtype), rows first, channels last if any.

    MONAI's ``ITKReader`` reads what tifffile does not (PNG, JPEG, other formats;
    a damaged TIFF, for which libtiff's message says what is wrong). Two traps,
    both checked by the tests:

    * ``LoadImage`` (and ``ITKReader`` with its default ``reverse_indexing=False``)
      returns 2-D images with the spatial axes swapped, x first; only
      ``reverse_indexing=True`` gives numpy's (row, column) order.
    * ``LoadImage`` casts pixels (uint16 becomes int32, or float32 by default),
      losing the dtype needed to scale to [0, 1]; ``get_data`` keeps it.
    """
    import itk  # deferred: importing ITK and MONAI's readers takes seconds
    from monai.data import ITKReader

    # Asking ITK what the file holds first gives a clean "unreadable" error and
    # catches grey+alpha images, which itk.imread silently reads as zeros.
    io = itk.ImageIOFactory.CreateImageIO(str(path), itk.CommonEnums.IOFileMode_ReadMode)
    if io is None:
        raise DataError(f"{path}: not a readable image (unknown or corrupt format)")
    io.SetFileName(str(path))
    io.ReadImageInformation()
    if io.GetNumberOfComponents() == 2:
        from PIL import Image

        with Image.open(path) as pil:
            return np.array(pil)

    reader = ITKReader(reverse_indexing=True)
    array, _ = reader.get_data(reader.read(str(path)))
    # Copy: the array may be a view into ITK's buffer, which ITK may free.
    return np.array(array)


def _read_with_tifffile(path: pathlib.Path) -> np.ndarray | None:
    """A TIFF's pixels as stored, rows first, channels last; None for a file tifffile cannot read (not a TIFF, or
    damaged: ITK then says what is wrong).

    tifffile reads what ITK's Python wrapping refuses (16-bit RGB, float pixels), and tells a pixel's channels from a
    stack of pages, which ITK reads as one image of the wrong shape. Only one image per file is read: a stack of pages
    is refused, not guessed at.
    """
    if _suffix(path) not in TIFF_SUFFIXES:
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, array = series.axes, series.asarray()
    except Exception:  # damaged or not a TIFF after all
        return None
    if axes in ("YX", "YXS"):
        return array
    if axes in ("SYX", "CYX"):  # channels stored plane by plane
        return np.moveaxis(array, 0, -1)
    raise DataError(f"{path}: holds {array.shape[0]} pages or planes (axes {axes}, shape {array.shape}); one image per "
                    "file is read: save the grey or RGB image to annotate on its own")


def _read_exif_rotated(path: pathlib.Path) -> np.ndarray | None:
    """A JPEG or PNG whose EXIF orientation says it is displayed turned or mirrored, as it is displayed (what the user
    sees, and draws annotations on); None for any other file, which the other readers take as stored."""
    if _suffix(path) not in (".jpg", ".jpeg", ".png"):
        return None
    from PIL import Image, ImageOps

    try:
        with Image.open(path) as image:
            if image.getexif().get(0x0112, 1) in (0, 1):  # EXIF Orientation: stored as displayed
                return None
            return np.array(ImageOps.exif_transpose(image))
    except Exception:  # damaged: ITK says what is wrong
        return None


def _is_one_bit(path) -> bool:
    """Whether a PNG stores 1-bit pixels, which ITK hands over as 0 and 255 (tifffile gives a TIFF's as bool)."""
    if _suffix(pathlib.Path(path)) != ".png":
        return False
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode == "1"
    except Exception:
        return False


def _read_with_nibabel(path: pathlib.Path) -> np.ndarray:
    """NIfTI pixels in nibabel's storage order.

    ITK would return NIfTI arrays axis-reversed relative to nibabel; nibabel's
    order is the one a Python user gets back after ``nibabel.save`` of an
    ``(H, W)`` array, so it is the one we keep.
    """
    import nibabel

    array = np.asanyarray(nibabel.load(str(path)).dataobj)
    # A 2-D map is often saved with trailing singleton axes (H, W, 1, ...).
    while array.ndim > 2 and array.shape[-1] == 1:
        array = array[..., 0]
    return np.array(array)


@contextmanager
def _native_stderr_kept(lines: list):
    """Collect what C libraries write to file descriptor 2 (libtiff's warnings through ITK) into ``lines`` instead of
    the terminal: a damaged file must end in one line, not in a page of libtiff chatter."""
    sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # no descriptor 2 (a detached process): nothing to keep off the terminal
        yield
        return
    with tempfile.TemporaryFile(mode="w+b") as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def _read_array(path) -> np.ndarray:
    """Any supported file -> numpy array (H, W) or (H, W, C), native dtype."""
    path = _existing_file(path)
    native = []
    try:
        if _suffix(path) in NIFTI_SUFFIXES:
            array = _read_with_nibabel(path)
        elif (array := _read_with_tifffile(path)) is not None:
            pass
        elif (array := _read_exif_rotated(path)) is not None:
            pass
        else:
            with _native_stderr_kept(native):
                array = _read_with_itk(path)
    except DataError:
        raise
    except Exception as err:  # ITK, PIL and nibabel raise many unrelated types
        # libtiff's last word says what is wrong with the file better than ITK's ("Problem reading the row: 0")
        reason = native[-1] if native else in_one_line(err, last=True)
        raise DataError(f"{path}: cannot read image ({reason})") from err
    if array.ndim not in (2, 3) or min(array.shape[:2]) == 0:
        raise DataError(f"{path}: expected a 2-D image, got an array of shape {array.shape}")
    return array


# pixel sizes (micrometres) a microscope image can have; a file stating one outside (72 dpi, the default of many
# writers, is 353 um) states none
PLAUSIBLE_PIXEL_UM = (0.05, 10.0)


# micrometres per unit of OME's PhysicalSizeXUnit
_OME_UNIT_UM = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4, "m": 1e6}


def _stated_pixel_size(tif) -> float | None:
    """The full-resolution pixel size (um) an open ``tifffile.TiffFile`` states, or None."""
    import tifffile

    if tif.is_ome:
        pixels = tifffile.xml2dict(tif.ome_metadata)["OME"]["Image"]
        pixels = (pixels[0] if isinstance(pixels, list) else pixels)["Pixels"]
        if "PhysicalSizeX" in pixels:
            return float(pixels["PhysicalSizeX"]) * _OME_UNIT_UM.get(pixels.get("PhysicalSizeXUnit", "µm"), float("nan"))
    if tif.is_svs:
        from tifffile.tifffile import svs_description_metadata

        mpp = svs_description_metadata(tif.pages[0].description).get("MPP")
        if mpp:
            return float(mpp)
    tags = tif.pages[0].tags
    if "XResolution" in tags and "ResolutionUnit" in tags:
        numerator, denominator = tags["XResolution"].value
        per_unit = numerator / denominator if denominator else 0
        unit_um = {2: 25400.0, 3: 10000.0}.get(int(tags["ResolutionUnit"].value))  # inch, centimetre
        return unit_um / per_unit if unit_um and per_unit > 0 else None
    return None


def pixel_size_um(path) -> float | None:
    """The pixel size in micrometres an image file states at full resolution, or None when it states none, or one no
    microscope gives (``PLAUSIBLE_PIXEL_UM``). Read, first found first: an OME-TIFF's ``PhysicalSizeX``, an Aperio
    SVS description's ``MPP``, TIFF resolution tags, PNG pHYs. Square pixels are assumed: the x size is read."""
    path = pathlib.Path(path)
    size = None
    try:
        if _suffix(path) in TIFF_SUFFIXES:
            import tifffile

            with tifffile.TiffFile(path) as tif:
                size = _stated_pixel_size(tif)
        else:
            from PIL import Image

            with Image.open(path) as image:
                dpi = image.info.get("dpi")
                size = 25400.0 / float(dpi[0]) if dpi and float(dpi[0]) > 0 else None
    except Exception:  # unreadable metadata is no pixel size, not an error: the pixels are read elsewhere
        return None
    low, high = PLAUSIBLE_PIXEL_UM
    return size if size is not None and low <= size <= high else None


def image_pixel_size(source, given: float | None = None) -> float | None:
    """The pixel size (um) an image is annotated and measured at: ``given`` (the config's ``pixel_size``), else what its
    file states (``pixel_size_um``); None when neither says (or ``source`` is no file)."""
    if given is not None:
        return given
    return pixel_size_um(source) if source is not None and pathlib.Path(str(source)).is_file() else None


def read_image(path) -> torch.Tensor:
    """Read an image as a float32 tensor ``(C, H, W)`` in ``[0, 1]``, rows first (``read_image_and_opacity``)."""
    return read_image_and_opacity(path)[0]


def read_image_and_opacity(path) -> tuple[torch.Tensor, np.ndarray | None]:
    """Read an image as a float32 tensor ``(C, H, W)`` in ``[0, 1]``, rows first.

    RGB gives 3 channels, RGBA 3 (alpha dropped), grayscale 1 (grey+alpha: alpha
    dropped too); more channels are refused. Integer pixels are divided by their
    dtype's maximum (uint8 / 255, uint16 / 65535); float pixels must already lie
    in [0, 1], and NaN or infinite ones are refused: no rule for them would be
    right for every user.

    Also where the image is opaque: bool (H, W), or None when no pixel is fully transparent. A transparent pixel holds
    no image (padding, a mask drawn by another tool), whatever its colour: no cell is centred on one
    (``ArchetypeInferer.annotate``).
    """
    array = _read_array(path)
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] > 4:
        raise DataError(f"{path}: has {array.shape[-1]} channels; images are read as grey (1) or RGB (3), each with an "
                        "optional alpha: save the channels to annotate as one grey or RGB image")
    opaque = None
    if array.shape[-1] in (2, 4):  # grey+alpha, RGBA: alpha carries no stain information, only where the image is
        opaque = array[..., -1] > 0
        opaque = None if opaque.all() else opaque
        array = array[..., :-1]

    if array.dtype == bool or _is_one_bit(path):
        raise DataError(f"{path}: is a 1-bit (black and white) image, which holds no stain; is it a mask? Give the "
                        "image it was made from")
    elif np.issubdtype(array.dtype, np.integer):
        array = array.astype(np.float32) / np.iinfo(array.dtype).max
    elif np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float32)
        finite = np.isfinite(array)
        if not finite.all():
            raise DataError(f"{path}: {int((~finite).sum())} pixels are NaN or infinite; replace them (with the "
                            "background's value, say) before annotating")
        if array.min() < 0 or array.max() > 1:
            raise DataError(f"{path}: float pixels must lie in [0, 1], these span [{array.min():g}, {array.max():g}]; "
                            "scale them, or save the image as 8- or 16-bit integers")
    else:
        raise DataError(f"{path}: unsupported pixel type {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1))), opaque


# ----------------------------------------------------------------------------
# Instance annotations
# ----------------------------------------------------------------------------


def _check_shape(shape, path) -> tuple[int, int]:
    if shape is None:
        raise DataError(f"{path}: polygon annotations need the image shape (H, W) to be rasterised")
    try:
        rows, cols = (int(s) for s in shape)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: shape must be (H, W), got {shape!r}") from err
    if rows <= 0 or cols <= 0:
        raise DataError(f"{path}: shape must be positive, got {(rows, cols)}")
    return rows, cols


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Renumber ids to 1..N (0 stays background), as int32."""
    return relabel_sequential(labels)[0].astype(np.int32)


def read_instances(path, shape=None) -> np.ndarray:
    """Read an instance label map ``int32 (H, W)``: 0 background, 1..N instances.

    The file suffix decides the format:

    * ``.xml`` -> :func:`read_aperio_xml`; ``.geojson`` / ``.json`` ->
      :func:`read_qupath_geojson`. These need ``shape = (H, W)``.
    * anything else is a label image (png, tif, tiff, nii, nii.gz). If ``shape``
      is given it must match. RGB(A) label images (instance ids stored as
      colours) get one id per distinct non-black colour (fully transparent
      pixels are background too); integer images are renumbered 1..N keeping 0
      as background.
    """
    path = pathlib.Path(path)
    suffix = _suffix(path)
    if suffix == ".xml":
        if _xml_root_tag(path) == "ASAP_Annotations":
            return read_asap_xml(path, _check_shape(shape, path))
        return read_aperio_xml(path, _check_shape(shape, path))[0]
    if suffix in (".geojson", ".json"):
        return read_qupath_geojson(path, _check_shape(shape, path))

    array = _read_array(path)
    if shape is not None and tuple(array.shape[:2]) != _check_shape(shape, path):
        raise DataError(
            f"{path}: label image has shape {tuple(array.shape[:2])} but the image has shape {tuple(shape)}"
        )

    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim == 3:
        if array.shape[-1] not in (3, 4):
            raise DataError(f"{path}: label image has {array.shape[-1]} channels, expected 1, 3 or 4")
        colours = array[..., :3].reshape(-1, 3)
        _, ids = np.unique(colours, axis=0, return_inverse=True)
        labels = ids.reshape(array.shape[:2]).astype(np.int64) + 1
        background = ~colours.any(axis=1).reshape(array.shape[:2])
        if array.shape[-1] == 4:
            background |= array[..., 3] == 0
        labels[background] = 0
        return _consecutive(labels)

    if np.issubdtype(array.dtype, np.floating):
        # NIfTI label maps are often stored as floats; accept whole numbers only.
        if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
            raise DataError(f"{path}: label image has non-integer values")
        array = array.astype(np.int64)
    elif not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise DataError(f"{path}: unsupported label pixel type {array.dtype}")
    array = array.astype(np.int64)
    if array.min() < 0:
        raise DataError(f"{path}: label image has negative values (min {array.min()})")
    return _consecutive(array)


def _xml_root_tag(path) -> str:
    """The tag of an XML file's root element, read without parsing the rest."""
    path = _existing_file(path)
    try:
        for _, element in ET.iterparse(path, events=("start",)):
            return element.tag
    except ET.ParseError as err:
        raise DataError(f"{path}: malformed XML ({err})") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err})") from err
    return ""


# ASAP annotation types that outline an area; a Rectangle is the region a QuPath user ran inference on, a Polyline or
# Points outline nothing
ASAP_AREA_TYPES = ("Polygon", "Ellipse", "Area", "Geometry")


def read_asap_xml(path, shape) -> np.ndarray:
    """Rasterise an ASAP XML (what QuPath's MONAI Label extension submits as a label) into ``labels int32 (H, W)``.

    Each ``<Annotation>`` of an area type (``ASAP_AREA_TYPES``) is one instance, its outline the ``<Coordinate X=..
    Y=..>`` list on QuPath's grid (pixel (row, col) is the unit square from x = col, y = row: its centre is at
    (col + 0.5, row + 0.5)). As for the other formats, later annotations are drawn over earlier ones and ids are
    consecutive in drawing order.
    """
    path = _existing_file(path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path}: malformed XML ({err})") from err
    labels = np.zeros(shape, dtype=np.int32)
    next_id = 1
    for index, annotation in enumerate(root.iter("Annotation")):
        if annotation.get("Type", "Polygon") not in ASAP_AREA_TYPES:
            continue
        coordinates = annotation.findall("./Coordinates/Coordinate")
        try:
            ring = [[float(c.attrib["X"]), float(c.attrib["Y"])] for c in coordinates]
        except (KeyError, ValueError) as err:
            raise DataError(f"{path}: annotation #{index} has a coordinate without a numeric X/Y ({err!r})") from err
        mask = _ring_mask(ring, shape, path)
        if mask.any():
            labels[mask] = next_id
            next_id += 1
    return _consecutive(labels)


def read_aperio_xml(path, shape) -> tuple[np.ndarray, int]:
    """Rasterise an Aperio ImageScope XML into ``(labels int32 (H, W), n_degenerate)``.

    Each ``<Region>`` is one instance, its outline the ``<Vertex X=.. Y=..>``
    list, where X is the COLUMN and Y is the ROW. Regions are drawn in file
    order, **later regions over earlier ones**. A region with fewer than 3
    vertices, or one that covers no pixel centre inside the image, is skipped
    and counted in ``n_degenerate``. Ids are consecutive in drawing order among
    the drawn regions; a region entirely painted over by later ones vanishes
    and the ids are renumbered to stay consecutive. A file with no regions
    gives an empty (all-zero) map.
    """
    path = _existing_file(path)
    shape = _check_shape(shape, path)
    try:
        root = ET.parse(path).getroot()
    except ET.ParseError as err:
        raise DataError(f"{path}: malformed XML ({err})") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err})") from err

    labels = np.zeros(shape, dtype=np.int32)
    n_degenerate = 0
    next_id = 1
    for index, region in enumerate(root.iter("Region")):
        vertices = region.findall("./Vertices/Vertex")
        try:
            cols = np.array([float(v.attrib["X"]) for v in vertices])
            rows = np.array([float(v.attrib["Y"]) for v in vertices])
        except (KeyError, ValueError) as err:
            region_id = region.get("Id", "?")
            raise DataError(
                f"{path}: region #{index} (Id={region_id}) has a vertex without a numeric X/Y ({err!r})"
            ) from err
        if len(vertices) < 3:
            n_degenerate += 1
            continue
        rr, cc = draw_polygon(rows, cols, shape)
        if rr.size == 0:
            n_degenerate += 1
            continue
        labels[rr, cc] = next_id
        next_id += 1
    return _consecutive(labels), n_degenerate


def _ring_mask(ring, shape, path) -> np.ndarray:
    """Pixels inside one GeoJSON ring of [x, y] = [column, row] points."""
    try:
        points = np.asarray(ring, dtype=float)
    except (TypeError, ValueError) as err:
        raise DataError(f"{path}: polygon ring is not a list of [x, y] numbers") from err
    if points.ndim != 2 or points.shape[1] < 2:
        raise DataError(f"{path}: polygon ring is not a list of [x, y] points (array shape {points.shape})")
    mask = np.zeros(shape, dtype=bool)
    if len(points) >= 3:  # QuPath's pixel (row, col) has its centre at (col + 0.5, row + 0.5)
        mask[draw_polygon(points[:, 1] - 0.5, points[:, 0] - 0.5, shape)] = True
    return mask


def _polygon_mask(rings, shape, path) -> np.ndarray:
    """A GeoJSON Polygon: the first ring filled, the following rings (holes) cleared."""
    if not isinstance(rings, list) or not rings:
        raise DataError(f"{path}: Polygon coordinates must be a non-empty list of rings")
    mask = _ring_mask(rings[0], shape, path)
    for hole in rings[1:]:
        mask &= ~_ring_mask(hole, shape, path)
    return mask


def read_qupath_geojson(path, shape) -> np.ndarray:
    """Rasterise a QuPath GeoJSON export into ``labels int32 (H, W)``.

    Accepts a FeatureCollection, a list of Features or a single Feature. Each
    Polygon feature is one instance (exterior ring filled, holes cleared); a
    MultiPolygon is one instance made of all its parts. Coordinates are
    ``[x, y] = [column, row]``. Other geometry types, and features that cover
    no pixel, are skipped. As for XML, later features are drawn over earlier ones
    and ids are consecutive in drawing order.
    """
    path = _existing_file(path)
    shape = _check_shape(shape, path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: malformed JSON ({err})") from err
    except OSError as err:
        raise DataError(f"{path}: cannot read file ({err})") from err

    if isinstance(data, dict) and data.get("type") == "FeatureCollection":
        features = data.get("features")
    elif isinstance(data, dict) and data.get("type") == "Feature":
        features = [data]
    else:
        features = data
    if not isinstance(features, list) or not all(isinstance(f, dict) for f in features):
        raise DataError(f"{path}: expected a GeoJSON FeatureCollection, a Feature or a list of Features")

    labels = np.zeros(shape, dtype=np.int32)
    next_id = 1
    for feature in features:
        geometry = feature.get("geometry") or {}
        kind = geometry.get("type") if isinstance(geometry, dict) else None
        coordinates = geometry.get("coordinates") if kind else None
        if kind == "Polygon":
            mask = _polygon_mask(coordinates, shape, path)
        elif kind == "MultiPolygon":
            if not isinstance(coordinates, list):
                raise DataError(f"{path}: MultiPolygon coordinates must be a list of polygons")
            mask = np.zeros(shape, dtype=bool)
            for part in coordinates:
                mask |= _polygon_mask(part, shape, path)
        else:
            continue  # points, lines, ... carry no instance outline
        if mask.any():
            labels[mask] = next_id
            next_id += 1
    return _consecutive(labels)


# ----------------------------------------------------------------------------
# Dataset folders
# ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One image of a dataset folder and where its annotation lives."""

    image_id: str
    image_path: pathlib.Path
    annotation_path: pathlib.Path | None  # None for an image-only folder
    organ: str | None
    split: str | None  # "train" / "test" / None when organs.csv is absent or has no split


def _find_images(folder: pathlib.Path) -> dict[str, pathlib.Path]:
    images: dict[str, pathlib.Path] = {}
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or _suffix(path) not in IMAGE_SUFFIXES:
            continue
        if not path.is_file():
            if path.is_symlink():  # an image the user meant to include: say so rather than skip it
                _existing_file(path)
            continue
        image_id = image_id_of(path)
        if image_id in images:
            raise DataError(f"{folder}: two images share the id {image_id!r}: {images[image_id].name}, {path.name}")
        images[image_id] = path
    return images


def _find_annotation(root: pathlib.Path, image_id: str) -> pathlib.Path | None:
    candidates = [root / "annotations" / f"{image_id}{s}" for s in POLYGON_SUFFIXES]
    candidates += [root / "labels" / f"{image_id}{s}" for s in LABEL_SUFFIXES]
    return next((c for c in candidates if c.is_file()), None)


def _read_organs_csv(path: pathlib.Path) -> tuple[dict[str, dict[str, str | None]], bool]:
    """image_id -> {"organ", "split"}, and whether the file has a split column."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = [c.strip() for c in reader.fieldnames or []]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as err:
        raise DataError(f"{path}: cannot read CSV ({err})") from err
    if "image_id" not in columns:
        raise DataError(f"{path}: no 'image_id' column (columns: {columns})")
    table = {
        row["image_id"]: {"organ": row.get("organ") or None, "split": row.get("official_split") or None}
        for row in rows
    }
    return table, "official_split" in columns


def level_zero(tif):
    """The first series' full-resolution level of an open ``tifffile.TiffFile``, and its axes ("YXS", ...)."""
    series = tif.series[0]
    return series.levels[0], series.axes


def tiff_shape(path) -> tuple[int, int] | None:
    """(H, W) of a TIFF's first series at level 0, read from its header; None for a file that is not a TIFF."""
    if _suffix(pathlib.Path(path)) not in TIFF_SUFFIXES:
        return None
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            level, axes = level_zero(tif)
            return int(level.shape[axes.index("Y")]), int(level.shape[axes.index("X")])
    except Exception:  # damaged or not a TIFF after all: the in-memory reader says what is wrong
        return None


def is_slide(path) -> bool:
    """Whether an image is a slide: a TIFF above ``SLIDE_PIXELS``, annotated by ``bundle.slide`` region by region."""
    shape = tiff_shape(path)
    return shape is not None and shape[0] * shape[1] > SLIDE_PIXELS


def image_datalist(root) -> list[dict]:
    """``[{"image": path}, ...]`` of a dataset folder's images (``list_dataset``) but its slides (``is_slide``), which
    the inference config's ``slides`` step annotates without reading them whole: the evaluator's datalist."""
    return [{"image": str(sample.image_path)} for sample in list_dataset(root) if not is_slide(sample.image_path)]


def list_dataset(root, split=None, organ=None) -> list[Sample]:
    """List the samples of a dataset folder, sorted by image_id.

    Layout: ``images/<id>.<tif|tiff|png|jpg>`` with either
    ``annotations/<id>.xml`` (or ``.geojson``) or
    ``labels/<id>.<png|tif|tiff|nii.gz>``, and an optional ``organs.csv``
    (columns ``image_id, organ, official_split``). A plain folder of images (no
    ``images/`` subfolder) is read as image-only. Images without an annotation
    get ``annotation_path=None``.

    ``split`` keeps the images whose official_split equals it; without
    organs.csv, or without a split column, every image belongs to every split
    (images missing from a CSV that has splits belong to none). ``organ`` keeps
    images of that organ, ignoring case.
    """
    root = pathlib.Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: dataset folder not found")
    image_dir = root / "images"
    image_only = not image_dir.is_dir()
    images = _find_images(root if image_only else image_dir)
    if not images:
        raise DataError(
            f"{root}: no images found (looked for images/<id> and for image files in the folder itself,"
            f" with suffixes {', '.join(IMAGE_SUFFIXES)})"
        )

    csv_path = root / "organs.csv"
    table, has_split = _read_organs_csv(csv_path) if csv_path.is_file() else ({}, False)
    samples = [
        Sample(
            image_id=image_id,
            image_path=image_path,
            annotation_path=None if image_only else _find_annotation(root, image_id),
            organ=table.get(image_id, {}).get("organ"),
            split=table.get(image_id, {}).get("split"),
        )
        for image_id, image_path in sorted(images.items())
    ]

    if split is not None and has_split:
        kept = [s for s in samples if s.split == split]
        if not kept:
            splits = sorted({s.split for s in samples if s.split})
            raise DataError(f"{root}: split={split!r} leaves no images; splits in {csv_path.name}: {splits}")
        samples = kept
    if organ is not None:
        kept = [s for s in samples if s.organ is not None and s.organ.lower() == str(organ).lower()]
        if not kept:
            organs = sorted({s.organ for s in samples if s.organ})
            where = f" in split {split!r}" if split is not None and has_split else ""
            known = organs if csv_path.is_file() else "none (no organs.csv)"
            raise DataError(f"{root}: organ={organ!r} leaves no images; organs{where}: {known}")
        samples = kept
    return samples


def load_sample(sample) -> tuple[torch.Tensor, np.ndarray]:
    """Read one sample: ``(image (C, H, W) float32, labels (H, W) int32)``.

    Raises DataError for an image-only sample, a missing annotation file, or an
    annotation whose shape differs from the image.
    """
    if sample.annotation_path is None:
        raise DataError(f"{sample.image_path}: image {sample.image_id!r} has no annotation (image-only sample)")
    if not pathlib.Path(sample.annotation_path).is_file():
        raise DataError(f"{sample.annotation_path}: annotation file not found for image {sample.image_id!r}")
    image = read_image(sample.image_path)
    labels = read_instances(sample.annotation_path, shape=tuple(image.shape[1:]))
    return image, labels


class ReadImaged:
    """Dictionary transform: read ``data[key]`` (a path) with ``read_image`` into a (C, H, W) float [0, 1] MetaTensor
    whose metadata keeps the path (``filename_or_obj``), as MONAI's readers do, and where the image is opaque
    (``OPAQUE_KEY``, bool (H, W)) when some of it is transparent.

    MONAI's own ``LoadImage`` returns 2-D images with rows and columns swapped and loses the bit depth needed for
    scaling (see ``_read_with_itk``), hence this reader in the bundle's ``preprocessing``.
    """

    def __init__(self, keys="image"):
        self.keys = [keys] if isinstance(keys, str) else list(keys)

    def __call__(self, data: dict) -> dict:
        from monai.data import MetaTensor

        data = dict(data)
        for key in self.keys:
            if isinstance(data[key], (str, pathlib.Path)):
                image, opaque = read_image_and_opacity(data[key])
                meta = {"filename_or_obj": str(data[key])}
                if opaque is not None:
                    meta[OPAQUE_KEY] = torch.from_numpy(opaque)
                data[key] = MetaTensor(image, meta=meta)
        return data


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------


# a temporary folder of ``written_atomically`` untouched this long was left by a run that was killed, not by one writing
STALE_SECONDS = 3600
# ``written_atomically``'s folders: ``.<file name>.<pid>@<host>.<mkdtemp's 8 characters>``, so that a later run can
# tell a folder whose writer is dead (killed) from one still being written
_TEMPORARY = re.compile(r"^\..+\.(\d+)@(.+)\.[a-z0-9_]{8}$")


def _writer_is_dead(name: str) -> bool:
    """Whether the hidden folder ``name`` is a ``written_atomically`` folder of a process of this machine that is gone."""
    found = _TEMPORARY.match(name)
    if found is None or found.group(2) != socket.gethostname():
        return False
    try:
        os.kill(int(found.group(1)), 0)
    except ProcessLookupError:
        return True
    except OSError:  # alive, another user's
        return False
    return False


def remove_dead_temporaries(folder) -> int:
    """Remove from ``folder`` the temporary folders of ``written_atomically`` whose writer was killed (a process of
    this machine that no longer runs); returns how many. Those of live writers, and anything not named as ours,
    stay."""
    removed = 0
    for path in pathlib.Path(folder).glob(".*"):
        try:
            if path.is_dir() and _writer_is_dead(path.name):
                shutil.rmtree(path, ignore_errors=True)
                removed += 1
        except OSError:  # gone meanwhile
            pass
    return removed


def _remove_stale_temporaries(folder: pathlib.Path, name: str) -> None:
    """Remove what killed runs left while writing ``name`` in ``folder``: hidden ``.<name>.*`` folders (our own
    naming) whose writer is dead, or untouched for ``STALE_SECONDS`` (another machine's). A run writing the same file
    right now is left alone."""
    now = time.time()
    for stale in folder.glob(f".{glob.escape(name)}.*"):
        try:
            if stale.is_dir() and (_writer_is_dead(stale.name) or now - stale.stat().st_mtime > STALE_SECONDS):
                shutil.rmtree(stale, ignore_errors=True)
        except OSError:  # gone meanwhile, or not ours to read
            pass


@contextmanager
def written_atomically(*paths):
    """Yield temporary paths to write ``paths`` to; when the block succeeds, move them all into place, else remove them.

    The temporary files live in a hidden folder beside the first path (same file system, so each move is an atomic
    rename): a crash or a full disk never leaves a half-written file where a good one was, and a set of files is
    published together, after all of them were written.
    """
    finals = [pathlib.Path(p) for p in paths]
    folder = finals[0].parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _remove_stale_temporaries(folder, finals[0].name)
        tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{finals[0].name}.{os.getpid()}@{socket.gethostname()}.",
                                             dir=folder))
    except OSError as err:
        raise DataError(f"{folder}: cannot write there ({err.strerror or err})") from err
    try:
        temporary = [tmp / f"{i}_{p.name}" for i, p in enumerate(finals)]
        yield temporary
        for source, final in zip(temporary, finals):
            os.replace(source, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
