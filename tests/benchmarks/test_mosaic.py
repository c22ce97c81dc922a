"""The mosaic benchmark's slides: the tiled TIFF it writes tile by tile is the mosaic it builds in memory."""

import numpy as np
import tifffile
import torch

from bundle.benchmarks.mosaic import away_from_joins, mosaic_of, write_mosaic_tiff


def test_the_slide_written_tile_by_tile_is_the_mosaic_of_its_tiles(tmp_path):
    generator = torch.Generator().manual_seed(0)
    # tiles whose size is no multiple of the TIFF's 512 px tiles, three of them cycled over a 3 x 3 mosaic
    images = [torch.randint(0, 256, (3, 300, 350), generator=generator).float() / 255 for _ in range(3)]
    shape = write_mosaic_tiff(images, 3, tmp_path / "mosaic.tif")
    expected = (mosaic_of(images, 3).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    assert shape == (900, 1050)
    assert np.array_equal(tifffile.imread(tmp_path / "mosaic.tif"), expected)


def test_cells_near_a_tiles_border_are_left_out_of_the_count_away_from_the_joins():
    centroids = np.array([[10, 500], [500, 500], [1500, 1500], [1990, 1500], [1500, 1010]])
    assert away_from_joins(centroids, (1000, 1000)) == 2
