"""slide: whole-slide images, annotated region by region without ever holding the image or its label map whole.

The inference config takes a folder; a TIFF in it with more than ``data.SLIDE_PIXELS`` pixels is a slide
(``data.is_slide``).
Slides skip the evaluator's in-memory path (``data.image_datalist`` leaves them out) and are annotated here by the
config's ``slides`` step, with the same inferer and networks:

* **read lazily, at the bank's scale**: tifffile's zarr view of the first series decodes only the tiles or strips a
  region needs (``LazyImage``), from the pyramid level that matches the bank's pixel size, resampled when none is
  within ``scale.SAME_SCALE`` of it (``scale.reading_plan``; the slide's pixel size is the file's own or the config's
  ``pixel_size``);
* **annotated** by ``ArchetypeInferer.regions_annotated``, its label map a chunked zarr array on disk; under torchrun
  by every rank at once, each annotating its share of the regions, rank 0 claiming them in order and writing;
* **written as it goes**, in level-0 pixel coordinates: the GeoJSON and the CSV grow region by region, and a progress
  record names the finished regions, so a run that was killed continues from them (``annotate_slide``);
* **finished**: the label map becomes ``<id>_labels.ome.tif``, a tiled pyramid that QuPath and napari open, and the
  three files are moved into the output folder together. A slide has no overlay picture.

Peak memory follows the region, not the slide (model card, "Large images"). Work in progress lives in the hidden folder
``.<id>.slide-progress`` of the output folder and is removed when the slide is done.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import time
import uuid
from pathlib import Path

import numpy as np
import tifffile
import torch
from tqdm.auto import tqdm

from .data import DataError, image_id_of, image_pixel_size, is_slide, level_zero, list_dataset, written_atomically
from .inferer import give_back_freed_memory, region_grid
from .match import unlike_the_bank, UNLIKE_THE_BANK
from .scale import cells_at, labels_at, reading_plan, resample
from .outputs import cell_geometries, csv_header, csv_rows, geojson_feature, output_names
from .stitch import CELL_COLUMNS

__all__ = ["LazyImage", "slide_paths", "annotate_slide", "SlideAnnotator",
           "slide_output_names", "write_label_pyramid"]

# the on-disk label map's chunks and the pyramid's tiles (px): a region touches a few chunks, and 512 px tiles are
# what slide viewers fetch
CHUNK = 1024
PYRAMID_TILE = 512


def slide_paths(root) -> list[str]:
    """The slides among a dataset folder's images (``data.list_dataset``), sorted by id."""
    return [str(sample.image_path) for sample in list_dataset(root) if is_slide(sample.image_path)]


