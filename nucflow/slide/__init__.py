"""Reading slides: OpenSlide and plain images, tissue detection, tile grids, demo slides."""

from nucflow.slide.reader import Slide, check_mpp, metadata_mpp, open_slide, safe_slide_name, slide_stem
from nucflow.slide.tiles import Tile, TileGrid, tile_grid
from nucflow.slide.tissue import tissue_mask

__all__ = [
    "Slide", "Tile", "TileGrid", "check_mpp", "metadata_mpp", "open_slide", "safe_slide_name", "slide_stem",
    "tile_grid", "tissue_mask",
]