class LazyImage:
    """A TIFF read region by region at the bank's scale: ``image[:, rows, cols]`` is a (C, h, w) float32 tensor in
    [0, 1], scaled as ``data.read_image`` scales (integers by their type's maximum; float pixels must lie in [0, 1]);
    ``shape`` is (C, H, W). Only the tiles or strips under the region are decoded. An alpha channel is dropped. Use it
    as a context manager: the file stays open while regions are read.

    With both pixel sizes known (``pixel_size``: level 0's, ``bank_pixel_size``: the bank's), the level and zoom come
    from ``reading_plan``, and a zoomed region is resampled from the level (bilinear, after a Gaussian blur when
    reducing): every pixel from the level's pixels around it, so a region reads as the same region of the whole image
    resampled. ``to_level_zero``: level-0 pixels a side per pixel read."""

    ndim = 3

    def __init__(self, path, pixel_size: float | None = None, bank_pixel_size: float | None = None):
        import zarr

        self.path = Path(path)
        try:
            self._tif = tifffile.TiffFile(self.path)
            level, axes = level_zero(self._tif)
            levels = self._tif.series[0].levels
        except Exception as err:
            raise DataError(f"{self.path}: cannot be read as a tiled or striped TIFF ({err})") from err
        if axes not in ("YX", "YXS", "SYX", "CYX"):
            self.close()
            raise DataError(f"{self.path}: holds axes {axes} (shape {level.shape}); one grey or RGB image per file is "
                            "read")
        self._planar = axes in ("SYX", "CYX")
        channels = 1 if axes == "YX" else level.shape[0 if self._planar else 2]
        if channels > 4:
            self.close()
            raise DataError(f"{self.path}: has {channels} channels; slides are read as grey or RGB")
        self._channels = 3 if channels in (3, 4) else 1  # alpha (grey+alpha, RGBA) holds no stain
        shapes = [tuple(lv.shape[1:3] if self._planar else lv.shape[:2]) for lv in levels]
        self.level, self.zoom = reading_plan(shapes, pixel_size, bank_pixel_size)
        self._level_shape = shapes[self.level]
        self._array = zarr.open(self._tif.series[0].aszarr(level=self.level), mode="r")
        h, w = (round(n * self.zoom) for n in self._level_shape)
        self.shape = (self._channels, int(h), int(w))
        self.level_zero_shape = shapes[0]
        self.to_level_zero = shapes[0][1] / self._level_shape[1] / self.zoom
        self.dtype = np.dtype(level.dtype)
        if self.dtype == bool:
            self.close()
            raise DataError(f"{self.path}: is a 1-bit (black and white) image, which holds no stain; is it a mask?")

    def __getitem__(self, key) -> torch.Tensor:
        _, rows, cols = key
        if self.zoom == 1:
            return self._read(rows, cols)
        return resample(self._read, self._level_shape, self.zoom, rows, cols)

    def _read(self, rows: slice, cols: slice) -> torch.Tensor:
        """The level's pixels (C, h, w) under ``rows`` x ``cols``."""
        if self._planar:
            block = np.moveaxis(np.asarray(self._array[: self._channels, rows, cols]), 0, -1)
        elif len(self._array.shape) == 2:
            block = np.asarray(self._array[rows, cols])[..., None]
        else:
            block = np.asarray(self._array[rows, cols, : self._channels])
        if np.issubdtype(block.dtype, np.integer):
            block = block.astype(np.float32) / np.iinfo(block.dtype).max
        else:
            block = block.astype(np.float32)
            if not np.isfinite(block).all() or block.min() < 0 or block.max() > 1:
                raise DataError(f"{self.path}: float pixels must be finite and lie in [0, 1] (rows {rows.start}:"
                                f"{rows.stop}, columns {cols.start}:{cols.stop} do not); scale the slide, or save it as "
                                "8- or 16-bit integers")
        return torch.from_numpy(np.ascontiguousarray(block.transpose(2, 0, 1)))

    def close(self) -> None:
        self._tif.close()

    def __enter__(self) -> "LazyImage":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def slide_output_names(image_id: str) -> dict[str, str]:
    """The file name of each output of one slide: an image's (``outputs.output_names``) without the overlay, and the
    label map an OME-TIFF pyramid."""
    names = output_names(image_id)
    return {"labels": f"{image_id}_labels.ome.tif", "geojson": names["geojson"], "csv": names["csv"]}


def _tiles(labels, step: int, shape: tuple[int, int], tile: int, scale: float):
    """The tiles of a pyramid level ``shape`` (H, W), ``step`` level-0 pixels a side each, row by row, each padded
    to ``tile`` x ``tile`` as TIFF tiles are; every pixel is the label (nearest, never a blend of two) under its
    level-0 pixel, ``scale`` level-0 pixels a side per pixel of ``labels``."""
    for top in range(0, shape[0], tile):
        for left in range(0, shape[1], tile):
            block = labels_at(labels, np.arange(top, min(top + tile, shape[0])) * step,
                              np.arange(left, min(left + tile, shape[1])) * step, scale)
            out = np.zeros((tile, tile), np.uint32)
            out[: block.shape[0], : block.shape[1]] = block
            yield out


def write_label_pyramid(labels, path, pixel_size: float | None = None, tile: int = PYRAMID_TILE,
                        shape: tuple[int, int] | None = None, scale: float = 1.0, image_id: str | None = None) -> None:
    """Write a label map (an array or a zarr array on disk) as a tiled OME-TIFF pyramid, uint32, zlib: level 0 of
    ``shape`` (H, W) (the map's own by default) and halvings down to under two tiles a side, as sub-resolutions of level
    0 (what QuPath and napari read). ``scale``: level-0 pixels a side per pixel of ``labels`` (a slide read at another
    scale); ``pixel_size``: level 0's (um). Tile by tile, so memory follows the tile, not the map. ``image_id`` makes
    the OME UUID (random otherwise), so that the same slide annotated again gives the same file, byte for byte."""
    h, w = labels.shape if shape is None else shape
    levels = 1
    while max(h, w) // 2 ** levels >= 2 * tile:
        levels += 1
    options = {"tile": (tile, tile), "compression": "zlib", "dtype": np.uint32, "photometric": "minisblack"}
    resolution = {} if pixel_size is None else {"resolutionunit": "CENTIMETER"}
    metadata = {"axes": "YX"}
    if image_id is not None:
        metadata["UUID"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"diffkillr:{image_id}:labels"))
    if pixel_size is not None:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size, PhysicalSizeXUnit="µm",
                        PhysicalSizeYUnit="µm")
    with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tif:
        for level in range(levels):
            step = 2 ** level
            level_shape = (-(-h // step), -(-w // step))
            if pixel_size is not None:
                resolution["resolution"] = (1e4 / (pixel_size * step), 1e4 / (pixel_size * step))
            first = {"subifds": levels - 1, "metadata": metadata} if level == 0 else {"subfiletype": 1}
            tif.write(_tiles(labels, step, level_shape, tile, scale), shape=level_shape, **first, **resolution,
                      **options)


def _geometry(geometry: dict, scale: float) -> dict:
    """A cell's GeoJSON geometry (``outputs.cell_geometries``, in the pixels read) in level-0 pixels."""
    return geometry if scale == 1 else {**geometry, "coordinates": _scaled(geometry["coordinates"], scale)}


def _scaled(coordinates, scale: float):
    """GeoJSON coordinates (nested lists of [x, y]) times ``scale``: QuPath's pixel-edge grid scales as it is."""
    if isinstance(coordinates[0], (int, float)):
        return [coordinates[0] * scale, coordinates[1] * scale]
    return [_scaled(part, scale) for part in coordinates]


def _fingerprint(path) -> list:
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def _identity(path, inferer, grid: list, pixel_size: float | None, image: LazyImage) -> dict:
    """What a finished region's results depend on: the image file, the grid, the pixel size, the level and zoom read,
    the bank and the weights. A progress record with another identity is not continued."""
    models = [inferer.bank, inferer.invariant_path, inferer.student_path]
    return {"image": _fingerprint(path), "grid": [len(grid), [list(box) for box in grid[0]]], "pixel_size": pixel_size,
            "reading": [image.level, image.zoom],
            "models": [_fingerprint(m) for m in models if isinstance(m, (str, Path)) and Path(m).is_file()]}


def _write_json(path: Path, value: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value))
    os.replace(tmp, path)


def _appended(handle, text: str) -> None:
    handle.write(text.encode("utf-8"))
    handle.flush()
    os.fsync(handle.fileno())


def annotate_slide(inferer, network: torch.nn.Module, path, output_dir, pixel_size: float | None = None) -> dict:
    """Annotate one slide into ``output_dir`` (``slide_output_names``); returns a summary: ``cells``, ``regions``,
    ``resumed_from`` (regions found finished), ``seconds`` in all, of which ``annotation_seconds`` annotating the
    regions and ``writing_seconds`` writing their cells (both summed over the runs that made the slide), ``outputs``.

    After each region its cells are appended to the GeoJSON and the CSV (flushed to disk) and only then recorded as
    finished, so a killed run loses at most the region it was in: rerunning the same command continues from the
    regions recorded, as long as the image, the grid, the pixel size and the models are the same (else it starts
    over).

    Under torchrun every rank calls it for the same slide: all of them annotate its regions (``_regions_together``),
    rank 0 writes the outputs and returns the summary, the others return None."""
    import zarr

    start = time.perf_counter()
    inferer.setup()
    path, output_dir = Path(path), Path(output_dir)
    image_id = image_id_of(path)
    size = image_pixel_size(path, pixel_size)
    rank, world = _ranks()
    if rank > 0:  # annotates its share of the regions for rank 0, which writes everything
        with LazyImage(path, size, inferer.bank_pixel_size) as image:
            for _ in _regions_together(inferer, image, network, None, 0, 0):
                pass
        return None
    work = output_dir / f".{image_id}.slide-progress"
    finals = [output_dir / name for name in slide_output_names(image_id).values()]
    with LazyImage(path, size, inferer.bank_pixel_size) as image:
        inferer.check_image(image.shape)
        h, w = image.shape[1:]
        if (image.level, image.zoom) != (0, 1.0):
            print(f"{image_id}: read at the bank's pixel size, {inferer.bank_pixel_size:g} um (pyramid level "
                  f"{image.level}" + ("" if image.zoom == 1 else f", resampled {image.zoom:.3g} x") + f"; the slide's "
                  f"is {size:g} um); outputs in level-0 pixels")
        grid = region_grid((h, w))
        identity = _identity(path, inferer, grid, size, image)
        record = work / "progress.json"
        progress = json.loads(record.read_text()) if record.is_file() else None
        resumed = progress is not None and progress.get("identity") == identity
        if not resumed:
            if work.exists():
                print(f"{image_id}: starting over (the image, the pixel size or the models changed since the unfinished "
                      "run)")
                shutil.rmtree(work)
            work.mkdir(parents=True)
            progress = {"identity": identity, "regions": 0, "cells": 0, "features": 0, "geojson_bytes": 0,
                        "csv_bytes": 0, "seconds": 0.0, "writing_seconds": 0.0}
        resumed_from = progress["regions"]
        labels = zarr.open_array(str(work / "labels.zarr"), mode="a" if resumed else "w", shape=(h, w),
                                 chunks=(CHUNK, CHUNK), dtype="int32", fill_value=0)
        if resumed and progress["regions"] < len(grid):
            # the region being written when the run was killed may have put labels in the map before it was recorded
            q0, q1, p0, p1 = grid[progress["regions"]][1]
            window = np.asarray(labels[q0:q1, p0:p1])
            window[window > progress["cells"]] = 0
            labels[q0:q1, p0:p1] = window
            print(f"{image_id}: continuing from {progress['regions']} of {len(grid)} finished regions")
        with open(work / "cells.geojson", "r+b" if resumed else "wb") as geojson, \
                open(work / "cells.csv", "r+b" if resumed else "wb") as table:
            for handle, key in ((geojson, "geojson_bytes"), (table, "csv_bytes")):
                handle.truncate(progress[key])
                handle.seek(progress[key])
            if not resumed:
                _appended(geojson, '{"type": "FeatureCollection", "features": [\n')
                _appended(table, _csv_text([csv_header(size)]))
            began = time.perf_counter()
            if world > 1:
                regions = _regions_together(inferer, image, network, labels, progress["regions"], progress["cells"])
            else:
                regions = inferer.regions_annotated(image, network, labels, done=progress["regions"],
                                                    n_cells=progress["cells"])
            for region in regions:
                annotated = time.perf_counter()
                geometries = cell_geometries(region.labels, origin=(region.window[0], region.window[2]))
                cells = cells_at(region.cells, image.to_level_zero)
                rows = [dict(zip(CELL_COLUMNS, row)) for row in zip(*(cells[k] for k in CELL_COLUMNS))]
                features = [json.dumps(geojson_feature(cell, _geometry(geometries[cell["id"]], image.to_level_zero),
                                                       image_id, size))
                            for cell in rows if cell["id"] in geometries]
                if features:
                    _appended(geojson, (",\n" if progress["features"] else "") + ",\n".join(features))
                _appended(table, _csv_text(csv_rows(cells, size)))
                progress.update(regions=region.index + 1, cells=progress["cells"] + len(rows),
                                features=progress["features"] + len(features), geojson_bytes=geojson.tell(),
                                csv_bytes=table.tell(), seconds=progress["seconds"] + annotated - began,
                                writing_seconds=progress["writing_seconds"] + time.perf_counter() - annotated)
                _write_json(record, progress)
                began = time.perf_counter()
            _appended(geojson, "\n]}\n")
        with written_atomically(*finals) as (pyramid, geojson_out, csv_out):
            write_label_pyramid(labels, pyramid, size, tile=PYRAMID_TILE, shape=image.level_zero_shape,
                                scale=image.to_level_zero, image_id=image_id)
            os.replace(work / "cells.geojson", geojson_out)
            os.replace(work / "cells.csv", csv_out)
    shutil.rmtree(work, ignore_errors=True)
    with open(finals[2], newline="") as handle:
        median = unlike_the_bank([float(row["match_distance"]) for row in csv.DictReader(handle)])
    if median is not None:
        print(f"{image_id}: warning: its cells look like none of the bank's (median match distance {median:.2f}, "
              f"above {UNLIKE_THE_BANK}); is it tissue at the bank's stain and magnification? Check these cells")
    return {"cells": progress["cells"], "regions": len(grid), "resumed_from": resumed_from,
            "seconds": time.perf_counter() - start, "annotation_seconds": progress["seconds"],
            "writing_seconds": progress["writing_seconds"],
            "outputs": [str(f) for f in finals]}


def _ranks() -> tuple[int, int]:
    """(rank, world size) of the process group this process is in (torchrun); (0, 1) outside one."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _regions_together(inferer, image, network: torch.nn.Module, labels, done: int, n_cells: int):
    """``ArchetypeInferer.regions_annotated`` by every rank of the process group at once, for rank 0: in rounds of
    one region per rank, each rank annotates its region on its own (``region_found``, the networks' work) and rank 0
    gathers the round and claims its regions in the grid's order (``claimed``), so its label map and cells are those
    of one process. Rank 0 gets each region as it is claimed; the other ranks get nothing (their ``labels`` unused).
    Every rank continues from rank 0's ``done``."""
    import torch.distributed as dist

    rank, world = _ranks()
    shared = [done]
    dist.broadcast_object_list(shared, src=0)
    grid = region_grid(image.shape[1:])
    bar = tqdm(total=len(grid), initial=shared[0], desc="regions", unit="region", leave=False,
               disable=rank > 0 or len(grid) < 4)
    for first in range(shared[0], len(grid), world):
        index = first + rank
        found = inferer.region_found(image, network, index) if index < len(grid) else None
        gathered = [None] * world if rank == 0 else None
        dist.gather_object(found, gathered, dst=0)
        found = None
        give_back_freed_memory()
        for found in gathered or []:
            if found is not None:
                region = inferer.claimed(found, labels, n_cells)
                yield region
                n_cells += len(region.cells["id"])
                bar.update(1)
                bar.set_postfix(cells=n_cells, refresh=False)
    bar.close()


def _csv_text(rows) -> str:
    text = io.StringIO()
    csv.writer(text).writerows(rows)
    return text.getvalue()


class SlideAnnotator:
    """The inference config's ``slides`` step: annotate each slide of ``images`` (``slide_paths``) with the config's
    inferer and DiffeoMappingNet, writing into ``output_dir``; a line per slide."""

    def __init__(self, images, inferer, network: torch.nn.Module, output_dir, pixel_size: float | None = None):
        self.images, self.inferer, self.network = list(images), inferer, network
        self.output_dir, self.pixel_size = Path(output_dir), pixel_size

    def __call__(self) -> list[dict]:
        done = []
        for path in self.images:
            summary = annotate_slide(self.inferer, self.network, path, self.output_dir, self.pixel_size)
            if summary is None:  # a rank after the first, which annotated regions for rank 0
                continue
            print(f"{image_id_of(path)}: {summary['cells']} cells in {summary['seconds']:.1f} s (a slide, "
                  f"{summary['regions']} regions)")
            done.append(summary)
        if done:
            print(f"outputs in {self.output_dir.resolve()}")
        return done
